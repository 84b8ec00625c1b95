"""Near-duplicate removal with MinHash LSH, distributed over Ray without gathering rows or signatures.

The work is a chain of Ray task rounds over the blocks of the dataset (`pipeline/exchange.py`):

1. signatures: per block, MinHash signatures of each chosen field (`pipeline/minhash.py`) and one
   LSH bucket key per band of the first field (mixed with the row's language unless `cross_language`). The signatures
   stay in the object store beside their block; only (bucket, node) pairs travel, partitioned by
   bucket. A node is `block << 32 | row`, so anything about a node can be sent back to its block.
2. buckets: rows sharing a bucket are candidates. Each is linked to the bucket's centre (the member
   with the smallest content-hash rank, so the choice does not depend on how rows were blocked).
3. verification (`verify`): each candidate edge visits the centre's block, then the other node's
   block, picking up both signatures; it is kept when they agree on at least `threshold` of their
   hashes (the estimated Jaccard similarity) in every field, as `python -m pipeline dedup-eval` scores.
4. connected components of the verified edges (`pipeline/components.py`).
5. representative: per component, the row of the first source in `priority` (default: manifest
   order), then the smallest id (then origin) is kept and gets `near_dup_count` = component size; the others are
   dropped as `near_duplicate`, naming the kept id.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline.engine.stage import DatasetStage, DedupConfig, Stage, StageConfig
from pipeline.ops import exchange
from pipeline.ops.components import connected_components, route_undirected
from pipeline.ops.minhash import (
    Shingling,
    band_keys,
    choose_bands,
    hash_strings,
    signatures,
)

ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1
BAND_ENTRIES_PER_PARTITION = 4_000_000  # (bucket, node, rank) rows per bucket task: ~100 MB


class NearDedupConfig(DedupConfig):
    stage: Literal["near_dedup"]
    fields: list[Literal["query", "positive"]] = Field(
        default_factory=lambda: ["query"], min_length=1, description=(
            "Fields compared, each on its own: two rows are near duplicates when every field is (so retrieval "
            "rows sharing a passage but asking different questions are not)."))
    shingles: Literal["auto", "words", "chars"] = Field("auto", description="auto: words, or characters for unspaced scripts.")
    n_words: int = Field(3, ge=1)
    n_chars: int = Field(3, ge=1)
    # 0.5 with 3-gram shingles: precision 1.0 and recall >= 0.99 per script on the UDHR calibration
    # set (`python -m pipeline dedup-eval`, README), where 5-grams lose a tenth of the typo duplicates.
    threshold: float = Field(0.5, gt=0, lt=1, description="Estimated Jaccard similarity from which rows are duplicates.")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash hashes per signature.")
    bands: int | None = Field(None, ge=1, description="LSH bands; with `rows`, or chosen from the threshold.")
    rows: int | None = Field(None, ge=1, description="Hashes per band.")
    fp_weight: float | None = Field(None, gt=0, lt=1, description=(
        "Weight of false candidates against misses when choosing bands; default 0.1 with `verify` "
        "(verification removes false candidates, nothing brings back a miss), else 0.5."))
    verify: bool = Field(True, description="Keep only candidate pairs whose signatures agree on >= threshold (in every field; unverified, only the first field decides).")
    cross_language: bool = Field(False, description="Compare rows of different languages too.")
    seed: int = 1

    @model_validator(mode="after")
    def _bands(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither (then they are chosen from `threshold`)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        weight = self.fp_weight if self.fp_weight is not None else (0.1 if self.verify else 0.5)
        return choose_bands(self.threshold, self.num_perm, weight)

    def shingling(self) -> Shingling:
        return Shingling(self.shingles, self.n_words, self.n_chars)


# --- the task rounds (each runs as a Ray task; see the module docstring) -----------------------------


def _signature_task(index: int, config: NearDedupConfig, parts: int, block: pa.Table) -> list[Any]:
    """[signatures of the block (the fields' side by side), *(bucket, node, rank) tables by bucket
    partition]. Buckets come from the first field: rows alike in every field are alike in it."""
    sig = np.hstack([signatures(block.column(f), config.num_perm, config.seed, config.shingling()) for f in config.fields])
    keys = band_keys(sig[:, : config.num_perm], *config.banding())
    if not config.cross_language:
        lang = hash_strings(block.column(f"{config.fields[0]}_lang"))
        keys = (keys ^ lang[:, None]) * np.uint64(0x9E3779B97F4A7C15)
    has_tokens = ~(sig[:, : config.num_perm] == np.iinfo(np.uint32).max).all(axis=1)  # a text without tokens matches nothing
    rows = np.flatnonzero(has_tokens)
    node = (np.int64(index) << ROW_BITS) | rows.astype(np.int64)
    rank = hash_strings(pc.binary_join_element_wise(block.column("id"), block.column("origin"), block.column("source"), "\x1f"))
    bands = keys.shape[1]
    table = pa.table({
        "bucket": keys[rows].reshape(-1),
        "node": np.repeat(node, bands),
        "rank": np.repeat(rank[rows], bands),
    })
    return [sig, *exchange.split(table, exchange.spread(table.column("bucket").to_numpy(), parts), parts)]


def _owner(nodes: np.ndarray) -> np.ndarray:
    return nodes >> ROW_BITS


def _row(nodes: np.ndarray) -> np.ndarray:
    return nodes & ROW_MASK


def _bucket_task(blocks: int | None, parts: int, *tables: pa.Table) -> list[pa.Table]:
    """Candidate edges (centre, other), unique: sent to the centre's block for verification
    (`blocks`), or else straight to the connected-components partitions."""
    df = pl.from_arrow(exchange.concat(tables)).unique()
    df = df.filter(pl.len().over("bucket") > 1).sort("bucket", "rank", "node")
    edges = (
        df.with_columns(pl.first("node").over("bucket").alias("centre"))
        .filter(pl.col("node") != pl.col("centre"))
        .select(pl.col("centre").alias("u"), pl.col("node").alias("v"))
        .unique()
        .to_arrow()
    )
    if blocks is None:
        return route_undirected(edges, parts)
    return exchange.split(edges, _owner(edges.column("u").to_numpy()), blocks)


def _attach_task(blocks: int, sig: np.ndarray, *tables: pa.Table) -> list[pa.Table]:
    """Edges whose centre lives in this block pick up the centre's signature, then go to the other's block."""
    edges = exchange.concat(tables)
    u = edges.column("u").to_numpy()
    sig_u = pa.FixedSizeListArray.from_arrays(pa.array(sig[_row(u)].reshape(-1)), sig.shape[1])
    with_sig = edges.append_column("sig_u", sig_u)
    return exchange.split(with_sig, _owner(edges.column("v").to_numpy()), blocks)


def _verify_task(parts: int, config: NearDedupConfig, sig: np.ndarray, *tables: pa.Table) -> list[pa.Table]:
    """Edges whose other node lives in this block: kept when the signatures agree enough in every field."""
    edges = exchange.concat(tables)
    v = edges.column("v").to_numpy()
    sig_u = pc.list_flatten(edges.column("sig_u")).to_numpy().reshape(len(v), sig.shape[1])
    agreement = (sig_u == sig[_row(v)]).reshape(len(v), len(config.fields), config.num_perm).mean(axis=2)
    keep = agreement.min(axis=1) >= config.threshold
    return route_undirected(edges.select(["u", "v"]).filter(pa.array(keep)), parts)


def _by_owner_task(blocks: int, labels: pa.Table) -> list[pa.Table]:
    return exchange.split(labels, _owner(labels.column("node").to_numpy()), blocks)


def _members_task(parts: int, priority: dict[str, int], block: pa.Table, *labels: pa.Table) -> list[pa.Table]:
    """This block's clustered rows with what decides the representative, sent to their label's partition."""
    lab = exchange.concat(labels)
    rows = pa.array(_row(lab.column("node").to_numpy()))
    members = pa.table({
        "node": lab.column("node"),
        "label": lab.column("label"),
        "prio": pa.array([priority[s] for s in block.column("source").take(rows).to_pylist()], pa.int32()),
        "id": block.column("id").take(rows),
        "origin": block.column("origin").take(rows),
    })
    return exchange.split(members, exchange.spread(members.column("label").to_numpy(), parts), parts)


def _choose_task(blocks: int, *tables: pa.Table) -> list[pa.Table]:
    """Per component: the representative (earliest source, smallest id, then origin) and the size."""
    df = pl.from_arrow(exchange.concat(tables)).sort("label", "prio", "id", "origin")
    out = df.with_columns(
        pl.first("node").over("label").alias("kept_node"),
        pl.first("id").over("label").alias("kept_id"),
        pl.len().over("label").cast(pl.Int32).alias("size"),
    ).select("node", "kept_node", "kept_id", "size").to_arrow()
    return exchange.split(out, _owner(out.column("node").to_numpy()), blocks)


def _filter_task(block: pa.Table, *tables: pa.Table) -> list[pa.Table]:
    """The block with its duplicates marked and its representatives' cluster sizes."""
    chosen = pl.from_arrow(exchange.concat(tables)).with_columns((pl.col("node") & ROW_MASK).alias("_row"))
    df = pl.from_arrow(block).with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    df = df.join(chosen, on="_row", how="left", maintain_order="left")
    is_dup = pl.col("kept_node").is_not_null() & (pl.col("kept_node") != pl.col("node"))
    df = df.with_columns(
        pl.when(is_dup).then(pl.lit("near_duplicate")).alias("_reason"),
        pl.when(is_dup).then(pl.format("near duplicate of {} (cluster of {})", pl.col("kept_id"), pl.col("size"))).alias("_why"),
        pl.when(is_dup).then(pl.col("near_dup_count")).otherwise(pl.col("size").fill_null(1)).alias("near_dup_count"),
    )
    out = df.to_arrow()
    marked = Stage.drop(out.select(block.column_names).cast(block.schema), out.column("_reason").cast(pa.string()), out.column("_why").cast(pa.string()))
    return [marked]


class NearDedup(DatasetStage):
    name = "near_dedup"
    config_model = NearDedupConfig
    writes = ("near_dup_count",)
    config: NearDedupConfig

    @classmethod
    def columns_read(cls, config: StageConfig) -> tuple[str, ...]:
        """The languages of the compared fields, unless rows of all languages are compared."""
        assert isinstance(config, NearDedupConfig)
        return () if config.cross_language else tuple(f"{f}_lang" for f in config.fields)

    def plan(self, blocks_in: list[Any], rows: int) -> list[Any]:
        config = self.config
        blocks = len(blocks_in)
        if not blocks:
            return blocks_in
        if blocks >= 1 << (63 - ROW_BITS):
            raise ValueError(f"{blocks} blocks: too many to number rows as block << {ROW_BITS} | row")
        parts = max(2 * exchange.parallelism(), math.ceil(rows * config.banding()[0] / BAND_ENTRIES_PER_PARTITION))

        signed = exchange.track(exchange.submit(_signature_task, [(i, config, parts, b) for i, b in enumerate(blocks_in)], parts + 1),
                                "near_dedup: signatures")
        sigs, band_parts = [s[0] for s in signed], [s[1:] for s in signed]
        if config.verify:
            centred = exchange.submit(_bucket_task, [(blocks, parts, *exchange.column(band_parts, j)) for j in range(parts)], blocks)
            attached = exchange.submit(_attach_task, [(blocks, sigs[i], *exchange.column(centred, i)) for i in range(blocks)], blocks)
            edges = exchange.track(exchange.submit(_verify_task, [(parts, config, sigs[i], *exchange.column(attached, i)) for i in range(blocks)], parts),
                                   "near_dedup: candidate pairs")
        else:
            edges = exchange.submit(_bucket_task, [(None, parts, *exchange.column(band_parts, j)) for j in range(parts)], parts)
        labels, _ = connected_components(edges, parts)
        owned = exchange.submit(_by_owner_task, [(blocks, lab) for lab in labels], blocks)
        priority = self.config.ranks(self.context)
        members = exchange.submit(_members_task, [(parts, priority, blocks_in[i], *exchange.column(owned, i)) for i in range(blocks)], parts)
        chosen = exchange.submit(_choose_task, [(blocks, *exchange.column(members, j)) for j in range(parts)], blocks)
        done = exchange.track(exchange.submit(_filter_task, [(blocks_in[i], *exchange.column(chosen, i)) for i in range(blocks)], 1),
                              "near_dedup: clusters")
        return [d[0] for d in done]
