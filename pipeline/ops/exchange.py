"""Rounds of tasks that hand each other Arrow tables and numpy arrays through files: the shuffle of a
MapReduce, on disk or in object storage rather than in memory.

A task returns a list of objects; each table or array is written to the step's scratch space
(`Rounds.scratch`, under the run folder, on a local disk or in object storage) and the caller gets a
`Ref` (a path) in its place, small values come back as they are. A task that receives a `Ref` reads
it; once the round is done, what its tasks read is deleted unless the ref was made to be `keep`t
(read by several tasks): so scratch holds the data in flight between two rounds, not every round's. Memory
is one task's inputs and outputs; the driver holds paths, never rows. Scratch survives a killed
worker, so a retried task finds its inputs; the runner removes it when the step commits.

Connected components and the near-duplicate plan run many small rounds; plain tasks cost
milliseconds a round, where a Ray Data shuffle costs seconds.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pyarrow as pa

from core import storage
from core.record import WORK_SCHEMA, kept
from pipeline.ops.memory import release_memory
from pipeline.ops.tasks import Executor, InProcess

INLINE_BYTES = 64 << 10  # smaller results travel back as values (counts, fingerprints, empty parts)
ROW_GROUP = 8192  # rows per row group of a stored table: a step that reads it next splits its work by them


@dataclass(frozen=True)
class Ref:
    """A table or array in a file: a task's output in scratch, or (`block`) an input file of the
    step, read as the rows no earlier step dropped."""

    path: str
    kind: Literal["table", "array", "block"]
    keep: bool = False  # read by several tasks: removed with the scratch space, not by a reader

    def read(self) -> Any:
        if self.kind == "block":
            return kept(storage.parquet_file(self.path).read(columns=WORK_SCHEMA.names))
        if self.kind == "table":
            return storage.parquet_file(self.path).read()
        return np.load(local_path(self.path), mmap_mode="r")


SCRATCH_CACHE = Path(tempfile.gettempdir()) / "ml-embed-data" / "scratch"
CACHE_SHARE_OF_DISK = 0.25  # a node's copies of scratch arrays stop growing at this share of its disk


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _cache_dir(scratch: str) -> Path:
    """This machine's copies of the arrays of one step's scratch space in object storage."""
    return SCRATCH_CACHE / _digest(scratch)


def _copy_path(path: str) -> Path:
    """Where this machine keeps its copy of a scratch array in object storage (the path names one
    round of one `Rounds`: an object is never rewritten under the same name)."""
    return _cache_dir(path.rsplit("/", 2)[0]) / f"{_digest(path)}.npy"


def local_path(path: str) -> str:
    """A local file to map: the file itself, or a copy of an object in this machine's cache."""
    if not storage.is_url(path):
        return path
    copy = storage.download(path, _copy_path(path))
    _evict(SCRATCH_CACHE, copy)
    return str(copy)


def _evict(cache: Path, keep: Path) -> None:
    """Remove the least recently read copies while the cache holds more than its share of the disk.
    Removing a file another task has mapped is safe on POSIX: the mapping keeps its pages."""
    files = [(f.stat(), f) for f in cache.rglob("*.npy") if f != keep]
    budget = shutil.disk_usage(cache).total * CACHE_SHARE_OF_DISK - keep.stat().st_size
    total = sum(st.st_size for st, _ in files)
    for st, f in sorted(files, key=lambda item: item[0].st_atime):
        if total <= budget:
            break
        f.unlink(missing_ok=True)
        total -= st.st_size


def get(value: Any) -> Any:
    """What a task got: the object behind a `Ref` (in a list too), anything else as it is."""
    if isinstance(value, list):
        return [get(v) for v in value]
    return value.read() if isinstance(value, Ref) else value


