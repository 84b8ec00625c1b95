"""The run's passage table, `corpus/part-NNNNN-<tag>.parquet`: every passage a kept row names, once.

Written after the shards from the passages they listed (`pipeline/engine/shards.py`, one file per
range of the doc-id space, so one range at a time is in memory however large the run): a positive or
a negative that was still inline brings its text; a negative stored by reference is looked up in the
passage store (`pipeline/ops/passage_store.py`). One row per `doc_id` (`core/passages.py`), sorted
by it, so the files do not depend on the order of anything before (a resumed run writes the same
bytes). A passage's language is the one it has as a positive (any row's), else as a query (negatives
`build_pairs` takes from other rows' queries), else its row's negatives' label; its source is the
first source name among the rows that name it. A negative id with no text
anywhere is an error naming the row, never a gap in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import CORPUS_SCHEMA, DOC_ID, TEXT, MissingPassage
from pipeline.engine.shards import QUERY, id_range
from pipeline.ops.files import write_atomic
from pipeline.ops.memory import release_memory


def write_corpus(refs: Path, store: list[str], out: Path, settings: Any, tag: str) -> list[dict[str, Any]]:
    """The passage table under `out` from the passages listed in the folder `refs` (one file per
    range of doc ids, `pipeline/engine/shards.py`) and the store's files `store` (local); returns one
    entry per file (path relative to `out`, rows). One range is in memory at a time; files hold
    `rows_per_shard` rows across ranges, so the table's bytes do not depend on the number of ranges."""
    # `<range>-<ranges>.parquet`; a range no row named has no file
    parts = [(int(p.stem.split("-")[0]), int(p.stem.split("-")[1]), p) for p in sorted(refs.glob("*.parquet"))]
    lookup = _StoreByRange(store, refs / "store", parts[0][1] if parts else 1)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    pending: list[pa.Table] = []

    def flush(final: bool) -> None:
        table = pa.concat_tables(pending) if pending else CORPUS_SCHEMA.empty_table()
        pending.clear()
        start = 0
        while table.num_rows - start >= settings.rows_per_shard or (final and table.num_rows > start):
            _write_part(table.slice(start, settings.rows_per_shard), out, len(written), settings, tag, written)
            start += settings.rows_per_shard
        if start < table.num_rows:
            pending.append(table.slice(start))

    for r, _, part in parts:
        pending.append(_passages(part, r, lookup))
        flush(final=False)
        release_memory()  # a range's working set, not the largest range's, stays between ranges
    flush(final=True)
    return written


def _passages(refs: Path, r: int, lookup: _StoreByRange) -> pa.Table:
    """Range `r`'s passages, sorted by doc id, texts of negatives stored by reference looked up."""
    named = pl.col("role") != QUERY
    passages = (
        pl.scan_parquet(refs)
        .sort(DOC_ID, "role", "language", "source", "id", "origin", nulls_last=True)
        .group_by(DOC_ID)
        .agg(
            pl.col(TEXT).drop_nulls().first(),
            pl.col("language").drop_nulls().first(),  # as a positive, else as a query, else its row's negatives' label
            pl.col("source").filter(named).min(),
            pl.col("id").filter(named).first(),
            pl.col("origin").filter(named).first(),
            named.any().alias("_named"),
        )
        .filter("_named")
        .drop("_named")
        .collect()
    )
    missing = passages.filter(pl.col(TEXT).is_null())
    if missing.height:
        found = lookup(r, missing[DOC_ID])
        passages = (
            passages.join(found.rename({TEXT: "_stored"}), on=DOC_ID, how="left")
            .with_columns(pl.col(TEXT).fill_null(pl.col("_stored")))
            .drop("_stored")
        )
        lost = passages.filter(pl.col(TEXT).is_null())
        if lost.height:
            doc, rid, origin = lost.row(0, named=True)[DOC_ID], lost["id"][0], lost["origin"][0]
            raise MissingPassage(
                f"row {rid} ({origin}) names negative {doc}, which is not in the passage store "
                f"({len(lookup.store)} files; {lost.height} passages of its id range missing)"
            )
    return passages.sort(DOC_ID).select(CORPUS_SCHEMA.names).to_arrow().cast(CORPUS_SCHEMA)


class _StoreByRange:
    """Texts of stored passages by doc id. With one range the store is scanned as it is; with more, it
    is first split into one file per range (one pass, on first need), so each range reads only its own.
    The split lives in the refs folder, which the next attempt's shards remove first."""

    def __init__(self, store: list[str], folder: Path, ranges: int):
        self.store, self.folder, self.ranges = store, folder, ranges
        self.split = ranges == 1  # nothing to split

    def __call__(self, r: int, ids: pl.Series) -> pl.DataFrame:
        if not self.split:
            self._split()
        own = self.folder / f"{r:05d}.parquet"
        files = self.store if self.ranges == 1 else [str(own)] if own.exists() else []
        if not files:
            return pl.DataFrame(schema={DOC_ID: pl.String, TEXT: pl.String})
        return pl.scan_parquet(files).filter(pl.col(DOC_ID).is_in(ids.implode())).unique(DOC_ID).collect()

    def _split(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for file in self.store:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536, columns=[DOC_ID, TEXT]):
                    frame = pl.from_arrow(batch).with_columns(id_range(pl.col(DOC_ID), self.ranges).alias("_range"))
                    for (r,), group in frame.partition_by("_range", as_dict=True).items():
                        table = group.drop("_range").to_arrow()
                        if r not in writers:
                            writers[r] = pq.ParquetWriter(
                                self.folder / f"{r:05d}.parquet", table.schema, compression="lz4"
                            )
                        writers[r].write_table(table)
        finally:
            for w in writers.values():
                w.close()
        self.split = True


def _write_part(chunk: pa.Table, out: Path, k: int, settings: Any, tag: str, written: list[dict[str, Any]]) -> None:
    compression = None if settings.compression == "none" else settings.compression
    target = out / f"part-{k:05d}-{tag}.parquet"
    write_atomic(
        target,
        lambda tmp: pq.write_table(chunk, tmp, compression=compression, compression_level=settings.compression_level),
    )
    written.append({"path": target.name, "rows": chunk.num_rows})
