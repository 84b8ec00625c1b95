"""`python -m pipeline export RUN_DIR OUT`: the shards in the flat layout ML-Embed's data uses,
`query, passage, negative_1 .. negative_N` (plus `instruction`, `task`, `source`, `language`), one
Parquet file per shard so memory stays at one shard. The instruction is kept apart from the query,
unless a template joins them (`--template "Instruct: {instruction}\\nQuery: {query}"`)."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def flat(shard: pl.DataFrame, negatives: int, template: str | None) -> pl.DataFrame:
    query = pl.col("query")
    if template:
        # `{instruction}` and `{query}` only: a fixed format, never evaluated.
        parts = template.replace("{query}", "\x00query\x00").replace("{instruction}", "\x00instruction\x00").split("\x00")
        pieces = [pl.col(p) if p in ("query", "instruction") else pl.lit(p) for p in parts if p]
        query = pl.when(pl.col("instruction").is_not_null()).then(pl.concat_str(pieces)).otherwise(pl.col("query"))
    columns = [query.alias("query"), pl.col("positive").alias("passage")]
    columns += [pl.col("negatives").list.get(k, null_on_oob=True).alias(f"negative_{k + 1}") for k in range(negatives)]
    columns += ["instruction", "task", "source", pl.col("query_lang").alias("language")]
    return shard.select(columns)


def export(run_dir: str | Path, out: str | Path, negatives: int | None = None, template: str | None = None) -> int:
    """Write the flat files; returns the rows written. `negatives` defaults to the longest list."""
    shards = sorted((Path(run_dir) / "shards").rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no shards under {Path(run_dir) / 'shards'}")
    if negatives is None:
        negatives = int(pl.scan_parquet(shards).select(pl.col("negatives").list.len().max()).collect().item() or 0)
    out = Path(out)
    rows = 0
    for path in shards:
        target = out / path.relative_to(Path(run_dir) / "shards")
        target.parent.mkdir(parents=True, exist_ok=True)
        table = flat(pl.read_parquet(path), negatives, template)
        table.write_parquet(target)
        rows += table.height
    return rows