def _store(value: Any, path: str, keep: bool) -> Any:
    if isinstance(value, pa.Table) and value.nbytes > INLINE_BYTES:
        storage.write_parquet(
            value, path + ".parquet", compression="zstd", compression_level=1, row_group_size=ROW_GROUP
        )
        return Ref(path + ".parquet", "table", keep)
    # a slice would carry its whole parent's buffers when pickled: a copy of its own rows
    if isinstance(value, pa.Table):
        return (
            value.take(pa.array(np.arange(value.num_rows), pa.int64()))
            if value.num_rows
            else value.schema.empty_table()
        )
    if isinstance(value, np.ndarray) and value.nbytes > INLINE_BYTES:
        buffer = io.BytesIO()
        np.save(buffer, value)
        storage.write_bytes(path + ".npy", buffer.getvalue())
        return Ref(path + ".npy", "array", keep)
    return value


def _task(fn: Callable[..., list[Any]], args: tuple, prefix: str, returns: int, keep: bool) -> list[Any]:
    """On the worker: read the refs, run `fn`, store its outputs; the worker keeps none of its memory."""
    outputs = fn(*[get(a) for a in args])
    if len(outputs) != returns:
        raise RuntimeError(f"{fn.__name__} returned {len(outputs)} objects for {returns}")
    stored = [_store(value, f"{prefix}-{j:05d}", keep) for j, value in enumerate(outputs)]
    del outputs
    release_memory()
    return stored


def _read_once(args: Sequence[tuple]) -> list[Ref]:
    """The refs a round's tasks read that no other task will (not `keep`, not an input file)."""
    return [a for task in args for a in task if isinstance(a, Ref) and a.kind != "block" and not a.keep]


class Rounds:
    """The rounds of one step: tasks run by `executor`, their outputs written under `scratch`."""

    def __init__(self, scratch: str, executor: Executor | None = None, options: dict[str, Any] | None = None):
        self.scratch = scratch
        self.executor = executor or InProcess()
        self.options = options or {}  # per task, for Ray (CPUs, memory)
        self._count = itertools.count()
        self._id = uuid.uuid4().hex[:8]  # round folders of a retried step never reuse a name

    @property
    def parallelism(self) -> int:
        return self.executor.parallelism

    def submit(
        self,
        fn: Callable[..., list[Any]],
        args: Sequence[tuple],
        returns: int,
        keep: bool = False,
        description: str = "",
    ) -> list[list[Any]]:
        """Run `fn(*a)` for each `a` (refs among `a` arrive read); `fn` returns `returns` objects.
        Result: per task, its `returns` outputs (refs to tables and arrays, small values as they are)."""
        folder = storage.join(self.scratch, f"{self._id}-round-{next(self._count):03d}-{fn.__name__.strip('_')}")
        tasks = [(fn, a, storage.join(folder, f"{i:05d}"), returns, keep) for i, a in enumerate(args)]
        outputs = self.executor.map(_task, tasks, description or fn.__name__.strip("_"), self.options)
        self.discard(_read_once(args))  # only now: a task retried after a lost worker still finds its inputs
        return outputs

    @staticmethod
    def discard(outputs: list[Any]) -> None:
        """Remove outputs no task will read."""
        for ref in outputs:
            if isinstance(ref, Ref) and ref.kind != "block":
                storage.delete(ref.path)
                if ref.kind == "array" and storage.is_url(ref.path):
                    _copy_path(ref.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the scratch space, and this machine's copies of its arrays."""
        storage.delete(self.scratch)
        shutil.rmtree(_cache_dir(self.scratch), ignore_errors=True)


def blocks(files: list[str]) -> list[Ref]:
    """A step's input files as blocks (their kept rows), in order."""
    return [Ref(f, "block") for f in files]


def spread(keys: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each uint64/int64 key, well mixed even when keys are structured."""
    h = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(parts)).astype(np.int64)


def split(table: pa.Table, partition: np.ndarray, parts: int) -> list[pa.Table]:
    """`table` cut into `parts` tables by the partition number of each row (rows keep their order)."""
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(parts + 1))
    ordered = table.take(pa.array(order))
    return [ordered.slice(bounds[j], bounds[j + 1] - bounds[j]) for j in range(parts)]


def column(outputs: list[list[Any]], j: int) -> list[Any]:
    """Part `j` of every producer: what task `j` of the next round receives."""
    return [out[j] for out in outputs]


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """The tables a task received, as one (they share a schema by construction)."""
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]
