"""Row accounting: every step's rows in, out and dropped (by reason), per source and language.

Rows a step kept but flagged (e.g. `language_mismatch`, `cross_lingual`) are counted as kind
`flagged`, by reason (a flag may count several items: the mining stage counts removed candidates);
flags are information and take no part in the balance. A checkpoint written by a fused group of
stages is counted per stage: each row says which stage dropped it (`_drop_step`) and each flag which
stage raised it, so the ledger is the same as if every stage had its own checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from core.record import DROP, DROP_STEP, FLAGS, LANG_IN

LEDGER_SCHEMA = {
    "step": pl.String,
    "source": pl.String,
    "language": pl.String,
    "kind": pl.String,
    "reason": pl.String,
    "rows": pl.Int64,
}


class LedgerError(Exception):
    """Rows were lost or duplicated between steps: the run must not continue."""


def count_outcomes(steps: list[str], files: list[str], language_set_at: int | None = None) -> pl.DataFrame:
    """`out`, `dropped` and `flagged` rows of a checkpoint, per step of the group that wrote it
    (`steps`; one name for an unfused step), source, language (of the query) and reason.
    `language_set_at`: the index of the step that sets `query_lang` in a group; rows are counted
    under their language before the group (`_lang_in`) at earlier steps."""
    if not files:
        return pl.DataFrame(schema=LEDGER_SCHEMA)
    fused = DROP_STEP in pq.read_schema(files[0]).names
    rows = pl.scan_parquet(files)
    dropped_at = pl.col(DROP_STEP) if fused else pl.when(pl.col(DROP).is_not_null()).then(pl.lit(steps[-1]))
    index = {name: i for i, name in enumerate(steps)}
    drop_index = dropped_at.replace_strict(index, default=None, return_dtype=pl.Int32)
    language = pl.col("query_lang").fill_null("und")
    parts = []
    for i, step in enumerate(steps):
        lang_here = (
            language
            if not fused or (language_set_at is not None and i >= language_set_at)
            else pl.col(LANG_IN).fill_null("und")
        )
        kept = (
            rows.filter(drop_index.is_null() | (drop_index > i))
            .group_by("source", lang_here.alias("language"))
            .agg(pl.len().alias("rows"))
        )
        parts.append(
            kept.with_columns(
                pl.lit("out").alias("kind"), pl.lit(None, pl.String).alias("reason"), pl.lit(step).alias("step")
            )
        )
        gone = (
            rows.filter(drop_index == i)
            .group_by("source", language.alias("language"), pl.col(DROP).alias("reason"))
            .agg(pl.len().alias("rows"))
        )
        parts.append(gone.with_columns(pl.lit("dropped").alias("kind"), pl.lit(step).alias("step")))
    flagged = (
        rows.select("source", pl.col(FLAGS))
        .explode(FLAGS)
        .drop_nulls(FLAGS)
        .unnest(FLAGS)
        .with_columns(pl.col("step") if fused else pl.lit(steps[-1]).alias("step"))
        .group_by("step", "source", pl.col("language").fill_null("und"), "reason")
        .agg(pl.col("count").fill_null(1).cast(pl.Int64).sum().alias("rows"))
        .with_columns(pl.lit("flagged").alias("kind"))
    )
    frames = pl.collect_all([*parts, flagged])
    return pl.concat([f.select(list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA) for f in frames])


def entries(steps: list[str], outcomes: pl.DataFrame, rows_in: pl.DataFrame | None) -> pl.DataFrame:
    """The ledger rows of a checkpoint's steps: each step's `in` is the previous step's `out`.
    `rows_in` is the `out` of the step before the first (None: the step reads sources, so what it
    read is what it wrote, kept or quarantined)."""
    parts = []
    for step in steps:
        mine = outcomes.filter(pl.col("step") == step)
        if rows_in is None:
            rows_in = mine.group_by("source").agg(pl.col("rows").sum()).with_columns(pl.lit("und").alias("language"))
        ins = rows_in.filter(pl.col("kind") == "out") if "kind" in rows_in.columns else rows_in
        ins = ins.select("source", "language", "rows").with_columns(
            pl.lit(step).alias("step"), pl.lit("in").alias("kind"), pl.lit(None, pl.String).alias("reason")
        )
        parts += [ins.select(list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA), mine]
        rows_in = mine
    return pl.concat(parts).cast(LEDGER_SCHEMA)


def check_balance(ledger: pl.DataFrame) -> None:
    """in = out + dropped for every step and source, or LedgerError naming where it breaks."""
    totals = ledger.group_by("step", "source").agg(
        pl.col("rows").filter(pl.col("kind") == "in").sum().alias("in"),
        pl.col("rows").filter(pl.col("kind") == "out").sum().alias("out"),
        pl.col("rows").filter(pl.col("kind") == "dropped").sum().alias("dropped"),
    )
    bad = totals.filter(pl.col("in") != pl.col("out") + pl.col("dropped"))
    if bad.height:
        lines = [
            f"step {r['step']}, source {r['source']}: in={r['in']} but out={r['out']} + dropped={r['dropped']}"
            for r in bad.iter_rows(named=True)
        ]
        raise LedgerError("the ledger does not balance (rows lost or duplicated):\n" + "\n".join(lines))


def write(ledger: pl.DataFrame, run_dir: Path) -> None:
    ledger.sort("step", "source", "kind", "language", "reason", nulls_last=True).write_parquet(
        run_dir / "ledger.parquet"
    )
