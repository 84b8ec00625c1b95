"""How a step's rows are computed: the functions that run on workers, as tasks of an executor
(`pipeline/ops/tasks.py`: here, a pool of worker processes, or Ray), the same code whichever runs
them, so every path gives the same rows.

- ingest: a task per unit (a file, a byte range, a row group, rows of a dataset);
- rows: a task per range of row groups of the input, through the fused group of row-local stages
  (each worker process sets the stages up once and keeps them for its next tasks);
- shuffle: two rounds through scratch files (`pipeline/ops/exchange.py`): each input file's rows are
  cut into partitions by the stage's key, then each partition goes through the stage whole;
- dataset: the stage's own plan of rounds over the input files.

Every task reads its input and writes its output file itself (read and map fused); the driver
passes paths, never rows. Row order within a checkpoint is not kept (nothing downstream depends on
it: shards are sorted).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.record import (
    DROP,
    DROP_STEP,
    FLAGS,
    GROUP_FLAG_TYPE,
    INGEST_SCHEMA,
    LANG_IN,
    WORK_SCHEMA,
    kept,
    to_work_schema,
)
from pipeline.engine.plan import Step
from pipeline.engine.stage import DatasetStage, RunContext
from pipeline.ops import exchange
from pipeline.ops.arrow import lists_by_row, replace_column
from pipeline.ops.memory import release_memory
from pipeline.ops.tasks import Executor
from sources.config import SourceConfig
from sources.reader import Unit, read_batches

BATCH_ROWS = 8192  # rows a stage gets at a time, and the row groups of every checkpoint file
TASK_ROWS = 8 * BATCH_ROWS  # rows a task of a row-local step reads and writes (one output file)
ROWS_PER_SHUFFLE_PARTITION = 250_000
# Below this many rows a step runs in the driver alone: starting worker processes (imports, models)
# costs more than it saves.
POOL_MIN_ROWS = 4 * BATCH_ROWS
POOL_MIN_BYTES = 32 << 20  # of source files, for ingest


# --- worker-side functions ------------------------------------------------------------------------


def _tag_flags(flags: pa.StructArray, step: str) -> pa.StructArray:
    """Flags (structs) with `step` filled in."""
    return pa.StructArray.from_arrays(
        [*flags.flatten(), pa.array([step] * len(flags), pa.string())], fields=list(GROUP_FLAG_TYPE)
    )


class GroupWorker:
    """Runs a fused group of row-local stages over a batch, as if each had its own step.

    Each stage gets the rows the ones before it kept; the output holds every input row once: the
    dropped ones with `_drop_step` naming the stage that dropped them, and each row's flags tagged
    with the stage that raised them, so the ledger counts every stage (`ledger.count_outcomes`).
    Built on the worker, where `setup()` runs once for each stage."""

    def __init__(self, step: Step, context: RunContext):
        self.names = [s.step for s in step.stages]
        self.stages = [s.build(context) for s in step.stages]
        for stage in self.stages:
            stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = kept(batch)
        n, lang_in = batch.num_rows, batch.column("query_lang")
        where = np.arange(n)  # each remaining row's index in the input batch
        # Every flag raised so far, column-wise: the input row it belongs to, and its struct.
        owners: list[np.ndarray] = [np.zeros(0, np.int64)]
        values: list[pa.Array] = [pa.array([], GROUP_FLAG_TYPE)]
        done: list[pa.Table] = []
        for name, stage in zip(self.names, self.stages):
            out = to_work_schema(stage(batch))
            if out.num_rows != batch.num_rows:
                raise RuntimeError(
                    f"stage {name} returned {out.num_rows} rows for {batch.num_rows}: a row-local stage keeps every row"
                )
            new = out.column(FLAGS).combine_chunks()
            owners.append(np.repeat(where, pc.fill_null(pc.list_value_length(new), 0).to_numpy(zero_copy_only=False)))
            values.append(_tag_flags(pc.list_flatten(new), name))
            gone = pc.is_valid(out.column(DROP)).to_numpy(zero_copy_only=False)
            if gone.any():
                rows = np.flatnonzero(gone)
                done.append(self._finish(out.take(rows), where[rows], owners, values, name, lang_in.take(rows), n))
            stay = np.flatnonzero(~gone)
            batch, lang_in, where = out.take(stay), lang_in.take(stay), where[stay]
            # collected above
            batch = replace_column(batch, FLAGS, pa.nulls(batch.num_rows, WORK_SCHEMA.field(FLAGS).type))
        done.append(self._finish(batch, where, owners, values, None, lang_in, n))
        return pa.concat_tables(done)

    @staticmethod
    def _finish(
        rows: pa.Table,
        where: np.ndarray,
        owners: list[np.ndarray],
        values: list[pa.Array],
        step: str | None,
        lang_in: pa.Array,
        n: int,
    ) -> pa.Table:
        """`rows` (input rows `where`) with the flags every stage raised on them, in stage order."""
        position = np.full(n, -1)
        position[where] = np.arange(len(where))
        at = position[np.concatenate(owners)]
        mine = at >= 0
        flags = lists_by_row(len(where), at[mine], pa.concat_arrays(values).filter(pa.array(mine)))
        rows = rows.drop_columns([FLAGS]).append_column(FLAGS, flags)
        return rows.append_column(DROP_STEP, pa.array([step] * rows.num_rows, pa.string())).append_column(
            LANG_IN, lang_in
        )


class ShuffleWorker:
    """A shuffle stage on whole partitions (every row of a key together)."""

    def __init__(self, step: Step, context: RunContext):
        self.stage = step.stages[0].build(context)
        self.stage.setup()

    def key(self, batch: pa.Table) -> pa.Array:
        return self.stage.key(batch)  # type: ignore[attr-defined]

    def __call__(self, partition: pa.Table) -> pa.Table:
        return to_work_schema(self.stage(partition))


# The set-up worker of the step this process last ran (a Ray task worker or one of our worker
# processes): one entry, so a process holds one step's models at a time.
_WORKERS: dict[tuple[type, str, str], Any] = {}


def _worker(cls: type[GroupWorker] | type[ShuffleWorker], step: Step, context: RunContext) -> Any:
    """This process's set-up worker for the step: `setup()` runs once per process, as in an actor
    pool, without a pool's standing CPU reservation (every CPU can work; nothing deadlocks)."""
    key = (cls, step.fingerprint, str(context.work_dir))
    if key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = cls(step, context)
    return _WORKERS[key]


