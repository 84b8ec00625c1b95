"""Batches straight from the pipeline's Parquet shards: one source per batch, streamed, shuffled in a
bounded buffer, deterministic from a seed, split across ranks, resumable at any step.

Hard negatives are ids (`negative_ids`); the chosen ones of a batch are resolved in one lookup in
the run's passage table (`corpus/`, see `core/passages.py`). Shards written before the passage
table, with negative texts inline, are read as they are.

Every rank computes the same sequence of global batches (same seed) and keeps its own slice, so
ranks never overlap and a run on N ranks sees exactly the batches of a run on one. Resuming at
step k replays the first k batches' choices (reading, not training), so the order is the same as
if the run had never stopped.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.passages import NEGATIVE_IDS, NEGATIVES, PassageTable, corpus_files
from train.config import DataConfig

COLUMNS = ["source", "task", "instruction", "query", "positive"]  # and the negatives, by id (or inline)


@dataclass
class Batch:
    source: str
    task: str
    queries: list[str]
    positives: list[str]
    negatives: list[str] = field(default_factory=list)  # all hard negatives of the batch, flat
    owner: list[int] = field(default_factory=list)  # per negative: the index of its query
    in_batch: bool = True
    # per query: the global-batch index of the first row with the same positive text. XQuAD-style
    # data has several questions per passage; such rows must not be each other's negatives.
    keys: list[int] = field(default_factory=list)
    # per query: the text before the query itself ("" without an instruction)
    prompts: list[str] = field(default_factory=list)

    def slice(self, start: int, stop: int) -> Batch:
        """Queries [start, stop) with their own negatives (owners renumbered from 0)."""
        keep = [i for i, o in enumerate(self.owner) if start <= o < stop]
        return Batch(
            self.source,
            self.task,
            self.queries[start:stop],
            self.positives[start:stop],
            [self.negatives[i] for i in keep],
            [self.owner[i] - start for i in keep],
            self.in_batch,
            self.keys[start:stop],
            self.prompts[start:stop],
        )


def passage_table(files: list[str]) -> PassageTable:
    """The passage tables of the runs the shard files belong to (`RUN/corpus/` beside `RUN/shards/`)."""
    runs = {p for f in files for p in Path(f).parents if p.name == "shards"}
    return PassageTable(f for run in sorted(runs) for f in corpus_files(run.parent))


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


Group = tuple[str, ...]  # the values of `batch_by` that every row of a batch shares ("*": small groups pooled)


def group_keys(table: pa.Table, columns: list[str]) -> pa.Array:
    """One string per row joining its values of `columns` (nulls as ""); string or large_string columns
    (polars writes the latter)."""
    return pc.binary_join_element_wise(*[pc.fill_null(table[c].cast(pa.string()), "") for c in columns], "\x1f")


class GroupStream:
    """Endless rows of one group (or of pooled small groups): its files in a seeded order each epoch,
    rows through a shuffle buffer."""

    def __init__(
        self, columns: list[str], members: list[Group], files: list[str], buffer: int, rng: np.random.Generator
    ):
        self.columns, self.members = columns, pa.array(["\x1f".join(g) for g in members])
        self.files, self.size, self.rng = files, buffer, rng  # size: at most one epoch, or a batch would repeat rows
        self.buffer: list[dict] = []
        self._rows = self._read()

    def _read(self) -> Iterator[dict]:
        while True:
            for i in self.rng.permutation(len(self.files)):
                parquet = pq.ParquetFile(self.files[i])
                # negatives by id, or (shards written before the passage table) as inline texts
                negatives = NEGATIVE_IDS if NEGATIVE_IDS in parquet.schema_arrow.names else NEGATIVES
                columns = [*COLUMNS, negatives]
                for rg in range(parquet.num_row_groups):
                    table = parquet.read_row_group(rg, columns=list(dict.fromkeys(columns + self.columns)))
                    keep = pc.and_(
                        pc.is_valid(table["positive"]), pc.is_in(group_keys(table, self.columns), self.members)
                    )
                    at = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                    for n, row in zip(at.tolist(), table.filter(keep).select(columns).to_pylist()):
                        row["where"] = f"{self.files[i]}: row group {rg}, row {n}"  # named if a passage is missing
                        yield row

    def next(self) -> dict:
        while len(self.buffer) < self.size:
            self.buffer.append(next(self._rows))
        i = int(self.rng.integers(len(self.buffer)))
        row = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        return row


def count_groups(files: list[str], columns: list[str]) -> tuple[dict[Group, int], dict[Group, list[str]]]:
    """Rows with a positive per group (the values of `columns`), and the files that hold each group."""
    counts: dict[Group, int] = {}
    where: dict[Group, list[str]] = {}
    for f in files:
        table = pq.read_table(f, columns=list(dict.fromkeys(["positive", *columns])))
        table = table.filter(pc.is_valid(table["positive"]))
        for key, n in zip(*pc.value_counts(group_keys(table, columns)).flatten()):
            group, n = tuple(key.as_py().split("\x1f")), n.as_py()
            counts[group] = counts.get(group, 0) + n
            where.setdefault(group, []).append(f)
    return counts, where


class Batches:
    """Global batches of `batch_size` rows, all of one group (a source, or a source and language:
    `batch_by`); every rank iterates the same batches and keeps its slice (`rank_slice`)."""

    def __init__(self, config: DataConfig, batch_size: int, seed: int = 0):
        self.config, self.batch_size = config, batch_size
        files = shard_files(config.shards)
        columns = config.batch_by
        counts, where = count_groups(files, columns)
        if not counts:
            raise ValueError(f"no rows with a positive in {files[:3]}...")
        # Groups too small to fill a batch are pooled per source, so a long tail of languages still trains.
        members: dict[Group, list[Group]] = {}
        for group, n in sorted(counts.items()):
            key = group if n >= batch_size else (group[0], *["*"] * (len(columns) - 1))
            members.setdefault(key, []).append(group)
        self.sizes = {key: sum(counts[g] for g in groups) for key, groups in members.items()}
        # A source is drawn by its size (or size**alpha), then a group of it by the group's size, so
        # grouping by language does not change how often each source is trained on.
        per_source: dict[str, int] = {}
        for key, n in self.sizes.items():
            per_source[key[0]] = per_source.get(key[0], 0) + n
        unknown = sorted(set(config.weights) - set(per_source))
        if unknown:
            raise ValueError(
                f"data.weights names sources that the shards do not hold: {unknown} (they hold {sorted(per_source)})"
            )
        exponent = config.alpha if config.sampling == "temperature" else 1.0
        weights = np.array(
            [
                config.weights.get(key[0], 1.0) * per_source[key[0]] ** exponent * n / per_source[key[0]]
                for key, n in self.sizes.items()
            ],
            dtype=float,
        )
        if not weights.sum():
            raise ValueError(f"data.weights leaves no source to train on ({config.weights})")
        self.probabilities = weights / weights.sum()
        self.members, self.where, self.seed, self.files = members, where, seed, files

    @cached_property
    def passages(self) -> PassageTable:
        """Loaded on the first batch whose negatives are ids (never in stage 1, which samples none)."""
        return passage_table(self.files)

    def _streams(self) -> dict[Group, GroupStream]:
        return {
            key: GroupStream(
                self.config.batch_by,
                groups,
                sorted({f for g in groups for f in self.where[g]}),
                min(self.config.shuffle_buffer, self.sizes[key]),
                np.random.default_rng([self.seed, i]),
            )
            for i, (key, groups) in enumerate(self.members.items())
        }

    def _prompt(self, row: dict) -> str:
        """The template's text before the query, with the row's instruction ("" when it has none)."""
        return (
            self.config.template.split("{query}")[0].format(instruction=row["instruction"])
            if row["instruction"]
            else ""
        )

    def __iter__(self) -> Iterator[Batch]:
        """The batches from the seed on (each iteration starts over: a resumed run replays it)."""
        groups, rng, streams = list(self.sizes), np.random.default_rng(self.seed), self._streams()
        while True:
            group = groups[int(rng.choice(len(groups), p=self.probabilities))]
            rows = [streams[group].next() for _ in range(self.batch_size)]
            source, task = rows[0]["source"], rows[0]["task"]
            positives = [r["positive"] for r in rows]
            first: dict[str, int] = {}
            prompts = [self._prompt(r) for r in rows]
            queries = [prompt + r["query"] for prompt, r in zip(prompts, rows)]  # the template ends with {query}
            batch = Batch(
                source,
                task,
                queries,
                positives,
                in_batch=task in self.config.in_batch,
                keys=[first.setdefault(p, i) for i, p in enumerate(positives)],
                prompts=prompts,
            )
            k = self.config.negatives.get(task, 0)
            stored, places = [], []  # where batch.negatives holds ids (per row: shards of older runs hold texts)
            for i, r in enumerate(rows):
                ids = r.get(NEGATIVE_IDS)
                own = (ids if ids is not None else r.get(NEGATIVES)) or []
                if k and own:
                    for j in sorted(rng.choice(len(own), size=min(k, len(own)), replace=False)):
                        if ids is not None:
                            stored.append(len(batch.negatives))
                            places.append(r["where"])
                        batch.negatives.append(own[j])
                        batch.owner.append(i)
            if stored:  # resolved in one lookup for the batch
                for at, text in zip(stored, self.passages.texts_of([batch.negatives[at] for at in stored], places)):
                    batch.negatives[at] = text
            yield batch


def rank_slice(batch: Batch, rank: int, world: int) -> Batch:
    """This rank's contiguous share of a global batch (batch size divisible by the world size)."""
    per = len(batch.queries) // world
    return batch.slice(rank * per, (rank + 1) * per)
