"""Final shards: Parquet files of kept rows, one folder per partition, deterministic and atomic.

Rows are sorted by (id, origin) inside each partition, so the shards do not depend on the order in
which Ray happened to finish blocks: a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.record import COLUMNS, DROP, SCHEMA


def _folder_name(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value)) if value is not None else "null"


def write_shards(files: list[str], out: Path, settings: Any) -> list[dict[str, Any]]:
    """Write kept rows of `files` under `out`; return one entry per shard file (path, rows, partition)."""
    kept = pl.scan_parquet(files).filter(pl.col(DROP).is_null()).select(COLUMNS)
    keys = settings.partition_by
    partitions = kept.select(keys).unique().sort(keys, nulls_last=True).collect().iter_rows()
    compression = None if settings.compression == "none" else settings.compression
    written: list[dict[str, Any]] = []
    for values in partitions:
        condition = pl.lit(True)
        for key, value in zip(keys, values):
            condition = condition & (pl.col(key).is_null() if value is None else (pl.col(key) == value))
        # One partition in memory at a time; its rows sorted for a deterministic layout.
        part = kept.filter(condition).sort("id", "origin").collect().to_arrow().cast(SCHEMA)
        folder = out.joinpath(*(_folder_name(v) for v in values))
        folder.mkdir(parents=True, exist_ok=True)
        for i, start in enumerate(range(0, part.num_rows, settings.rows_per_shard)):
            path = folder / f"part-{i:05d}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            chunk = part.slice(start, settings.rows_per_shard)
            pq.write_table(chunk, tmp, compression=compression, compression_level=settings.compression_level)
            os.replace(tmp, path)
            written.append({"path": str(path.relative_to(out)), "rows": chunk.num_rows, **dict(zip(keys, values))})
    return written

