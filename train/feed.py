"""What the training step is fed, prepared ahead of it: each step's global batch drawn from the shards
(`train.data.Batches`), cut to this rank's share and into micro-batches, tokenized into length-sorted
pieces (`train.pieces`) and pinned, in a background thread a few steps ahead of the GPU.

A thread, not DataLoader worker processes: the work is Arrow reads and Rust tokenization, both of
which release the GIL, and a thread needs no pickling, no fork after CUDA, and keeps the one
sequential, seeded batch order that makes a resumed run replay the same batches.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, TypeVar

import torch

from train.data import Batch, Batches, rank_slice
from train.pieces import Side, Tokenize

T = TypeVar("T")


@dataclass
class Micro:
    """One micro-batch, tokenized: its texts' pieces and who is whose (on the host, pinned on a GPU)."""

    batch: Batch
    queries: Side
    positives: Side
    negatives: Side
    owner: torch.Tensor  # per negative: the index of its query
    keys: torch.Tensor  # per query: the first row with the same positive

    @property
    def tokens(self) -> int:
        return self.queries.tokens + self.positives.tokens + self.negatives.tokens

    def pin(self) -> Micro:
        return Micro(
            self.batch,
            self.queries.pin(),
            self.positives.pin(),
            self.negatives.pin(),
            self.owner.pin_memory(),
            self.keys.pin_memory(),
        )


def micro_batches(
    batches: Batches, tokenize: Tokenize, start: int, rank: int, world: int, accum: int, max_rows: int | None, pin: bool
) -> Iterator[list[Micro]]:
    """Per step from `start` on: this rank's micro-batches, tokenized. The steps before `start` are
    drawn and dropped (reading, not tokenizing), so a resumed run continues the same order."""
    data = iter(batches)
    for _ in range(start):
        next(data)
    for batch in data:
        mine = rank_slice(batch, rank, world)
        per = len(mine.queries) // accum
        step = []
        for m in range(accum):
            b = mine.slice(m * per, (m + 1) * per)
            micro = Micro(
                b,
                tokenize(b.queries, b.prompts, max_rows),
                tokenize(b.positives, None, max_rows),
                tokenize(b.negatives, None, max_rows),
                torch.tensor(b.owner, dtype=torch.long),
                torch.tensor(b.keys, dtype=torch.long),
            )
            step.append(micro.pin() if pin else micro)
        yield step


_END = object()


class Prefetch(Iterator[T]):
    """Iterates `items` in a background thread, at most `depth` items ahead; an error there is raised
    here, at the item where it happened. `close()` stops the thread (an endless `items` included)."""

    def __init__(self, items: Iterator[T], depth: int):
        self.items, self.queue, self.stop = items, queue.Queue(maxsize=depth), threading.Event()
        self.thread = threading.Thread(target=self._work, name="train-feed", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            for item in self.items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> T:
        item = self.queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def feed(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items` prefetched `depth` ahead in a thread, or as they are with depth 0."""
    return Prefetch(items, depth) if depth else items
