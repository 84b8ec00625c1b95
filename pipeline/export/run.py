"""A finished run as an export reads it: its committed shards and passage table (local or in object
storage), and the datasets they are cut into (one per source, or per source and query language).

Only what the shards' marker names is read, so files of an unfinished attempt are never exported.
Planning reads a few columns of every shard a batch at a time: memory does not grow with the run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.passages import CORPUS_DIR, NEGATIVE_IDS
from pipeline.engine.checkpoint import read_marker

Grouping = Literal["source", "language"]
BATCH_ROWS = 8192
# Columns an export reads from the shards.
COLUMNS = (
    "id",
    "source",
    "task",
    "instruction",
    "query",
    "positive",
    "positive_id",
    NEGATIVE_IDS,
    "positive_score",
    "negative_scores",
    "query_lang",
)


class ExportError(Exception):
    """The run or the settings cannot give the export asked for; the message says which and why."""


@dataclass
class Dataset:
    """The rows one file (or `datasets` split) of the export holds."""

    name: str  # letters, digits and `_` only: safe as a file name and as a `datasets` split name
    source: str
    language: str | None  # with grouping by language: the rows' query language
    task: str
    files: list[str] = field(default_factory=list)  # shard files holding its rows
    rows: int = 0
    max_negatives: int = 0
    min_negatives: int | None = None
    instructions: set[str | None] = field(default_factory=set)  # up to 2: is one prompt enough?
    scored: bool = True  # every row has a positive score and a score per negative

    def matches(self, batch: pa.Table) -> pa.Array:
        """Which rows of a batch of its source's shards are this dataset's."""
        if self.language is None:
            return pc.equal(batch["source"], self.source)
        return pc.and_(
            pc.equal(batch["source"], self.source), pc.equal(pc.fill_null(batch["query_lang"], "und"), self.language)
        )

    @property
    def instruction(self) -> str | None:
        """The dataset's one instruction, where every row has the same (or none)."""
        return next(iter(self.instructions)) if len(self.instructions) == 1 else None


class FinishedRun:
    """The committed shards and passage table of a run folder (a local path or a URL)."""

    def __init__(self, path: str):
        self.path = str(path).rstrip("/")
        marker = read_marker(storage.join(self.path, "shards"))
        if marker is None:
            raise ExportError(
                f"{self.path}: no shards/_SUCCESS.json: not a finished run (run its manifest to the end first)"
            )
        self.shards = [(storage.join(self.path, "shards", e["path"]), e) for e in marker["shards"]]
        if not marker.get("corpus"):
            raise ExportError(
                f"{self.path}: the run has no passage table ({CORPUS_DIR}/); run its manifest again to write one"
            )
        self.corpus = [storage.join(self.path, CORPUS_DIR, e["path"]) for e in marker["corpus"]]

    def batches(self, files: list[str], columns: tuple[str, ...] = COLUMNS) -> Iterator[tuple[str, int, pa.Table]]:
        """(file, first row, batch) over `files`, a batch at a time."""
        for file in files:
            start = 0
            for batch in storage.parquet_file(file).iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
                yield file, start, pa.Table.from_batches([batch])
                start += batch.num_rows

    def datasets(self, grouping: Grouping) -> list[Dataset]:
        """The datasets of the run, named stably and safely, with what the layouts need to know."""
        found: dict[tuple[str, str | None], Dataset] = {}
        columns = ("source", "task", "instruction", NEGATIVE_IDS, "positive_score", "negative_scores", "query_lang")
        for file, _, batch in self.batches([f for f, _ in self.shards], columns):
            lang = (
                pc.fill_null(batch["query_lang"], "und")
                if grouping == "language"
                else pa.nulls(batch.num_rows, pa.string())
            )
            negatives = pc.fill_null(pc.list_value_length(batch[NEGATIVE_IDS]), 0)
            scores = pc.fill_null(pc.list_value_length(batch["negative_scores"]), -1)
            scored = pc.and_(pc.is_valid(batch["positive_score"]), pc.equal(scores, negatives))
            keys = pa.table({"source": batch["source"], "language": lang, "task": batch["task"]})
            for source, language, task in set(zip(*(keys[c].to_pylist() for c in keys.column_names))):
                mine = pc.and_(
                    pc.equal(keys["source"], source),
                    pc.equal(keys["language"], language) if language else pa.scalar(True),
                )
                data = found.setdefault((source, language), Dataset("", source, language, task))
                if data.task != task:
                    raise ExportError(
                        f"{file}: source {source} holds rows of tasks {data.task} and {task}; a dataset has one task"
                    )
                if file not in data.files:
                    data.files.append(file)
                data.rows += pc.sum(mine.cast(pa.int64())).as_py()
                counts = pc.min_max(negatives.filter(mine)).as_py()
                data.max_negatives = max(data.max_negatives, counts["max"])
                data.min_negatives = min(
                    data.min_negatives if data.min_negatives is not None else counts["min"], counts["min"]
                )
                data.scored = data.scored and pc.all(scored.filter(mine)).as_py() is not False
                if len(data.instructions) < 2:
                    data.instructions.update(pc.unique(batch["instruction"].filter(mine)).to_pylist()[:2])
        datasets = sorted(found.values(), key=lambda d: (d.source, d.language or ""))
        for data, name in zip(
            datasets, safe_names([d.source + (f"_{d.language}" if d.language else "") for d in datasets])
        ):
            data.name = name
        return datasets


def safe_names(names: list[str]) -> list[str]:
    """Names made of letters, digits and `_` (safe in file names, ML-Embed's `<name>_query.parquet`
    and as `datasets` split names). A name that had to change, or that two names would share, gets
    the start of a hash of the original, so the same source always gets the same name."""
    cleaned = [re.sub(r"[^A-Za-z0-9_]+", "_", n).strip("_") or "dataset" for n in names]
    counts = {c: cleaned.count(c) for c in cleaned}
    return [
        c if c == n and counts[c] == 1 else f"{c}_{hashlib.sha1(n.encode()).hexdigest()[:6]}"
        for n, c in zip(names, cleaned)
    ]
