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
import pyarrow.parquet as pq

from pipeline.ops.files import write_atomic
from sources.record import COLUMNS, DROP, SCHEMA

ID_PREFIX = 8  # hex digits of the id that place a row in its range (2^32 ranges at most)


def _folder_name(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value)) if value is not None else "null"


def write_shards(files: list[str], out: Path, settings: Any, tag: str, spill: Path | None = None) -> list[dict[str, Any]]:
    """Write kept rows of `files` under `out` as `part-NNNNN-<tag>.parquet`; return one entry per
    shard file (path, rows, partition). `tag` names the content (the run's fingerprint): `datasets`
    caches a local dataset by its file patterns, so other content must mean other names. `spill`:
    a scratch folder (default `out/_spill`), removed at the end."""
    keys = settings.partition_by
    kept = pl.scan_parquet(files).filter(pl.col(DROP).is_null()).select(COLUMNS)
    counts = kept.group_by(keys).agg(pl.len().alias("_rows")).sort(keys, nulls_last=True).collect()
    ranges = (pl.col("_rows") / (0.8 * settings.rows_per_shard)).ceil().clip(lower_bound=1).cast(pl.Int64)
    plan = counts.with_columns(ranges.alias("_ranges"))
    spill = spill or out / "_spill"
    _spill(files, keys, plan, spill)
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


def _spill(files: list[str], keys: list[str], plan: pl.DataFrame, spill: Path) -> None:
    """One pass over the checkpoint, a batch at a time: each kept row to `<partition>-<range>.parquet`."""
    shutil.rmtree(spill, ignore_errors=True)  # a crashed attempt's
    spill.mkdir(parents=True)
    index = plan.with_row_index("_partition").select(*keys, pl.col("_partition").cast(pl.Int64), "_ranges")
    writers: dict[tuple[int, int], pq.ParquetWriter] = {}
    try:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536, columns=[*COLUMNS, DROP]):
                df = pl.from_arrow(batch).filter(pl.col(DROP).is_null()).select(COLUMNS)
                df = df.join(index, on=keys, how="left", nulls_equal=True).with_columns(
                    (pl.col("id").str.slice(0, ID_PREFIX).str.to_integer(base=16).cast(pl.Int64) * pl.col("_ranges") // 16**ID_PREFIX).alias("_range"))
                for (p, r), group in df.partition_by("_partition", "_range", as_dict=True).items():
                    table = group.select(COLUMNS).to_arrow().cast(SCHEMA)
                    if (p, r) not in writers:
                        writers[(p, r)] = pq.ParquetWriter(spill / f"{p}-{r}.parquet", SCHEMA, compression="lz4")
                    writers[(p, r)].write_table(table)
    finally:
        for w in writers.values():
            w.close()