# --- tasks ----------------------------------------------------------------------------------------


def _write(table: pa.Table, path: str) -> int:
    # Row groups of a batch: the unit of work of the next step's tasks.
    storage.write_parquet(table, path, row_group_size=BATCH_ROWS)
    return table.num_rows


def _ingest_task(unit: Unit, source: SourceConfig, path: str) -> int:
    """A unit's rows, a batch at a time (a unit may be a whole compressed file), as one file."""
    rows = 0
    with storage.parquet_writer(path, INGEST_SCHEMA, compression="zstd") as writer:
        for batch in read_batches(unit, source):
            writer.write_table(batch, row_group_size=BATCH_ROWS)
            rows += batch.num_rows
    release_memory()
    return rows


def _rows_task(file: str, groups: list[int], path: str, step: Step, context: RunContext) -> int:
    """Row groups of an input file through this process's set-up group of stages, as one file."""
    parquet = storage.parquet_file(file)
    worker = _worker(GroupWorker, step, context)
    parts = []
    for group in groups:
        table = parquet.read_row_group(group, columns=WORK_SCHEMA.names)
        parts += [worker(table.slice(start, BATCH_ROWS)) for start in range(0, table.num_rows, BATCH_ROWS)]
    rows = _write(pa.concat_tables(parts), path) if parts else 0
    del parts
    release_memory()
    return rows


def _key_task(block: pa.Table, parts: int, step: Step, context: RunContext) -> list[pa.Table]:
    """A block's rows cut into the stage's key partitions."""
    key = _worker(ShuffleWorker, step, context).key(block).to_numpy(zero_copy_only=False)
    return exchange.split(block, (key % np.uint64(parts)).astype(np.int64), parts)


def _partition_task(path: str, step: Step, context: RunContext, *tables: pa.Table) -> list[Any]:
    """A whole partition (every row of its keys) through the stage, as one file."""
    table = exchange.concat(tables)
    if table.num_rows:
        _write(_worker(ShuffleWorker, step, context)(table), path)
    return []


# --- in the driver --------------------------------------------------------------------------------


def source_bytes(units: list[Unit]) -> int:
    """The size of the files the units read (a hub dataset id counts nothing)."""
    return sum(storage.size_and_mtime(p)[0] for p in {u.path for u in units})


def compute(
    step: Step,
    units: list[Unit],
    sources: dict[str, SourceConfig],
    files: list[str],
    rows: int,
    context: RunContext,
    out: str,
    executor: Executor,
    scratch: str,
    options: dict[str, Any],
) -> None:
    """Compute the step over `files` (its input, local or in object storage) and write its files
    under `out`; `scratch` holds what rounds hand each other, `options` is a task's request to Ray."""

    def target(i: int) -> str:
        return storage.join(out, f"part-{i:05d}.parquet")

    if step.kind == "ingest":
        executor.map(_ingest_task, [(u, sources[u.source], target(i)) for i, u in enumerate(units)], "ingest")
        return
    if step.kind == "rows":
        groups = [(f, g) for f in files for g in range(storage.parquet_file(f).metadata.num_row_groups)]
        per_task = TASK_ROWS // BATCH_ROWS
        tasks = [
            (chunk[0][0], [g for _, g in chunk], target(i), step, context)
            for i, chunk in enumerate(_chunks(groups, per_task))
        ]
        executor.map(_rows_task, tasks, step.name, options)
        _WORKERS.clear()  # the driver keeps no models once the step is done
        return
    rounds = exchange.Rounds(scratch, executor, options)
    try:
        if step.kind == "dataset":
            stage = step.stages[0].build(context)
            assert isinstance(stage, DatasetStage)
            for i, block in enumerate(stage.plan(exchange.blocks(files), rows, rounds)):
                if isinstance(block, exchange.Ref):
                    storage.move(block.path, target(i))
                elif block.num_rows:
                    _write(to_work_schema(block), target(i))
            return
        parts = max(executor.parallelism, math.ceil(rows / ROWS_PER_SHUFFLE_PARTITION))
        cut = rounds.submit(
            _key_task,
            [(b, parts, step, context) for b in exchange.blocks(files)],
            parts,
            description=f"{step.name}: keys",
        )
        rounds.submit(
            _partition_task,
            [(target(p), step, context, *exchange.column(cut, p)) for p in range(parts)],
            0,
            description=step.name,
        )
    finally:
        rounds.close()
        _WORKERS.clear()


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Consecutive runs of `size` items, each within one file (a task reads one file)."""
    out: list[list[Any]] = []
    for item in items:
        if out and len(out[-1]) < size and out[-1][0][0] == item[0]:
            out[-1].append(item)
        else:
            out.append([item])
    return out
