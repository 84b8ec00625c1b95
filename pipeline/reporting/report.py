"""The summary printed at the end of a run: rows and time per step, rows per language."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(result: Any, console: Console, top_languages: int = 15) -> None:
    steps = Table(title=f"run {result.output or result.run_dir}", title_justify="left")
    for col in ("step", "in", "out", "dropped", "flagged (kept)", "seconds"):
        steps.add_column(
            col,
            justify="left" if col in ("step", "dropped", "flagged (kept)") else "right",
            no_wrap=col in ("step", "seconds"),
        )
    for st in result.steps:
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(st.dropped.items())) or "-"
        flags = ", ".join(f"{k} {v:,}" for k, v in sorted(st.flagged.items())) or "-"
        steps.add_row(
            st.name,
            f"{st.rows_in:,}",
            f"{st.rows_out:,}",
            drops,
            flags,
            ("fused ↓" if st.seconds is None else f"{st.seconds:.1f}") + (" (done before)" if st.resumed else ""),
        )
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
        table = Table(
            title=f"{step} (all rows and columns: {result.run_dir / 'reports' / (step + '.csv')})", title_justify="left"
        )
        for col in shown.columns:
            table.add_column(col, justify="right" if shown[col].dtype.is_numeric() else "left")
        for row in shown.iter_rows():
            table.add_row(
                *(f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in row)
            )
        console.print(table)
    total = sum(s["rows"] for s in result.shards)
    if result.dashboard:
        console.print(
            f"statistics under {result.dashboard.parent}; dashboard: {result.dashboard}  "
            f"(`python -m pipeline stats {result.run_dir}`)"
        )
    where = (
        f"{result.output}/shards"
        if result.output and result.output != str(result.run_dir)
        else result.run_dir / "shards"
    )
    console.print(f"[bold]{total:,}[/] rows in {len(result.shards)} shard(s) under {where} ({result.seconds:.1f} s)")


def _table(df: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in df.columns:
        table.add_column(col, justify="right" if df[col].dtype.is_numeric() else "left")
    for row in df.iter_rows():
        table.add_row(
            *(
                "-" if v is None else f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                for v in row
            )
        )
    return table


# The terminal shows the main figures; every column is in stats/languages.csv.
LANGUAGE_COLUMNS = ("language", "name", "records", "share", "tokens", "query_lang_conf_p50", "removed")


def print_stats(tables: dict[str, Any], console: Console, lang: str | None = None, top: int | None = None) -> bool:
    """The statistics of a run as rich tables: all languages, or one language in detail (False if
    the run has no such language)."""
    import polars as pl

    languages = tables["languages"]
    if lang is None:
        shown = languages.select(
            [c for c in LANGUAGE_COLUMNS + ("previous_share", "share_change") if c in languages.columns]
        )
        console.print(_table(shown.head(top) if top else shown, f"languages ({languages.height}; sorted by records)"))
        console.print(
            _table(
                tables["tasks"].select(
                    "task", "records", "languages", "characters", "tokens", "with_negatives", "negatives"
                ),
                "tasks",
            )
        )
        if "comparison" in tables:
            console.print(_table(tables["comparison"].head(top or 30), "against the reference"))
        return True
    row = languages.filter(pl.col("language") == lang)
    if row.height == 0:
        return False
    row = row.with_columns(pl.col(c).round(4) for c, t in row.schema.items() if t.is_float())
    console.print(
        _table(
            row.transpose(include_header=True, header_name="figure", column_names=["value"]).with_columns(
                pl.col("value").cast(pl.String)
            ),
            f"{row['name'][0]} ({lang})",
        )
    )
    console.print(
        _table(
            tables["sources"]
            .filter(pl.col("language") == lang)
            .select("source", "task", "records", "characters", "tokens", "negatives"),
            "per source",
        )
    )
    funnel = (
        tables["funnel"]
        .filter((pl.col("language") == lang) & (pl.col("kind") != "in"))
        .with_columns(pl.col("reason").fill_null(""))
    )
    console.print(
        _table(
            funnel.pivot("kind", index=["step", "reason"], values="rows", aggregate_function="sum").sort("step"),
            "funnel (rows per step)",
        )
    )
    return True


def print_export(report: Any, console: Console) -> None:
    """An export's datasets: rows in and written, dropped by reason, negatives filled (ExportReport)."""
    table = Table(title=f"export: {report.layout} -> {report.out}", title_justify="left")
    for column in ("dataset", "task", "rows in", "written", "dropped", "negatives", "filled rows"):
        table.add_column(
            column, justify="left" if column in ("dataset", "task", "dropped") else "right", no_wrap=column == "dataset"
        )
    for d in report.datasets:
        dropped = ", ".join(f"{reason} {rows:,}" for reason, rows in sorted(d.dropped.items()))
        table.add_row(
            d.name, d.task, f"{d.rows_in:,}", f"{d.rows_written:,}", dropped, str(d.negatives), f"{d.filled_rows:,}"
        )
    console.print(table)
    rate = f", {report.rows_in / report.seconds:,.0f} rows/s" if report.seconds else ""
    console.print(
        f"{report.rows_written:,} of {report.rows_in:,} rows written in {report.seconds:.1f} s{rate}; "
        f"report: {report.out}/export_report.json"
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def print_filters(tables: dict[str, Any], console: Console) -> bool:
    """The `filter` stage's drops, language x filter: % of the language's rows (and the count)."""
    import polars as pl

    table = tables.get("filters")
    if table is None or not table.height:
        console.print("no filter stage in this run")
        return False
    if table["filter"].null_count() == table.height:
        console.print(f"the filter stage dropped, skipped and removed nothing ({table['rows_in'].sum():,} rows)")
        return True
    cells = table.with_columns(pl.format("{}% ({})", (100 * pl.col("rate")).round(2), pl.col("dropped")).alias("cell"))
    wide = cells.pivot("filter", index=["language", "rows_in"], values="cell").sort("rows_in", descending=True)
    console.print(_table(wide, "rows each filter dropped, per language (% of the rows that reached the filter stage)"))
    others = table.filter((pl.col("skipped") > 0) | (pl.col("negatives_removed") > 0))
    if others.height:
        console.print(
            _table(
                others.select("language", "filter", "skipped", "negatives_removed").sort("skipped", descending=True),
                "texts a filter could not judge (kept; no word tokenizer here) and negatives it removed, "
                "by the text's language",
            )
        )
    return True
