"""The run's passage table, `corpus/part-NNNNN-<tag>.parquet`: every passage a kept row names, once.

Written after the shards from the passages they listed (`pipeline/engine/shards.py`): a positive or
a negative that was still inline brings its text; a negative stored by reference is looked up in the
passage store (`pipeline/ops/passage_store.py`). One row per `doc_id` (`sources/passages.py`), sorted
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
import pyarrow.parquet as pq

from pipeline.engine.shards import QUERY
from pipeline.ops.files import write_atomic
from sources.passages import CORPUS_SCHEMA, DOC_ID, TEXT, MissingPassage


def write_corpus(refs: Path, store: list[str], out: Path, settings: Any, tag: str) -> list[dict[str, Any]]:
    """The passage table under `out` from the passages listed in `refs` and the store's files `store`
    (local); returns one entry per file (path relative to `out`, rows)."""
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
        found = (
            pl.scan_parquet(store).filter(pl.col(DOC_ID).is_in(missing[DOC_ID].implode())).unique(DOC_ID).collect()
            if store
            else pl.DataFrame(schema={DOC_ID: pl.String, TEXT: pl.String})
        )
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
                f"({len(store)} files; {lost.height} passages missing in all)"
            )
    table = passages.sort(DOC_ID).select(CORPUS_SCHEMA.names).to_arrow().cast(CORPUS_SCHEMA)
    out.mkdir(parents=True, exist_ok=True)
    compression = None if settings.compression == "none" else settings.compression
    written = []
    for k, start in enumerate(range(0, table.num_rows, settings.rows_per_shard)):
        chunk, target = table.slice(start, settings.rows_per_shard), out / f"part-{k:05d}-{tag}.parquet"
        write_atomic(
            target,
            lambda tmp, chunk=chunk: pq.write_table(
                chunk, tmp, compression=compression, compression_level=settings.compression_level
            ),
        )
        written.append({"path": target.name, "rows": chunk.num_rows})
    return written
