"""Exact deduplication across all sources on a configurable key, in rounds over files that move
keys, not rows (`pipeline/ops/exchange.py`):

1. per block: each row's key (its fields whitespace-collapsed, optionally case-folded) hashed to 128
   bits, with what decides which row of a cluster is kept (source priority, id, origin), sent to
   the key's partition;
2. per partition: every row of a key together: the kept row and the cluster's size, sent back to
   the rows' blocks;
3. per block: the others dropped as `exact_duplicate`, naming the kept id.

Scratch and memory hold about 100 bytes a row, whatever the rows' texts; two different keys share a
128-bit hash with a probability of about n^2 / 2^129 (none in any corpus).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from core.record import to_work_schema
from core.settings import example
from pipeline.engine.stage import DatasetStage, DedupConfig, Stage
from pipeline.ops import exchange
from pipeline.ops.arrow import HSPACE, SPACE_OR_NEWLINE_TO_COLLAPSE, replace_regex

ROW_BITS = 32
# Keys a partition task holds. Small enough that a task's memory at 10M rows stays near its
# memory at 1M (where the floor of two partitions per core decides): more tasks, not bigger ones.
ROWS_PER_PARTITION = 500_000


class ExactDedupConfig(DedupConfig):
    model_config = example(stage="exact_dedup", key=["query", "positive"], priority=["xquad_r"])

    stage: Literal["exact_dedup"]
    key: list[Literal["query", "positive", "negatives", "instruction", "label"]] = Field(
        default_factory=lambda: ["query"], min_length=1, description="Fields whose normalised values form the key."
    )
    casefold: bool = Field(True, description="Compare keys case-insensitively.")


def key_text(batch: pa.Table, config: ExactDedupConfig) -> pa.Array:
    """Each row's key: its key fields, whitespace-collapsed (and case-folded), joined."""
    parts = []
    for field in config.key:
        col = batch.column(field)
        if field == "negatives":
            col = pc.binary_join(col, "\x1e")
        col = pc.fill_null(col, "")
        col = pc.utf8_trim_whitespace(replace_regex(col, f"(?:{HSPACE}|\\n)+", " ", SPACE_OR_NEWLINE_TO_COLLAPSE))
        parts.append(pc.utf8_lower(col) if config.casefold else col)
    return pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]


def _key_task(
    index: int, block: pa.Table, config: ExactDedupConfig, priority: dict[str, int], parts: int
) -> list[pa.Table]:
    digests = [xxhash.xxh3_128_intdigest(k.encode()) for k in key_text(block, config).to_pylist()]
    high = np.array([d >> 64 for d in digests], np.uint64)
    keys = pa.table(
        {
            "high": high,
            "low": np.array([d & 0xFFFF_FFFF_FFFF_FFFF for d in digests], np.uint64),
            "node": (np.int64(index) << ROW_BITS) | np.arange(block.num_rows, dtype=np.int64),
            "prio": pa.array([priority[s] for s in block.column("source").to_pylist()], pa.int32()),
            "id": block.column("id"),
            "origin": block.column("origin"),
        }
    )
    return exchange.split(keys, exchange.spread(high, parts), parts)


def _cluster_task(blocks: int, *tables: pa.Table) -> list[pa.Table]:
    """Per key: the kept row (first source in priority, smallest id, then origin) and the size."""
    df = pl.from_arrow(exchange.concat(tables)).sort("high", "low", "prio", "id", "origin")
    out = (
        df.with_columns(
            pl.first("node").over("high", "low").alias("kept_node"),
            pl.first("id").over("high", "low").alias("kept_id"),
            pl.len().over("high", "low").cast(pl.Int32).alias("size"),
        )
        .select("node", "kept_node", "kept_id", "size")
        .to_arrow()
    )
    return exchange.split(out, out.column("node").to_numpy() >> ROW_BITS, blocks)


def _mark_task(block: pa.Table, config: ExactDedupConfig, *tables: pa.Table) -> list[pa.Table]:
    """The block with its duplicates dropped, the kept rows' cluster sizes and every row's cluster id."""
    chosen = pl.from_arrow(exchange.concat(tables)).with_columns((pl.col("node") & ((1 << ROW_BITS) - 1)).alias("_row"))
    cluster = [f"{xxhash.xxh3_64_intdigest(k.encode()):016x}" for k in key_text(block, config).to_pylist()]
    df = (
        pl.from_arrow(block)
        .with_row_index("_row")
        .with_columns(pl.col("_row").cast(pl.Int64), pl.Series("dup_cluster", cluster, pl.String))
    )
    df = df.join(chosen, on="_row", how="left", maintain_order="left")
    is_dup = pl.col("kept_node") != pl.col("node")
    df = df.with_columns(
        pl.when(is_dup).then(pl.lit("exact_duplicate")).alias("_reason"),
        pl.when(is_dup).then(pl.format("duplicate of {}", pl.col("kept_id"))).alias("_why"),
        pl.when(is_dup).then(pl.col("dup_count")).otherwise(pl.col("size")).alias("dup_count"),
    )
    out = df.to_arrow()
    marked = Stage.drop(
        to_work_schema(out), out.column("_reason").cast(pa.string()), out.column("_why").cast(pa.string())
    )
    return [marked]


class ExactDedup(DatasetStage[ExactDedupConfig]):
    """Keeps one row per key: the one from the first source in `priority` (default: manifest order),
    then the smallest id.

    The kept row's `dup_count` is the size of its duplicate cluster; the others are dropped with
    `_detail` naming the kept id. Every row gets `dup_cluster`, the 64-bit hash of its key in hex: a
    cluster id that does not depend on which row was kept, so runs can be compared.
    """

    version = "2"  # rounds over keys (the same rows kept)
    config_model = ExactDedupConfig
    writes = ("dup_count", "dup_cluster")

    @classmethod
    def columns_read(cls, config: ExactDedupConfig) -> tuple[str, ...]:
        """The fields of the key (negatives only while they are inline texts, which the validator checks)."""
        return tuple(config.key)

    def plan(self, blocks: list[Any], rows: int, rounds: exchange.Rounds) -> list[Any]:
        if not blocks:
            return []
        parts = max(2 * rounds.parallelism, math.ceil(rows / ROWS_PER_PARTITION))
        priority = self.config.ranks(self.context)
        keyed = rounds.submit(
            _key_task,
            [(i, b, self.config, priority, parts) for i, b in enumerate(blocks)],
            parts,
            description="exact_dedup: keys",
        )
        chosen = rounds.submit(
            _cluster_task, [(len(blocks), *exchange.column(keyed, j)) for j in range(parts)], len(blocks)
        )
        marked = rounds.submit(
            _mark_task,
            [(b, self.config, *exchange.column(chosen, i)) for i, b in enumerate(blocks)],
            1,
            description="exact_dedup: marking",
        )
        return [m[0] for m in marked]
