"""The summary printed at the end of a run: rows and time per step, rows per language."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(result: Any, console: Console, top_languages: int = 15) -> None:
    steps = Table(title=f"run {result.run_dir}", title_justify="left")
    for col in ("step", "in", "out", "dropped", "flagged (kept)", "seconds"):
        steps.add_column(col, justify="left" if col in ("step", "dropped", "flagged (kept)") else "right", no_wrap=col in ("step", "seconds"))
    for st in result.steps:
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(st.dropped.items())) or "-"
        flags = ", ".join(f"{k} {v:,}" for k, v in sorted(st.flagged.items())) or "-"
        steps.add_row(st.name, f"{st.rows_in:,}", f"{st.rows_out:,}", drops, flags, f"{st.seconds:.1f}" + (" (done before)" if st.resumed else ""))
    console.print(steps)

    import polars as pl

    shards = pl.scan_parquet(str(result.run_dir / "shards" / "**" / "*.parquet"))
    langs = shards.group_by("query_lang").agg(pl.len().alias("rows")).sort("rows", descending=True).collect()
    table = Table(title=f"rows per query language (top {top_languages} of {langs.height})", title_justify="left")
    table.add_column("language")
    table.add_column("rows", justify="right")
    for lang, rows in langs.head(top_languages).iter_rows():
        table.add_row(str(lang), f"{rows:,}")
    console.print(table)
    for step, report in result.reports.items():
        shown = report.head(top_languages).select(report.columns[:8])
        table = Table(title=f"{step} (all rows and columns: {result.run_dir / 'reports' / (step + '.csv')})", title_justify="left")
        for col in shown.columns:
            table.add_column(col, justify="right" if shown[col].dtype.is_numeric() else "left")
        for row in shown.iter_rows():
            table.add_row(*(f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in row))
        console.print(table)
    total = sum(s["rows"] for s in result.shards)
    console.print(f"[bold]{total:,}[/] rows in {len(result.shards)} shard(s) under {result.run_dir / 'shards'} ({result.seconds:.1f} s)")
