"""Final shards: Parquet files of kept rows, one folder per partition, deterministic, each file atomic.

Layout that does not depend on the order in which tasks finished (a resumed run writes the same
bytes as an uninterrupted one) and never needs a whole partition in memory: ids are uniform
BLAKE2b hashes, so a partition of N rows is cut into ranges of the id space expected to hold about
0.8 x `rows_per_shard` rows each. One pass spills every row to its range's file; then each range is
sorted by (id, origin), written as one shard (or more, should a range overflow) and its spill file
removed. The passages the shards name are listed (by doc-id range, for the passage table) from the
shards once they are written, so the disk never holds the spill and that list at once.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import DOC_ID, NEGATIVE_IDS, NEGATIVES, POSITIVE_ID, TEXT, passage_id
from core.record import COLUMNS, DROP, SCHEMA
from pipeline.ops.files import write_atomic
from pipeline.ops.memory import release_memory

ID_PREFIX = 8  # hex digits of the id that place a row in its range (2^32 ranges at most)
# Kept rows whose passages one range of the passage table holds: the table is grouped one range of
# the doc_id space at a time, so a 33M-row run never needs all its passage references in memory.
PASSAGE_RANGE_ROWS = 250_000
# What a kept row says about passages: it names its positive (role 0, with the text) and its
# negatives (role 2; the text when still inline, else null: it is in the passage store); its query
# (role 1, with the text) only tells a passage's language when the same text is named elsewhere.
POSITIVE, QUERY, NEGATIVE = 0, 1, 2
REFS_SCHEMA = pa.schema(
    [
        (DOC_ID, pa.string()),
        (TEXT, pa.string()),
        ("role", pa.int8()),
        ("language", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
        ("origin", pa.string()),
    ]
)


# The spill and the passage references are read back whole: written without statistics, which a
# writer keeps in memory per row group and column (min and max of every text) until it closes.
SCRATCH_PARQUET: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "write_statistics": False}
# Input batches after which the spill's writers (one per range) are closed and new files begun: an
# open writer's memory grows with every row group it writes (measured: 2 MB a batch over 115 writers
# at 10M rows), so with writers kept open for the whole pass memory would grow with the input.
SPILL_BATCHES_PER_FILE = 32


def _folder_name(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value)) if value is not None else "null"


def id_range(ids: pl.Expr, ranges: int | pl.Expr) -> pl.Expr:
    """Which of `ranges` equal ranges of the hash space an id (hex, uniform) falls in."""
    return ids.str.slice(0, ID_PREFIX).str.to_integer(base=16).cast(pl.Int64) * ranges // 16**ID_PREFIX


def write_shards(
    files: list[str],
    out: Path,
    settings: Any,
    tag: str,
    refs: Path,
    spill: Path | None = None,
    passage_ranges: int | None = None,
) -> list[dict[str, Any]]:
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
    references = _References(refs, passage_ranges or max(1, -(-int(plan["_rows"].sum()) // PASSAGE_RANGE_ROWS)))
    compression = None if settings.compression == "none" else settings.compression
    written: list[dict[str, Any]] = []
    try:
        _spill(files, keys, plan, spill, references)
        release_memory()
        for p, row in enumerate(plan.iter_rows(named=True)):
            values = [row[k] for k in keys]
            folder = out.joinpath(*(_folder_name(v) for v in values))
            folder.mkdir(parents=True, exist_ok=True)
            shard = 0
            for r in range(row["_ranges"]):
                paths = sorted(spill.glob(f"{p}-{r}-*.parquet"))
                if not paths:
                    continue
                part = pl.read_parquet(paths).sort("id", "origin").to_arrow().cast(SCHEMA)
                for start in range(0, part.num_rows, settings.rows_per_shard):
                    chunk = part.slice(start, settings.rows_per_shard)
                    target = folder / f"part-{shard:05d}-{tag}.parquet"
                    write_atomic(
                        target,
                        lambda tmp, chunk=chunk: pq.write_table(
                            chunk, tmp, compression=compression, compression_level=settings.compression_level
                        ),
                    )
                    written.append(
                        {"path": str(target.relative_to(out)), "rows": chunk.num_rows, **dict(zip(keys, values))}
                    )
                    shard += 1
                for path in paths:
                    path.unlink()  # written as shards: the spill shrinks as they grow
                del part, chunk
                release_memory()
        shutil.rmtree(spill)
        for batch in _batches([str(out / entry["path"]) for entry in written], list(_NAMING)):
            references.add(passage_refs(pl.from_arrow(batch)))
    finally:
        references.close()
    return written


class _References:
    """Passage references by doc-id range, one file per range (`<range>-<ranges>.parquet`)."""

    def __init__(self, folder: Path, ranges: int):
        shutil.rmtree(folder, ignore_errors=True)  # a crashed attempt's
        folder.mkdir(parents=True)
        self.folder, self.ranges = folder, ranges
        self.writers: dict[int, pq.ParquetWriter] = {}

    def add(self, refs: pa.Table) -> None:
        named = pl.from_arrow(refs).with_columns(id_range(pl.col(DOC_ID), self.ranges).alias("_range"))
        for (r,), group in named.partition_by("_range", as_dict=True).items():
            if r not in self.writers:
                path = self.folder / f"{r:05d}-{self.ranges:05d}.parquet"
                self.writers[r] = pq.ParquetWriter(path, REFS_SCHEMA, **SCRATCH_PARQUET)
            self.writers[r].write_table(group.drop("_range").to_arrow().cast(REFS_SCHEMA))

    def close(self) -> None:
        _close(self.writers)


def _spill(files: list[str], keys: list[str], plan: pl.DataFrame, spill: Path, references: _References) -> None:
    """One pass over the checkpoint, a batch at a time: each kept row to
    `<partition>-<range>-<n>.parquet` (a new `n` every `SPILL_BATCHES_PER_FILE` batches), with its
    passage ids; the texts of negatives still inline (which the shards hold by id) to the references."""
    shutil.rmtree(spill, ignore_errors=True)  # a crashed attempt's
    spill.mkdir(parents=True)
    index = plan.with_row_index("_partition").select(*keys, pl.col("_partition").cast(pl.Int64), "_ranges")
    writers: dict[tuple[int, int], pq.ParquetWriter] = {}
    batches = _batches(files, [*COLUMNS, NEGATIVES, DROP])
    try:
        for n, batch in enumerate(batches):
            if n % SPILL_BATCHES_PER_FILE == 0:
                _close(writers)
                release_memory()
            df, inline = with_passage_ids(pl.from_arrow(batch).filter(pl.col(DROP).is_null()))
            if inline.num_rows:
                references.add(inline)
            df = (
                df.select(COLUMNS)
                .join(index, on=keys, how="left", nulls_equal=True)
                .with_columns(id_range(pl.col("id"), pl.col("_ranges")).alias("_range"))
            )
            for (p, r), group in df.partition_by("_partition", "_range", as_dict=True).items():
                table = group.select(COLUMNS).to_arrow().cast(SCHEMA)
                if (p, r) not in writers:
                    path = spill / f"{p}-{r}-{n // SPILL_BATCHES_PER_FILE:05d}.parquet"
                    writers[(p, r)] = pq.ParquetWriter(path, SCHEMA, **SCRATCH_PARQUET)
                writers[(p, r)].write_table(table)
    finally:
        _close(writers)


def _batches(files: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The files' rows, a batch at a time, in order."""
    for file in files:
        yield from pq.ParquetFile(file).iter_batches(batch_size=65_536, columns=columns)


