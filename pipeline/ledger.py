"""Row accounting: every step's rows in, out and dropped (by reason), per source and language.

Rows a step kept but flagged (e.g. `language_mismatch`, `cross_lingual`) are counted as kind
`flagged`, by reason (a flag may count several items: the mining stage counts removed candidates);
flags are information and take no part in the balance.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.record import DROP, FLAGS

LEDGER_SCHEMA = {"step": pl.String, "source": pl.String, "language": pl.String, "kind": pl.String, "reason": pl.String, "rows": pl.Int64}


class LedgerError(Exception):
    """Rows were lost or duplicated between steps: the run must not continue."""


def count_outcomes(step: str, files: list[str]) -> pl.DataFrame:
    """`out` and `dropped` rows of a step's checkpoint, per source, language (of the query) and reason."""
    if not files:
        return pl.DataFrame(schema=LEDGER_SCHEMA)
    counts = (
        pl.scan_parquet(files)
        .group_by("source", pl.col("query_lang").fill_null("und").alias("language"), pl.col(DROP).alias("reason"))
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .collect()
    )
    flagged = (
        pl.scan_parquet(files)
        .select("source", pl.col(FLAGS))
        .explode(FLAGS)
        .drop_nulls(FLAGS)
        .unnest(FLAGS)
        .group_by("source", pl.col("language").fill_null("und"), "reason")
        .agg(pl.col("count").fill_null(1).cast(pl.Int64).sum().alias("rows"))
        .with_columns(pl.lit("flagged").alias("kind"))
        .collect()
    )
    counts = counts.with_columns(pl.when(pl.col("reason").is_null()).then(pl.lit("out")).otherwise(pl.lit("dropped")).alias("kind"))
    return pl.concat([counts, flagged], how="diagonal").with_columns(pl.lit(step).alias("step")).select(list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA)


def entries(step: str, outcomes: pl.DataFrame, rows_in: pl.DataFrame | None) -> pl.DataFrame:
    """The step's ledger rows. `rows_in` is the previous step's `out` (None: the step reads sources,
    so what it read is what it wrote, kept or quarantined)."""
    if rows_in is None:
        rows_in = outcomes.group_by("source").agg(pl.col("rows").sum()).with_columns(pl.lit("und").alias("language"))
    else:
        rows_in = rows_in.filter(pl.col("kind") == "out").select("source", "language", "rows")
    ins = rows_in.with_columns(pl.lit(step).alias("step"), pl.lit("in").alias("kind"), pl.lit(None, pl.String).alias("reason"))
    return pl.concat([ins.select(list(LEDGER_SCHEMA)), outcomes]).cast(LEDGER_SCHEMA)


def check_balance(ledger: pl.DataFrame) -> None:
    """in = out + dropped for every step and source, or LedgerError naming where it breaks."""
    totals = ledger.group_by("step", "source").agg(
        pl.col("rows").filter(pl.col("kind") == "in").sum().alias("in"),
        pl.col("rows").filter(pl.col("kind") == "out").sum().alias("out"),
        pl.col("rows").filter(pl.col("kind") == "dropped").sum().alias("dropped"),
    )
    bad = totals.filter(pl.col("in") != pl.col("out") + pl.col("dropped"))
    if bad.height:
        lines = [f"step {r['step']}, source {r['source']}: in={r['in']} but out={r['out']} + dropped={r['dropped']}" for r in bad.iter_rows(named=True)]
        raise LedgerError("the ledger does not balance (rows lost or duplicated):\n" + "\n".join(lines))


def write(ledger: pl.DataFrame, run_dir: Path) -> None:
    ledger.sort("step", "source", "kind", "language", "reason", nulls_last=True).write_parquet(run_dir / "ledger.parquet")
