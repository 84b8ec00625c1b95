"""Near-duplicate removal with MinHash LSH in rounds of tasks over files: memory per task, scratch
bounded by the input, never a whole dataset, its signatures or its pairs in one process.

The rounds (`pipeline/ops/exchange.py`) run over the step's input files (blocks):

Rows are numbered across the blocks (a block's rows follow the previous block's), so a node is a
32-bit number, and anything about a row can be sent back to its block without a join on the records.

1. signatures, a task per block: MinHash signatures of each compared field
   (`pipeline/ops/minhash.py`), kept as one byte per hash (b-bit minwise hashing: 128 bytes per field
   and row), with each row's rank (a hash of its id, origin and source) and language, in files that
   every later round reads (memory-mapped: the operating system pages in what a task touches).
2. candidates, a few bands at a time (so scratch holds one group of bands' bucket entries):
   a. per block: each row's bucket per band, a band taking `rows` hashes of every compared field
      (rows share a bucket only where all fields agree on a band) mixed with the row's language
      (unless `cross_language`), sent to the bucket's partition;
   b. per bucket partition: the rows of a bucket link to its centre (the smallest rank, so the
      choice does not depend on how rows were blocked), and each pair is verified at once against
      both rows' signatures: kept when the estimated Jaccard similarity reaches `threshold` in every
      field (the decision `python -m pipeline dedup-eval` scores: `NearDedupConfig.verified`).
3. connected components of the verified pairs (`pipeline/ops/components.py`).
4. per component, the representative (the first source in `priority`, default manifest order,
   then the smallest id, then origin) and the size go back to the rows' blocks, which keep it with
   `near_dup_count` = component size and drop the others as `near_duplicate`, naming the kept id.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from core.record import to_work_schema
from core.settings import example
from pipeline.engine.stage import DatasetStage, DedupConfig, Stage
from pipeline.ops import exchange
from pipeline.ops.components import connected_components, route_undirected
from pipeline.ops.minhash import (
    Shingling,
    band_keys,
    choose_bands,
    compact,
    compact_bits,
    hash_strings,
    signatures,
    similarity,
)

# (bucket, node) rows per bucket task, and nodes per components partition: what a task gets at 1M
# rows on 2 cores (the floor of two partitions per core), so a task's memory stays there at any size.
BAND_ENTRIES_PER_PARTITION = 1_000_000
BANDS_PER_ROUND = 4  # bands whose bucket entries are in scratch at once (8 bytes a row each)
PAIRS_PER_CHUNK = 100_000  # candidate pairs whose signatures a task gathers at once (50 MB)


class NearDedupConfig(DedupConfig):
    model_config = example(stage="near_dedup", fields=["query", "positive"], threshold=0.5)

    stage: Literal["near_dedup"]
    fields: list[Literal["query", "positive"]] = Field(
        default_factory=lambda: ["query"],
        min_length=1,
        description=(
            "Fields compared, each on its own: two rows are near duplicates when every field is (so retrieval "
            "rows sharing a passage but asking different questions are not)."
        ),
    )
    shingles: Literal["auto", "words", "chars"] = Field(
        "auto", description="auto: words, or characters for unspaced scripts."
    )
    n_words: int = Field(3, ge=1)
    n_chars: int = Field(3, ge=1)
    # 0.5 with 3-gram shingles: the best precision and recall on the UDHR calibration set
    # (`python -m pipeline dedup-eval`, docs/dedup.md); 5-grams lose a tenth of the typo duplicates.
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Estimated Jaccard similarity from which rows are duplicates."
    )
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash hashes per signature.")
    bands: int | None = Field(None, ge=1, description="LSH bands; with `rows`, or chosen from the threshold.")
    rows: int | None = Field(None, ge=1, description="Hashes of each compared field in a band.")
    fp_weight: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "Weight of false candidates against misses when choosing bands; default 0.1 with `verify` "
            "(verification removes false candidates, nothing brings back a miss), else 0.5."
        ),
    )
    verify: bool = Field(
        True,
        description="Keep only candidate pairs whose estimated Jaccard similarity reaches `threshold` in every field "
        "(unverified: every pair sharing a band is one).",
    )
    cross_language: bool = Field(False, description="Compare rows of different languages too.")
    seed: int = 1

    @model_validator(mode="after")
    def _bands(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither (then they are chosen from `threshold`)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm} "
                "(a band takes `rows` hashes of each field)"
            )
        return self

    def banding(self) -> tuple[int, int]:
        """(bands, hashes per field in a band): a band takes `rows` hashes of every compared field."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        weight = self.fp_weight if self.fp_weight is not None else (0.1 if self.verify else 0.5)
        return choose_bands(self.threshold, self.num_perm, weight, len(self.fields))

    def shingling(self) -> Shingling:
        return Shingling(self.shingles, self.n_words, self.n_chars)

    def signature(self, columns: list[pa.Array]) -> np.ndarray:
        """Compact signatures (rows, fields, num_perm) of the compared fields' texts, with enough
        bits per hash that a band keys a bucket with 32 bits or more."""
        bits = compact_bits(self.banding()[1] * len(self.fields))
        return np.stack(
            [compact(signatures(c, self.num_perm, self.seed, self.shingling()), bits) for c in columns], axis=1
        )

    def verified(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which candidate pairs are near duplicates: every field at `threshold` or more (with
        `verify`; unverified, every candidate is one)."""
        if not self.verify:
            return np.ones(len(a), bool)
        return similarity(a, b).min(axis=1) >= self.threshold

    def duplicates(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The stage's decision for pairs of rows (compact signatures of each side): candidates in
        some band, and verified."""
        bands, rows = self.banding()
        candidate = (band_keys(a, range(bands), rows) == band_keys(b, range(bands), rows)).any(axis=1)
        return candidate & self.verified(a, b)


# --- the task rounds (see the module docstring) -----------------------------------------------------


def _owner(nodes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The block of each node (`starts`: each block's first node, and the total at the end)."""
    return np.searchsorted(starts, nodes, side="right") - 1


def _signature_task(block: pa.Table, config: NearDedupConfig) -> list[Any]:
    """[compact signatures (rows, fields, num_perm), (rows, 2) uint64: each row's rank and language
    hash, the number of rows]."""
    sig = config.signature([block.column(f) for f in config.fields])
    rank = hash_strings(
        pc.binary_join_element_wise(block.column("id"), block.column("origin"), block.column("source"), "\x1f")
    )
    lang = (
        np.zeros(block.num_rows, np.uint64)
        if config.cross_language
        else hash_strings(block.column(f"{config.fields[0]}_lang"))
    )
    return [sig, np.stack([rank, lang], axis=1), block.num_rows]


def _band_task(
    start: int, sig: np.ndarray, meta: np.ndarray, bands: range, rows: int, parts: int, verify: bool
) -> list[pa.Table]:
    """(bucket, node) of the block's rows in these bands, by bucket partition. Verified, a bucket
    keeps 32 bits of its key (rows that share one by chance are told apart by verification);
    unverified, all 64. A row whose first field has no tokens (all-max hashes) is in no bucket."""
    has_tokens = ~(sig[:, 0, :] == np.iinfo(sig.dtype).max).all(axis=1)
    keep = np.flatnonzero(has_tokens)
    keys = band_keys(np.asarray(sig[keep]), bands, rows, np.asarray(meta[keep, 1])).reshape(-1)
    node = (start + keep).astype(np.uint32)
    bucket = (keys >> np.uint64(32)).astype(np.uint32) if verify else keys
    table = pa.table({"bucket": bucket, "node": np.repeat(node, len(bands))})
    return exchange.split(table, exchange.spread(keys, parts), parts)


def _gather(arrays: list[np.ndarray], starts: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The rows `nodes` of per-block arrays (memory-mapped), in the order of `nodes`."""
    out = np.empty((len(nodes), *arrays[0].shape[1:]), arrays[0].dtype)
    owner = _owner(nodes, starts)
    row = nodes - starts[owner]
    for block in np.unique(owner):
        mine = np.flatnonzero(owner == block)
        order = np.argsort(row[mine], kind="stable")  # ascending rows: sequential pages
        out[mine[order]] = arrays[block][row[mine][order]]
    return out


def _bucket_task(
    config: NearDedupConfig,
    parts: int,
    starts: np.ndarray,
    sigs: list[np.ndarray],
    metas: list[np.ndarray],
    *tables: pa.Table,
) -> list[pa.Table]:
    """The verified pairs (centre, other) of this partition's buckets, by components partition."""
    entries = pl.from_arrow(exchange.concat(tables)).unique()
    entries = entries.filter(pl.len().over("bucket") > 1).with_columns(pl.col("node").cast(pl.Int64))
    nodes = entries["node"].to_numpy()
    entries = entries.with_columns(
        pl.Series("rank", _gather(metas, starts, nodes)[:, 0] if len(nodes) else np.zeros(0, np.uint64))
    )
    centred = entries.sort("bucket", "rank", "node").with_columns(pl.first("node").over("bucket").alias("centre"))
    pairs = (
        centred.filter(pl.col("node") != pl.col("centre"))
        .select(pl.col("centre").alias("u"), pl.col("node").alias("v"))
        .unique()
    )
    kept = []
    for first in range(0, pairs.height, PAIRS_PER_CHUNK):
        chunk = pairs.slice(first, PAIRS_PER_CHUNK)
        u, v = chunk["u"].to_numpy(), chunk["v"].to_numpy()
        kept.append(chunk.filter(pl.Series(config.verified(_gather(sigs, starts, u), _gather(sigs, starts, v)))))
    edges = pl.concat(kept) if kept else pl.DataFrame(schema={"u": pl.Int64, "v": pl.Int64})
    return route_undirected(edges.to_arrow(), parts)


def _by_owner_task(starts: np.ndarray, labels: pa.Table) -> list[pa.Table]:
    return exchange.split(labels, _owner(labels.column("node").to_numpy(), starts), len(starts) - 1)


def _members_task(
    parts: int, priority: dict[str, int], start: int, block: pa.Table, *labels: pa.Table
) -> list[pa.Table]:
    """This block's clustered rows with what decides the representative, sent to their label's partition."""
    lab = exchange.concat(labels)
    rows = pa.array(lab.column("node").to_numpy() - start)
    members = pa.table(
        {
            "node": lab.column("node"),
            "label": lab.column("label"),
            "prio": pa.array([priority[s] for s in block.column("source").take(rows).to_pylist()], pa.int32()),
            "id": block.column("id").take(rows),
            "origin": block.column("origin").take(rows),
        }
    )
    return exchange.split(members, exchange.spread(members.column("label").to_numpy(), parts), parts)


def _choose_task(starts: np.ndarray, *tables: pa.Table) -> list[pa.Table]:
    """Per component: the representative (earliest source, smallest id, then origin) and the size."""
    df = pl.from_arrow(exchange.concat(tables)).sort("label", "prio", "id", "origin")
    out = (
        df.with_columns(
            pl.first("node").over("label").alias("kept_node"),
            pl.first("id").over("label").alias("kept_id"),
            pl.len().over("label").cast(pl.Int32).alias("size"),
        )
        .select("node", "kept_node", "kept_id", "size")
        .to_arrow()
    )
    return exchange.split(out, _owner(out.column("node").to_numpy(), starts), len(starts) - 1)


def _filter_task(start: int, block: pa.Table, *tables: pa.Table) -> list[pa.Table]:
    """The block with its duplicates marked and its representatives' cluster sizes."""
    chosen = pl.from_arrow(exchange.concat(tables)).with_columns((pl.col("node") - start).alias("_row"))
    df = pl.from_arrow(block).with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    df = df.join(chosen, on="_row", how="left", maintain_order="left")
    is_dup = pl.col("kept_node").is_not_null() & (pl.col("kept_node") != pl.col("node"))
    df = df.with_columns(
        pl.when(is_dup).then(pl.lit("near_duplicate")).alias("_reason"),
        pl.when(is_dup)
        .then(pl.format("near duplicate of {} (cluster of {})", pl.col("kept_id"), pl.col("size")))
        .alias("_why"),
        pl.when(is_dup).then(pl.col("near_dup_count")).otherwise(pl.col("size").fill_null(1)).alias("near_dup_count"),
    )
    out = df.to_arrow()
    marked = Stage.drop(
        out.select(block.column_names).cast(block.schema),
        out.column("_reason").cast(pa.string()),
        out.column("_why").cast(pa.string()),
    )
    return [to_work_schema(marked)]


class NearDedup(DatasetStage[NearDedupConfig]):
    config_model = NearDedupConfig
    writes = ("near_dup_count",)

    @classmethod
    def columns_read(cls, config: NearDedupConfig) -> tuple[str, ...]:
        """The first compared field's language (it salts the buckets), unless languages are mixed."""
        return () if config.cross_language else (f"{config.fields[0]}_lang",)

    def plan(self, blocks_in: list[Any], rows: int, rounds: exchange.Rounds) -> list[Any]:
        config = self.config
        blocks = len(blocks_in)
        if not blocks:
            return []
        bands, band_rows = config.banding()
        signed = rounds.submit(
            _signature_task, [(b, config) for b in blocks_in], 3, keep=True, description="near_dedup: signatures"
        )
        sigs, metas = exchange.column(signed, 0), exchange.column(signed, 1)
        starts = np.concatenate([[0], np.cumsum([out[2] for out in signed])]).astype(np.int64)
        if starts[-1] >= 1 << 32:
            raise ValueError(f"{starts[-1]:,} rows in one near_dedup step: rows are numbered in 32 bits")
        cc_parts = max(2 * rounds.parallelism, math.ceil(rows / BAND_ENTRIES_PER_PARTITION))
        edges: list[list[Any]] = []
        for first in range(0, bands, BANDS_PER_ROUND):
            group = range(first, min(bands, first + BANDS_PER_ROUND))
            parts = max(2 * rounds.parallelism, math.ceil(rows * len(group) / BAND_ENTRIES_PER_PARTITION))
            entries = rounds.submit(
                _band_task,
                [(int(starts[i]), sigs[i], metas[i], group, band_rows, parts, config.verify) for i in range(blocks)],
                parts,
                description=f"near_dedup: bands {group.start + 1}-{group.stop} of {bands}",
            )
            edges += rounds.submit(
                _bucket_task,
                [(config, cc_parts, starts, sigs, metas, *exchange.column(entries, j)) for j in range(parts)],
                cc_parts,
                description="near_dedup: candidate pairs",
            )
        rounds.discard(sigs + metas)  # read by no later round: scratch holds them or the output, not both
        labels, _ = connected_components(rounds, edges, cc_parts)
        owned = rounds.submit(_by_owner_task, [(starts, lab) for lab in labels], blocks)
        priority = self.config.ranks(self.context)
        members = rounds.submit(
            _members_task,
            [(cc_parts, priority, int(starts[i]), blocks_in[i], *exchange.column(owned, i)) for i in range(blocks)],
            cc_parts,
        )
        chosen = rounds.submit(_choose_task, [(starts, *exchange.column(members, j)) for j in range(cc_parts)], blocks)
        done = rounds.submit(
            _filter_task,
            [(int(starts[i]), blocks_in[i], *exchange.column(chosen, i)) for i in range(blocks)],
            1,
            description="near_dedup: clusters",
        )
        return [d[0] for d in done]
