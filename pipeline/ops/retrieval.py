"""First-stage retrieval over a pool of passages, for hard-negative mining: BM25, exact dense search,
or an approximate index (faiss) for large pools.

All answer the same questions: for each query, the `depth` best pool entries (best first) with their
scores, and the score of a given entry (the query's positive), so the miner can compare candidates
with the positive whatever the retriever; and, for a pool entry, its nearest other entries (the
positive's neighbours, which likely share its content and answer).

A pool is laid out as `candidates` entries that may be returned, followed by entries that are only
scored: positives of the queries that lie outside the pool (a named corpus), so positive-aware
filters still know the positive's score.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import cached_property
from typing import Protocol

import numpy as np
import pyarrow as pa

from pipeline.ops.minhash import tokens

QUERY_BLOCK = 256  # queries scored together against a pool shard: a (256 x shard) float32 matrix
NEIGHBOUR_TERMS = 64  # BM25: a passage's weightiest tokens, the query that finds its neighbours
Found = tuple[list[np.ndarray], list[np.ndarray], np.ndarray]


class Search(Protocol):
    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> Found:
        """For query numbers `queries`: candidate pool indices (best first), their scores, and the
        score of each query's positive (pool index in `positives`)."""
        ...

    def neighbours(self, entries: np.ndarray, depth: int) -> list[np.ndarray]:
        """For each pool entry, the `depth` candidate entries most similar to it (itself excluded)."""
        ...


