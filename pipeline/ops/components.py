"""Connected components of a graph too large for one process: alternating large-star / small-star.

The algorithm of Kiveris et al. (2014, "Connected Components in MapReduce and Beyond") rewrites the
edge set in rounds until every component is a star around its smallest node; each step only needs
the edges of one node at a time, so edges are hash-partitioned by node and every partition is
handled by its own task (`pipeline/ops/exchange.py`: the partitions pass through scratch files). It
converges in O(log^2 n) rounds (a few in practice); no process ever holds more than its partition of
the edges.

- large-star: for node u with neighbours N(u), link every larger neighbour to m = min(N(u) + u).
- small-star: for node u with smaller neighbours S(u), link u and all of S(u) to m = min(S(u) + u).

Edges are int64 pairs (u, v). Nodes are numbered by the caller; the result labels each node of
every component of two or more nodes with the component's smallest node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.ops import exchange

EDGES = pa.schema([pa.field("u", pa.int64()), pa.field("v", pa.int64())])
LABELS = pa.schema([pa.field("node", pa.int64()), pa.field("label", pa.int64())])


def _fingerprint(edges: pl.DataFrame) -> tuple[int, int]:
    """(count, sum of a 64-bit hash of each edge): equal across rounds means nothing changed."""
    if not edges.height:
        return 0, 0
    return edges.height, int(edges.select(pl.struct("u", "v").hash(seed=7).sum()).item())


def large_star(edges: pl.DataFrame) -> pl.DataFrame:
    """`edges` hold both directions of every edge of this partition's nodes (u). Returns the new
    edges as (v, m) with v > m."""
    low = edges.group_by("u").agg(pl.min_horizontal(pl.col("v").min(), pl.col("u").first()).alias("m"))
    return (
        edges.join(low, on="u").filter(pl.col("v") > pl.col("u")).select(pl.col("v").alias("u"), pl.col("m").alias("v"))
    )


def small_star(edges: pl.DataFrame) -> pl.DataFrame:
    """`edges` are (u, v) with v < u, for this partition's nodes u. Returns the new undirected edges."""
    low = edges.group_by("u").agg(pl.col("v").min().alias("m"))
    linked = edges.join(low, on="u")
    out = pl.concat(
        [
            linked.filter(pl.col("v") != pl.col("m")).select(pl.col("v").alias("u"), pl.col("m").alias("v")),
            low.select("u", pl.col("m").alias("v")),
        ]
    )
    return out.unique()


def _frame(tables: tuple[pa.Table, ...]) -> pl.DataFrame:
    return pl.from_arrow(exchange.concat(tables).cast(EDGES)).unique()  # type: ignore[return-value]


def _route(edges: pl.DataFrame, by: str, parts: int) -> list[pa.Table]:
    table = edges.select("u", "v").to_arrow().cast(EDGES)
    return exchange.split(table, exchange.spread(table.column(by).to_numpy(), parts), parts)


def _both_ways(edges: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([edges.select("u", "v"), edges.select(pl.col("v").alias("u"), pl.col("u").alias("v"))])


def _labels(edges: pl.DataFrame) -> pa.Table:
    """At convergence every edge joins a node to its component's smallest node: (node, label)."""
    low = edges.group_by("u").agg(pl.col("v").min().alias("m"))
    return low.select(pl.col("u").alias("node"), pl.min_horizontal("u", "m").alias("label")).to_arrow().cast(LABELS)


def _large_task(parts: int, *tables: pa.Table) -> list[Any]:
    """[fingerprint of the edges, their labels were they converged, *the large-star edges by partition]."""
    edges = _frame(tables)
    return [_fingerprint(edges), _labels(edges), *_route(large_star(edges), "u", parts)]


def _small_task(parts: int, *tables: pa.Table) -> list[pa.Table]:
    return _route(_both_ways(small_star(_frame(tables))), "u", parts)


def route_undirected(edges: pa.Table, parts: int) -> list[pa.Table]:
    """Edges (u, v) as the first round expects them: both directions, partitioned by u."""
    return _route(_both_ways(pl.from_arrow(edges.cast(EDGES))), "u", parts)  # type: ignore[arg-type]


def connected_components(
    rounds: exchange.Rounds, edge_parts: list[list[Any]], parts: int, max_rounds: int = 100
) -> tuple[list[Any], int]:
    """Components of the graph whose edges arrive as `edge_parts` (per producer, `parts` tables made
    by `route_undirected`, or refs to them). Returns one (node, label) table (or ref) per partition,
    covering every node that has an edge, and the number of rounds. Each round reads the edges the
    one before wrote (and deletes them): scratch holds two rounds' edges at most."""
    previous = None
    for round_ in range(1, max_rounds + 1):
        large = rounds.submit(
            _large_task,
            [(parts, *exchange.column(edge_parts, j)) for j in range(parts)],
            parts + 2,
            description=f"components: round {round_}",
        )
        fingerprint = tuple(np.sum([out[0] for out in large], axis=0).tolist()) if large else (0, 0)
        if fingerprint == previous:  # the edges did not change: they are stars around each component's smallest node
            rounds.discard([ref for out in large for ref in out[2:]])
            return [out[1] for out in large], round_
        previous = fingerprint
        rounds.discard([out[1] for out in large])
        routed = [out[2:] for out in large]
        edge_parts = rounds.submit(_small_task, [(parts, *exchange.column(routed, j)) for j in range(parts)], parts)
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
