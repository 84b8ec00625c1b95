"""Final shards: Parquet files of kept rows, one folder per partition, deterministic, each file atomic.

Layout that does not depend on the order in which Ray finished blocks (a resumed run writes the same
bytes as an uninterrupted one) and never needs a whole partition in memory: ids are uniform
BLAKE2b hashes, so a partition of N rows is cut into ranges of the id space expected to hold about
0.8 x `rows_per_shard` rows each. One pass spills every row to its range's file; then each range is
sorted by (id, origin) and written as one shard (or more, should a range overflow).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import DOC_ID, NEGATIVE_IDS, NEGATIVES, POSITIVE_ID, TEXT, passage_id
from core.record import COLUMNS, DROP, SCHEMA
from pipeline.ops.files import write_atomic

ID_PREFIX = 8  # hex digits of the id that place a row in its range (2^32 ranges at most)
# Kept rows whose passages one range of the passage table holds: the table is grouped one range of
# the doc_id space at a time, so a 33M-row run never needs all its passage references in memory.
PASSAGE_RANGE_ROWS = 250_000
# What a kept row says about passages: it names its positive (role 0, with the text) and its
# negatives (role 2; the text when still inline, else null: it is in the passage store); its query
# (role 1, with the text) only tells a passage's language when the same text is named elsewhere.
POSITIVE, QUERY, NEGATIVE = 0, 1, 2
REFS_SCHEMA = pa.schema([(DOC_ID, pa.string()), (TEXT, pa.string()), ("role", pa.int8()), ("language", pa.string()),
                         ("source", pa.string()), ("id", pa.string()), ("origin", pa.string())])


def _folder_name(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value)) if value is not None else "null"


def id_range(ids: pl.Expr, ranges: int | pl.Expr) -> pl.Expr:
    """Which of `ranges` equal ranges of the hash space an id (hex, uniform) falls in."""
    return ids.str.slice(0, ID_PREFIX).str.to_integer(base=16).cast(pl.Int64) * ranges // 16**ID_PREFIX


def write_shards(files: list[str], out: Path, settings: Any, tag: str, refs: Path, spill: Path | None = None,
                 passage_ranges: int | None = None) -> list[dict[str, Any]]:
    """Write kept rows of `files` under `out` as `part-NNNNN-<tag>.parquet`; return one entry per
    shard file (path, rows, partition). `tag` names the content (the run's fingerprint): `datasets`
    caches a local dataset by its file patterns, so other content must mean other names. `spill`:
    a scratch folder (default `out/_spill`), removed at the end. Rows leave with `positive_id` and
    `negative_ids` (inline negatives get their ids here); every passage they name is listed in the
    folder `refs`, one file per range of doc ids (`passage_ranges`, default one per
    `PASSAGE_RANGE_ROWS` kept rows), for the passage table (`pipeline/engine/corpus.py`)."""
    keys = settings.partition_by
    kept = pl.scan_parquet(files).filter(pl.col(DROP).is_null()).select(COLUMNS)
    counts = kept.group_by(keys).agg(pl.len().alias("_rows")).sort(keys, nulls_last=True).collect()
    ranges = (pl.col("_rows") / (0.8 * settings.rows_per_shard)).ceil().clip(lower_bound=1).cast(pl.Int64)
    plan = counts.with_columns(ranges.alias("_ranges"))
    spill = spill or out / "_spill"
    ref_ranges = passage_ranges or max(1, -(-int(plan["_rows"].sum()) // PASSAGE_RANGE_ROWS))
    _spill(files, keys, plan, spill, refs, ref_ranges)
    compression = None if settings.compression == "none" else settings.compression
    written: list[dict[str, Any]] = []
    for p, row in enumerate(plan.iter_rows(named=True)):
        values = [row[k] for k in keys]
        folder = out.joinpath(*(_folder_name(v) for v in values))
        folder.mkdir(parents=True, exist_ok=True)
        shard = 0
        for r in range(row["_ranges"]):
            path = spill / f"{p}-{r}.parquet"
            if not path.exists():
                continue
            part = pl.read_parquet(path).sort("id", "origin").to_arrow().cast(SCHEMA)
            for start in range(0, part.num_rows, settings.rows_per_shard):
                chunk = part.slice(start, settings.rows_per_shard)
                target = folder / f"part-{shard:05d}-{tag}.parquet"
                write_atomic(target, lambda tmp, chunk=chunk: pq.write_table(chunk, tmp, compression=compression,
                                                                 compression_level=settings.compression_level))
                written.append({"path": str(target.relative_to(out)), "rows": chunk.num_rows, **dict(zip(keys, values))})
                shard += 1
    shutil.rmtree(spill)
    return written


def _spill(files: list[str], keys: list[str], plan: pl.DataFrame, spill: Path, refs: Path, ranges: int) -> None:
    """One pass over the checkpoint, a batch at a time: each kept row to `<partition>-<range>.parquet`,
    with its passage ids; the passages it names to `refs/<range>-<ranges>.parquet` by doc id."""
    for folder in (spill, refs):
        shutil.rmtree(folder, ignore_errors=True)  # a crashed attempt's
        folder.mkdir(parents=True)
    index = plan.with_row_index("_partition").select(*keys, pl.col("_partition").cast(pl.Int64), "_ranges")
    writers: dict[tuple[int, int], pq.ParquetWriter] = {}
    ref_writers: dict[int, pq.ParquetWriter] = {}
    try:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536, columns=[*COLUMNS, NEGATIVES, DROP]):
                df, passages = with_passage_ids(pl.from_arrow(batch).filter(pl.col(DROP).is_null()))
                named = pl.from_arrow(passages).with_columns(id_range(pl.col(DOC_ID), ranges).alias("_range"))
                for (r,), group in named.partition_by("_range", as_dict=True).items():
                    if r not in ref_writers:
                        ref_writers[r] = pq.ParquetWriter(refs / f"{r:05d}-{ranges:05d}.parquet", REFS_SCHEMA, compression="zstd", compression_level=1)
                    ref_writers[r].write_table(group.drop("_range").to_arrow().cast(REFS_SCHEMA))
                df = df.select(COLUMNS).join(index, on=keys, how="left", nulls_equal=True).with_columns(
                    id_range(pl.col("id"), pl.col("_ranges")).alias("_range"))
                for (p, r), group in df.partition_by("_partition", "_range", as_dict=True).items():
                    table = group.select(COLUMNS).to_arrow().cast(SCHEMA)
                    if (p, r) not in writers:
                        writers[(p, r)] = pq.ParquetWriter(spill / f"{p}-{r}.parquet", SCHEMA, compression="zstd", compression_level=1)
                    writers[(p, r)].write_table(table)
    finally:
        for w in [*ref_writers.values(), *writers.values()]:
            w.close()


def with_passage_ids(df: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
    """Rows with `positive_id` and `negative_ids` (from inline negatives where a row still has them),
    and the passages they name (REFS_SCHEMA)."""
    positives = [passage_id(t) if t is not None else None for t in df["positive"].to_list()]
    inline, stored = df[NEGATIVES].to_list(), df[NEGATIVE_IDS].to_list()
    negatives = [[passage_id(t) for t in own] if own is not None else ids for own, ids in zip(inline, stored)]
    df = df.with_columns(pl.Series(POSITIVE_ID, positives, pl.String), pl.Series(NEGATIVE_IDS, negatives, pl.List(pl.String)))
    refs: dict[str, list] = {name: [] for name in REFS_SCHEMA.names}
    rows = zip(positives, df["positive"].to_list(), df["positive_lang"].to_list(), df["query"].to_list(), df["query_lang"].to_list(),
               negatives, inline, df["negatives_lang"].to_list(), df["source"].to_list(), df["id"].to_list(), df["origin"].to_list())
    for pos_id, pos, pos_lang, query, query_lang, neg_ids, neg_texts, neg_lang, source, rid, origin in rows:
        named = [(pos_id, pos, POSITIVE, pos_lang)] if pos_id else []
        named += [(d, neg_texts[k] if neg_texts is not None else None, NEGATIVE, neg_lang) for k, d in enumerate(neg_ids or [])]
        if neg_ids and query_lang:  # e.g. build_pairs' negatives are other rows' queries
            named.append((passage_id(query), query, QUERY, query_lang))
        for doc, text, role, lang in named:
            for column, value in zip(REFS_SCHEMA.names, (doc, text, role, lang, source, rid, origin)):
                refs[column].append(value)
    return df, pa.table(refs, schema=REFS_SCHEMA)
