"""Batches straight from the pipeline's Parquet shards: one source per batch, streamed, shuffled in a
bounded buffer, deterministic from a seed, split across ranks, resumable at any step.

Every rank computes the same sequence of global batches (same seed) and keeps its own slice, so
ranks never overlap and a run on N ranks sees exactly the batches of a run on one. Resuming at
step k replays the first k batches' choices (reading, not training), so the order is the same as
if the run had never stopped.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from train.config import DataConfig

COLUMNS = ["source", "task", "instruction", "query", "positive", "negatives"]


@dataclass
class Batch:
    source: str
    task: str
    queries: list[str]
    positives: list[str]
    negatives: list[str] = field(default_factory=list)  # all hard negatives of the batch, flat
    owner: list[int] = field(default_factory=list)  # per negative: the index of its query
    in_batch: bool = True

    def slice(self, start: int, stop: int) -> Batch:
        """Queries [start, stop) with their own negatives (owners renumbered from 0)."""
        keep = [i for i, o in enumerate(self.owner) if start <= o < stop]
        return Batch(self.source, self.task, self.queries[start:stop], self.positives[start:stop],
                     [self.negatives[i] for i in keep], [self.owner[i] - start for i in keep], self.in_batch)


def shard_files(paths: list[str]) -> list[str]:
    """Parquet files of run folders (their `shards/`), folders of Parquet, files or globs; sorted."""
    files: set[str] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            root = path / "shards" if (path / "shards").is_dir() else path
            files |= {str(f) for f in root.rglob("*.parquet")}
        else:
            files |= set(glob.glob(p, recursive=True))
    if not files:
        raise FileNotFoundError(f"no Parquet shards under {paths}")
    return sorted(files)


class SourceStream:
    """Endless rows of one source: files in a seeded order each epoch, rows through a shuffle buffer."""

    def __init__(self, name: str, files: list[str], buffer: int, rng: np.random.Generator):
        self.name, self.files, self.size, self.rng = name, files, buffer, rng
        self.buffer: list[dict] = []
        self._rows = self._read()

    def _read(self) -> Iterator[dict]:
        while True:
            for i in self.rng.permutation(len(self.files)):
                parquet = pq.ParquetFile(self.files[i])
                for rg in range(parquet.num_row_groups):
                    table = parquet.read_row_group(rg, columns=COLUMNS)
                    table = table.filter(pc.and_(pc.equal(table["source"], self.name), pc.is_valid(table["positive"])))
                    yield from table.to_pylist()

    def next(self) -> dict:
        while len(self.buffer) < self.size:  # a source smaller than the buffer cycles its epochs in it
            self.buffer.append(next(self._rows))
        i = int(self.rng.integers(len(self.buffer)))
        row = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        return row


class Batches:
    """Global batches of `batch_size` rows; `local(step)` gives this rank's share of each."""

    def __init__(self, config: DataConfig, batch_size: int, seed: int = 0):
        self.config, self.batch_size = config, batch_size
        files = shard_files(config.shards)
        counts: dict[str, int] = {}
        by_source: dict[str, list[str]] = {}
        for f in files:
            table = pq.read_table(f, columns=["source", "positive"])
            table = table.filter(pc.is_valid(table["positive"]))
            for source, n in zip(*pc.value_counts(table["source"]).flatten()):
                counts[source.as_py()] = counts.get(source.as_py(), 0) + n.as_py()
                by_source.setdefault(source.as_py(), []).append(f)
        self.sizes = dict(sorted(counts.items()))
        if not self.sizes:
            raise ValueError(f"no rows with a positive in {files[:3]}...")
        weights = np.array([n ** (config.alpha if config.sampling == "temperature" else 1.0) for n in self.sizes.values()], dtype=float)
        self.probabilities = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.streams = {s: SourceStream(s, by_source[s], config.shuffle_buffer, np.random.default_rng([seed, i]))
                        for i, s in enumerate(self.sizes)}

    def _query(self, row: dict) -> str:
        if row["instruction"]:
            return self.config.template.format(instruction=row["instruction"], query=row["query"])
        return row["query"]

    def __iter__(self) -> Iterator[Batch]:
        names = list(self.sizes)
        while True:
            source = names[int(self.rng.choice(len(names), p=self.probabilities))]
            rows = [self.streams[source].next() for _ in range(self.batch_size)]
            task = rows[0]["task"]
            batch = Batch(source, task, [self._query(r) for r in rows], [r["positive"] for r in rows], in_batch=task in self.config.in_batch)
            k = self.config.negatives.get(task, 0)
            for i, r in enumerate(rows):
                own = r["negatives"] or []
                if k and own:
                    for j in sorted(self.rng.choice(len(own), size=min(k, len(own)), replace=False)):
                        batch.negatives.append(own[j])
                        batch.owner.append(i)
            yield batch


def rank_slice(batch: Batch, rank: int, world: int) -> Batch:
    """This rank's contiguous share of a global batch (batch size divisible by the world size)."""
    per = len(batch.queries) // world
    return batch.slice(rank * per, (rank + 1) * per)
