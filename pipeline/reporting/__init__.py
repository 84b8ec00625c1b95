"""What a run reports: per-language statistics, the dashboard, terminal tables, plotly pages."""