def top(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the `depth` best scores, best first, ties by index (as a full stable sort gives),
    without sorting the whole pool."""
    depth = min(depth, len(scores))
    if depth <= 0:
        return np.zeros(0, np.int64)
    kth = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:depth]


class Bm25Search:
    """BM25 (bm25s) over script-aware tokens: words for spaced scripts, characters for Han, kana,
    Thai and the other unspaced scripts (`pipeline.ops.minhash.tokens`; bm25s's own tokenizer splits on
    spaces only). Scores every pool entry per query, so the positive's score is exact. Entries past
    `candidates` are indexed (they weigh in the term statistics) but never returned."""

    def __init__(self, pool: list[str], queries: list[str], candidates: int | None = None):
        import bm25s

        self.candidates = len(pool) if candidates is None else candidates
        self.pool_tokens = tokens(pa.array(pool, pa.string()), "auto")[0].to_pylist()
        self.index = bm25s.BM25()
        self.index.index(self.pool_tokens, show_progress=False)
        self.query_tokens = tokens(pa.array(queries, pa.string()), "auto")[0].to_pylist()

    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> Found:
        ranked, scored, pos = [], [], np.zeros(len(queries), np.float64)
        for k, q in enumerate(queries):
            if not self.query_tokens[q]:  # nothing to match on: no candidates
                ranked.append(np.zeros(0, np.int64))
                scored.append(np.zeros(0))
                continue
            scores = self.index.get_scores(self.query_tokens[q])
            best = top(scores[: self.candidates], depth)
            ranked.append(best)
            scored.append(scores[best])
            pos[k] = scores[positives[k]]
        return ranked, scored, pos

    @cached_property
    def document_frequency(self) -> Counter[str]:
        """Pool passages per token (for the neighbours' tf x idf); only neighbour searches need it."""
        return Counter(t for toks in self.pool_tokens for t in set(toks))

    def neighbours(self, entries: np.ndarray, depth: int) -> list[np.ndarray]:
        """Scored with the entry's `NEIGHBOUR_TERMS` most weighty tokens (tf x idf, among those other
        passages share) as the query, as Lucene's MoreLikeThis does: a passage's whole text as a
        query would cost a posting list per common word."""
        df, n, out = self.document_frequency, len(self.pool_tokens), []
        for e in entries.tolist():
            tf = Counter(self.pool_tokens[e])
            weight = {t: c * math.log(n / df[t]) for t, c in tf.items() if df[t] > 1}
            terms = sorted(weight, key=lambda t: (-weight[t], t))[:NEIGHBOUR_TERMS]
            if not terms:
                out.append(np.zeros(0, np.int64))
                continue
            scores = self.index.get_scores(terms)[: self.candidates]
            if e < self.candidates:
                scores[e] = -np.inf
            best = top(scores, depth)
            out.append(best[scores[best] > 0])  # a passage sharing no term with it is no neighbour
        return out


class _VectorSearch:
    """What exact and approximate search over unit vectors share: the positive's score is its inner
    product with the query, and a pool entry's neighbours are found with its own vector."""

    pool: np.ndarray
    queries: np.ndarray

    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> Found:
        qv = self.queries[queries]
        ranked, scored = self._search(qv, depth)
        return ranked, scored, np.einsum("ij,ij->i", qv, self.pool[positives]).astype(np.float64)

    def neighbours(self, entries: np.ndarray, depth: int) -> list[np.ndarray]:
        ranked, _ = self._search(self.pool[entries], depth + 1)
        return [r[r != e][:depth] for r, e in zip(ranked, entries.tolist())]

    def _search(self, qv: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        raise NotImplementedError


class DenseSearch(_VectorSearch):
    """Exact inner-product search over unit vectors (cosine), the pool cut into shards of
    `shard_rows` so only one (queries x shard) score block exists at a time; the best `depth` of each
    shard are merged, which gives exactly the global best `depth`. Exact search costs nothing in
    recall and is fast at the pool sizes one source and language reaches (ML-Embed caps a source at
    80,000 rows); above `ann_min_pool` the miner uses `AnnSearch` instead."""

    def __init__(
        self,
        pool_vectors: np.ndarray,
        query_vectors: np.ndarray,
        shard_rows: int = 100_000,
        candidates: int | None = None,
    ):
        self.pool = pool_vectors
        self.queries = query_vectors
        self.shard_rows = shard_rows
        self.candidates = len(pool_vectors) if candidates is None else candidates

    def _search(self, qv: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        ranked, scored = [], []
        pool = self.pool[: self.candidates]
        for a in range(0, len(qv), QUERY_BLOCK):
            block = qv[a : a + QUERY_BLOCK]
            idx_parts, score_parts = [], []
            for s in range(0, len(pool), self.shard_rows):
                scores = block @ pool[s : s + self.shard_rows].T
                d = min(depth, scores.shape[1])
                idx = (
                    np.argpartition(-scores, d - 1, axis=1)[:, :d]
                    if d < scores.shape[1]
                    else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
                )
                idx_parts.append(idx + s)
                score_parts.append(np.take_along_axis(scores, idx, axis=1))
            idx, scores = np.concatenate(idx_parts, axis=1), np.concatenate(score_parts, axis=1)
            for i, sc in zip(idx, scores):
                order = np.lexsort((i, -sc))[:depth]  # best first, ties by pool index
                ranked.append(i[order])
                scored.append(sc[order].astype(np.float64))
        return ranked, scored


class AnnSearch(_VectorSearch):
    """Approximate inner-product search (faiss IVF-Flat) for pools too large to scan per query: the
    candidates are clustered by k-means into about 4 sqrt(n) lists, and each query scans the `nprobe`
    lists whose centroids are nearest. Scores of the entries found are exact inner products, and the
    positive's score is computed directly, so only recall is approximate (measured against exact
    search by `bench/mining_ann.py`). k-means is seeded and runs before any query, so the same pool
    gives the same index and the same results in every run."""

    def __init__(
        self,
        pool_vectors: np.ndarray,
        query_vectors: np.ndarray,
        candidates: int | None = None,
        nprobe: int = 64,
        seed: int = 0,
    ):
        import faiss

        self.pool = np.ascontiguousarray(pool_vectors, np.float32)
        self.queries = np.ascontiguousarray(query_vectors, np.float32)
        self.candidates = len(pool_vectors) if candidates is None else candidates
        dim, lists = self.pool.shape[1], max(1, min(int(4 * math.sqrt(self.candidates)), self.candidates // 39))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed
        # k-means on at most 64 points per list, 10 rounds: the lists only route the search (the scores
        # are exact), and faiss's defaults (256 points, 25 rounds) took minutes on 190k vectors, 1 core.
        self.index.cp.max_points_per_centroid, self.index.cp.niter = 64, 10
        self.index.train(self.pool[: self.candidates])
        self.index.add(self.pool[: self.candidates])
        self.index.nprobe = min(nprobe, lists)

    def _search(self, qv: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        scores, idx = self.index.search(np.ascontiguousarray(qv, np.float32), min(depth, self.candidates))
        ranked, scored = [], []
        for i, sc in zip(idx, scores):
            found = i >= 0  # fewer than `depth` in the probed lists: faiss pads with -1
            i, sc = i[found], sc[found]
            order = np.lexsort((i, -sc))  # best first, ties by pool index (as exact search)
            ranked.append(i[order].astype(np.int64))
            scored.append(sc[order].astype(np.float64))
        return ranked, scored
