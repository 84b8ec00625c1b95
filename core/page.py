"""A self-contained HTML page of plotly figures (plotly.js inlined, so it opens offline).

Imports nothing of the pipeline: the trainer's evaluation report uses it without Ray or polars.
"""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs


def figures_page(title: str, subtitle: str, figs: list[tuple[str, go.Figure]], table_html: str = "") -> str:
    """A self-contained page of plotly figures (plotly.js inlined), e.g. the trainer's eval report."""
    charts = "\n".join(f'<div class="chart" id="fig-{name}"></div>' for name, _ in figs)
    data = json.dumps({name: json.loads(fig.to_json()) for name, fig in figs}).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1.5em; }} .chart {{ min-height: 420px; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 1em; }}
table {{ border-collapse: collapse; font-size: .85em; }}
th, td {{ padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }}</style>
<script>{get_plotlyjs()}</script></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p><div class="charts">{charts}</div>{table_html}
<script type="application/json" id="figures">{data}</script>
<script>for (const [name, fig] of Object.entries(JSON.parse(document.getElementById('figures').textContent)))
  Plotly.newPlot('fig-' + name, fig.data, fig.layout, {{responsive: true}});</script>
</body></html>
"""
