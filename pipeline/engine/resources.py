"""What a step needs of the machine, checked before it starts: disk for its checkpoint and its
scratch, memory per worker process. A step the machine cannot hold stops with how much it needs,
how much there is, and what to change, never with a traceback in the middle of the step.

The estimates are upper bounds from the step's input on disk: a checkpoint is about as large as the
step's input (its rows, a few columns more or fewer), scratch at most as large again (a shuffle
moves the rows once; near-duplicate signatures and bucket entries take less), and a worker holds one
task's rows uncompressed, a few times over while it works on them.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core import storage

GB = 1 << 30
DISK_RESERVE = 2 * GB  # left free: other writers, and the shards' own spill at the end
MEMORY_RESERVE = 1 * GB  # the driver and the operating system
WORKING_COPIES = 4  # a task's rows in memory at once: read, worked on, written
DATASET_WORKER = 2 * GB  # a dataset stage's task: partitions are sized to about this


class ResourceShortage(Exception):
    """The machine lacks the disk or memory a step needs; the message says how much and what to change."""


@dataclass(frozen=True)
class Needs:
    """What a step will use: `disk` bytes beside its input, `worker` bytes of memory per process."""

    disk: int
    worker: int


def files_bytes(files: list[str]) -> int:
    return sum(storage.size_and_mtime(f)[0] for f in files)


def footers(files: list[str], sample: int = 64) -> tuple[float, int]:
    """(the most uncompressed bytes per row, the most uncompressed bytes of one file) over up to
    `sample` files spread across the list, from their footers (nothing else is read): sources differ,
    so the largest, not the mean, sizes a task."""
    per_row, per_file = 0.0, 0
    for file in files[:: max(1, len(files) // sample)]:
        meta = storage.parquet_file(file).metadata
        size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        per_row, per_file = max(per_row, size / max(meta.num_rows, 1)), max(per_file, size)
    return per_row, per_file


def needs(
    kind: str, files: list[str], rows: int, source_bytes: int, task_rows: int, partition_rows: int, stage_memory: int
) -> Needs:
    """The needs of a step of `kind` over `files` of `rows` rows (ingest: over `source_bytes` of sources)."""
    if kind == "ingest":
        return Needs(disk=2 * source_bytes, worker=GB)
    size, (per_row, per_file) = files_bytes(files), footers(files)
    if kind == "rows":
        return Needs(disk=size + size // 4, worker=int(min(task_rows, rows) * per_row * WORKING_COPIES) + stage_memory)
    if kind == "shuffle":
        return Needs(disk=2 * size, worker=int(min(partition_rows, rows) * per_row * WORKING_COPIES) + stage_memory)
    # a task holds a whole input file
    return Needs(disk=2 * size, worker=DATASET_WORKER + per_file * WORKING_COPIES // 2 + stage_memory)


def free_disk(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def available_memory() -> int | None:
    """MemAvailable (Linux): memory that can be had without swapping, page cache included."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return None


def size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / (1 << 20):.0f} MB"


def check_disk(step: str, folder: Path, need: int, prunable: int) -> None:
    free = free_disk(folder)
    if need + DISK_RESERVE <= free:
        return
    hint = (
        (
            f", or set `keep_checkpoints: last` in the manifest to keep only the checkpoint a resume needs "
            f"({size(prunable)} of older checkpoints here)"
        )
        if prunable
        else ""
    )
    raise ResourceShortage(
        f"step {step} needs about {size(need)} of free disk under {folder} (its checkpoint, and as much "
        f"scratch while it runs), and {size(DISK_RESERVE)} to spare; {size(free)} are free. "
        f"Free some space{hint}, then run again: the run resumes at this step."
    )


def workers(step: str, worker: int, cpus: int) -> int:
    """How many worker processes fit in memory (at most `cpus`; at least one, or a clear error)."""
    available = available_memory()
    if available is None:
        return cpus
    fit = (available - MEMORY_RESERVE) // max(worker, 1)
    if fit < 1:
        raise ResourceShortage(
            f"step {step} needs about {size(worker)} of memory per worker process, and "
            f"{size(MEMORY_RESERVE)} for the rest; {size(available)} are available. Free memory "
            "(close other programs), or run on a larger machine or a Ray cluster (`--ray-address`)."
        )
    return int(min(cpus, fit))


def out_of_disk(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def disk_filled(step: str, folder: str, exc: OSError) -> ResourceShortage:
    return ResourceShortage(
        f"step {step}: the disk under {folder} filled up while it ran ({exc.strerror}). Free some space "
        "(or set `keep_checkpoints: last`), then run again: the run resumes at this step."
    )


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