def _close(writers: dict[Any, pq.ParquetWriter]) -> None:
    for writer in writers.values():
        writer.close()
    writers.clear()


# What a shard row says about passages (`passage_refs`).
_NAMING = (
    "positive_id",
    "positive",
    "positive_lang",
    "query",
    "query_lang",
    NEGATIVE_IDS,
    "negatives_lang",
    "source",
    "id",
    "origin",
)


def with_passage_ids(df: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
    """Rows with `positive_id` and `negative_ids` (from inline negatives where a row still has them),
    and the inline negatives' texts under those ids (REFS_SCHEMA)."""
    positives = [passage_id(t) if t is not None else None for t in df["positive"].to_list()]
    inline, stored = df[NEGATIVES].to_list(), df[NEGATIVE_IDS].to_list()
    negatives = [[passage_id(t) for t in own] if own is not None else ids for own, ids in zip(inline, stored)]
    df = df.with_columns(
        pl.Series(POSITIVE_ID, positives, pl.String), pl.Series(NEGATIVE_IDS, negatives, pl.List(pl.String))
    )
    refs: dict[str, list] = {name: [] for name in REFS_SCHEMA.names}
    rows = zip(
        negatives,
        inline,
        df["negatives_lang"].to_list(),
        df["source"].to_list(),
        df["id"].to_list(),
        df["origin"].to_list(),
    )
    for neg_ids, neg_texts, neg_lang, source, rid, origin in rows:
        for doc, text in zip(neg_ids or [], neg_texts or []):
            for column, value in zip(REFS_SCHEMA.names, (doc, text, NEGATIVE, neg_lang, source, rid, origin)):
                refs[column].append(value)
    return df, pa.table(refs, schema=REFS_SCHEMA)


def passage_refs(df: pl.DataFrame) -> pa.Table:
    """The passages shard rows name (REFS_SCHEMA): each positive (with its text), each negative (by
    id: its text is in the passage store or was listed from the inline negatives), and the query
    where a row has negatives (`build_pairs` takes negatives from other rows' queries)."""
    positives = df.filter(pl.col("positive_id").is_not_null()).select(
        pl.col("positive_id").alias(DOC_ID),
        pl.col("positive").alias(TEXT),
        pl.lit(POSITIVE, pl.Int8).alias("role"),
        pl.col("positive_lang").alias("language"),
        "source",
        "id",
        "origin",
    )
    with_negatives = df.filter(pl.col(NEGATIVE_IDS).list.len() > 0)
    queries = with_negatives.filter(pl.col("query_lang").is_not_null()).select(
        pl.col("query").map_elements(passage_id, return_dtype=pl.String).alias(DOC_ID),
        pl.col("query").alias(TEXT),
        pl.lit(QUERY, pl.Int8).alias("role"),
        pl.col("query_lang").alias("language"),
        "source",
        "id",
        "origin",
    )
    negatives = with_negatives.explode(NEGATIVE_IDS).select(
        pl.col(NEGATIVE_IDS).alias(DOC_ID),
        pl.lit(None, pl.String).alias(TEXT),
        pl.lit(NEGATIVE, pl.Int8).alias("role"),
        pl.col("negatives_lang").alias("language"),
        "source",
        "id",
        "origin",
    )
    return pl.concat([positives, queries, negatives]).to_arrow().cast(REFS_SCHEMA)
