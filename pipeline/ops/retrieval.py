"""First-stage retrieval over a pool of passages, for hard-negative mining: BM25 or dense vectors.

Both answer the same question: for each query, the `depth` best pool entries (best first) with
their scores, and the score of a given pool entry (the query's positive), so the miner can compare
candidates with the positive whatever the retriever.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa

from pipeline.ops.minhash import tokens

QUERY_BLOCK = 256  # queries scored together against a pool shard: a (256 x shard) float32 matrix


class Search(Protocol):
    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """For query numbers `queries`: candidate pool indices (best first), their scores, and the
        score of each query's positive (pool index in `positives`)."""
        ...


def top(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the `depth` best scores, best first, ties by index (as a full stable sort gives),
    without sorting the whole pool."""
    depth = min(depth, len(scores))
    kth = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:depth]


class Bm25Search:
    """BM25 (bm25s) over script-aware tokens: words for spaced scripts, characters for Han, kana,
    Thai and the other unspaced scripts (`pipeline.ops.minhash.tokens`; bm25s's own tokenizer splits on
    spaces only). Scores every pool entry per query, so the positive's score is exact."""

    def __init__(self, pool: list[str], queries: list[str]):
        import bm25s

        self.index = bm25s.BM25()
        self.index.index(tokens(pa.array(pool), "auto")[0].to_pylist(), show_progress=False)
        self.query_tokens = tokens(pa.array(queries), "auto")[0].to_pylist()

    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        ranked, scored, pos = [], [], np.zeros(len(queries), np.float64)
        for k, q in enumerate(queries):
            if not self.query_tokens[q]:  # nothing to match on: no candidates
                ranked.append(np.zeros(0, np.int64))
                scored.append(np.zeros(0))
                continue
            scores = self.index.get_scores(self.query_tokens[q])
            best = top(scores, depth)
            ranked.append(best)
            scored.append(scores[best])
            pos[k] = scores[positives[k]]
        return ranked, scored, pos


class DenseSearch:
    """Exact inner-product search over unit vectors (cosine), the pool cut into shards of
    `shard_rows` so only one (queries x shard) score block exists at a time; the best `depth` of each
    shard are merged, which gives exactly the global best `depth`. Exact search beats an approximate
    index on recall, and at the pool sizes one source and language reaches (ML-Embed caps a source
    at 80,000 rows) it is fast enough; the shard loop is where an ANN index would plug in."""

    def __init__(self, pool_vectors: np.ndarray, query_vectors: np.ndarray, shard_rows: int = 100_000):
        self.pool = pool_vectors
        self.queries = query_vectors
        self.shard_rows = shard_rows

    def __call__(self, queries: list[int], positives: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        ranked, scored = [], []
        qv = self.queries[queries]
        for a in range(0, len(queries), QUERY_BLOCK):
            block = qv[a:a + QUERY_BLOCK]
            idx_parts, score_parts = [], []
            for s in range(0, len(self.pool), self.shard_rows):
                scores = block @ self.pool[s:s + self.shard_rows].T
                d = min(depth, scores.shape[1])
                idx = np.argpartition(-scores, d - 1, axis=1)[:, :d] if d < scores.shape[1] else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
                idx_parts.append(idx + s)
                score_parts.append(np.take_along_axis(scores, idx, axis=1))
            idx, scores = np.concatenate(idx_parts, axis=1), np.concatenate(score_parts, axis=1)
            for i, sc in zip(idx, scores):
                order = np.lexsort((i, -sc))[:depth]  # best first, ties by pool index
                ranked.append(i[order])
                scored.append(sc[order].astype(np.float64))
        pos = np.einsum("ij,ij->i", qv, self.pool[positives]).astype(np.float64)
        return ranked, scored, pos
