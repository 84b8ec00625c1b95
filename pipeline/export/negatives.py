"""How many negatives each row of an export gets, and what happens to rows that have fewer.

Trainers read a fixed number of negatives: ML-Embed's release 24 per row (1 for classification, and
every one filled), sentence-transformers one column per negative (no empty cell), FlagEmbedding at
least one. A row's own negatives (hardest first) come first; a row with fewer follows the policy:

- `pool` (default): the rest are passages of the same dataset, drawn for the row by a hash of its id
  (the same draw in every export), never its own positive or negatives; a dataset with too few
  passages repeats the row's list; a row left with none is dropped (`no_negatives`).
- `repeat`: the row's own negatives again, hardest first; a row with none is dropped (`no_negatives`).
- `drop`: the row is dropped (`too_few_negatives`).

The pool is a bottom-k sample of the dataset's positives (the ids with the smallest hashes): the
same whatever order the rows are read in, and bounded in memory however large the dataset.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

Policy = Literal["pool", "repeat", "drop"]
POLICIES: tuple[str, ...] = Policy.__args__  # type: ignore[attr-defined]
POOL_SIZE = 4096  # passages a dataset's pool keeps: many times the 24 a row may need


def _hash(text: str, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(text.encode(), seed)


class Pool:
    """A dataset's passages to fill short rows from (`add` every positive id, then `draw`)."""

    def __init__(self, size: int = POOL_SIZE):
        self.size = size
        self._heap: list[tuple[int, str]] = []  # (-hash, id): the largest of the kept hashes on top
        self._seen: set[str] = set()

    def add(self, ids: list[str | None]) -> None:
        for doc in ids:
            if doc is None or doc in self._seen:
                continue
            key = -_hash(doc)
            if len(self._heap) < self.size:
                heapq.heappush(self._heap, (key, doc))
                self._seen.add(doc)
            elif key > self._heap[0][0]:
                self._seen.discard(heapq.heappushpop(self._heap, (key, doc))[1])
                self._seen.add(doc)

    def ids(self) -> list[str]:
        return [doc for _, doc in sorted(self._heap, reverse=True)]


@dataclass
class Filled:
    """A batch's negatives after the policy: `ids` (k per kept row), the reason each dropped row went."""

    ids: pa.ListArray
    dropped: pa.Array  # reason per row, null where the row is kept
    filled_rows: int = 0  # rows that got negatives other than their own first k
    from_pool: int = 0  # negatives drawn from the pool
    repeated: int = 0  # negatives that repeat one of the row's


def fill(
    row_ids: pa.Array,
    positives: pa.Array,
    own: pa.Array,
    k: int,
    policy: Policy,
    pool: list[str],
    keep_more: bool = False,
) -> Filled:
    """Each row's negatives as k ids (or all of its own when `keep_more` and it has more), by `policy`."""
    own_lists = own.to_pylist()
    lengths = np.array([len(x) if x else 0 for x in own_lists])
    if not (lengths < k).any():  # the common case after mining: a slice
        ids = own if keep_more else pc.list_slice(own, 0, k)
        return Filled(ids.cast(pa.list_(pa.string())), pa.nulls(len(own), pa.string()))
    out = [(x if keep_more else x[:k]) if x else [] for x in own_lists]
    dropped: list[str | None] = [None] * len(own_lists)
    filled_rows = from_pool = repeated = 0
    row_list, positive_list = row_ids.to_pylist(), positives.to_pylist()
    for r in np.flatnonzero(lengths < k):
        mine = out[r]
        if policy == "drop":
            dropped[r] = "too_few_negatives"
            continue
        if policy == "pool" and pool:
            drawn = _draw(pool, k - len(mine), {positive_list[r], *mine}, row_list[r])
            from_pool += len(drawn)
            mine = mine + drawn
        if not mine:
            dropped[r] = "no_negatives"
            continue
        have = len(mine)
        while len(mine) < k:
            mine.append(mine[(len(mine) - have) % have])
            repeated += 1
        filled_rows += 1
        out[r] = mine
    ids = pa.array([None if d else x for x, d in zip(out, dropped)], pa.list_(pa.string()))
    return Filled(ids, pa.array(dropped, pa.string()), filled_rows, from_pool, repeated)


def _draw(pool: list[str], n: int, exclude: set[str | None], row_id: str) -> list[str]:
    """Up to n distinct pool passages not in `exclude`, starting where the row's id hashes to."""
    start = _hash(row_id, 1) % len(pool)
    drawn: list[str] = []
    for step in range(len(pool)):
        doc = pool[(start + step) % len(pool)]
        if doc not in exclude:
            drawn.append(doc)
            if len(drawn) == n:
                break
    return drawn
