"""Exact deduplication across all sources on a configurable key, as a distributed shuffle."""

from __future__ import annotations

from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from core.record import WORK_SCHEMA
from pipeline.engine.stage import DedupConfig, ShuffleStage, StageConfig
from pipeline.ops.arrow import HSPACE, SPACE_OR_NEWLINE_TO_COLLAPSE, replace_regex


class ExactDedupConfig(DedupConfig):
    stage: Literal["exact_dedup"]
    key: list[Literal["query", "positive", "negatives", "instruction", "label"]] = Field(
        default_factory=lambda: ["query"], min_length=1, description="Fields whose normalised values form the key."
    )
    casefold: bool = Field(True, description="Compare keys case-insensitively.")


class ExactDedup(ShuffleStage):
    """Keeps one row per key: the one from the first source in `priority` (default: manifest order),
    then the smallest id.

    The kept row's `dup_count` is the size of its duplicate cluster; the others are dropped with
    `_detail` naming the kept id. Every row gets `dup_cluster`, the 64-bit hash of its key in hex: a
    cluster id that does not depend on which row was kept, so runs can be compared.
    """

    name = "exact_dedup"
    config_model = ExactDedupConfig
    writes = ("dup_count", "dup_cluster")
    config: ExactDedupConfig

    @classmethod
    def columns_read(cls, config: StageConfig) -> tuple[str, ...]:
        """The fields of the key (negatives only while they are inline texts, which the validator checks)."""
        assert isinstance(config, ExactDedupConfig)
        return tuple(config.key)

    def _key_text(self, batch: pa.Table) -> pa.Array:
        parts = []
        for field in self.config.key:
            col = batch.column(field)
            if field == "negatives":
                col = pc.binary_join(col, "\x1e")
            col = pc.fill_null(col, "")
            col = pc.utf8_trim_whitespace(replace_regex(col, f"(?:{HSPACE}|\\n)+", " ", SPACE_OR_NEWLINE_TO_COLLAPSE))
            parts.append(pc.utf8_lower(col) if self.config.casefold else col)
        return pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]

    @staticmethod
    def _hash(key_text: pa.Array) -> list[int]:
        return [xxhash.xxh3_64_intdigest(k.encode()) for k in key_text.to_pylist()]

    def key(self, batch: pa.Table) -> pa.Array:
        # Only for partitioning: the grouping below compares the full key text, so a hash collision
        # can put two keys in one partition but never merge them.
        return pa.array(self._hash(self._key_text(batch)), pa.uint64())

    def __call__(self, batch: pa.Table) -> pa.Table:
        priority = self.config.ranks(self.context)
        key_text = self._key_text(batch)
        df = pl.from_arrow(batch).with_columns(
            pl.Series("_k", key_text),
            pl.Series("dup_cluster", [f"{k:016x}" for k in self._hash(key_text)], pl.String),
            pl.col("source").replace_strict(priority, return_dtype=pl.Int32).alias("_prio"),
        )
        df = df.sort("_k", "_prio", "id", "origin").with_columns(
            pl.int_range(pl.len()).over("_k").alias("_rank"),
            pl.len().over("_k").cast(pl.Int32).alias("_size"),
            pl.first("id").over("_k").alias("_kept"),
        )
        is_dup = pl.col("_rank") > 0
        df = df.with_columns(
            pl.when(is_dup).then(pl.lit("exact_duplicate")).alias("_reason"),
            pl.when(is_dup).then(pl.format("duplicate of {}", pl.col("_kept"))).alias("_why"),
            pl.when(is_dup).then(pl.col("dup_count")).otherwise(pl.col("_size")).alias("dup_count"),
        )
        out = df.to_arrow()
        kept = out.select(WORK_SCHEMA.names).cast(WORK_SCHEMA)
        return self.drop(kept, out.column("_reason").cast(pa.string()), out.column("_why").cast(pa.string()))
