"""How a step's rows are computed: the functions that run on workers, and two ways to run them.

- `run_local`: on this machine without Ray, the row-local work in worker processes (one per CPU)
  when the input is large enough to repay their start (small inputs: no distributed fixed cost).
- `run_ray`: Ray Data over the cluster: fused row-local groups as tasks (each worker process sets
  the stages up once), shuffle stages behind a hash partitioning on their key, dataset stages
  through their own plan.

Both give the same rows (row order within a checkpoint aside, which nothing downstream depends on:
shards are sorted). The runner picks one per step and knows nothing about particular stages.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import storage
from core.record import DROP, DROP_STEP, FLAGS, GROUP_FLAG_TYPE, LANG_IN, WORK_SCHEMA
from pipeline.engine.plan import Step
from pipeline.engine.stage import DatasetStage, RunContext
from pipeline.ops import exchange
from pipeline.ops.arrow import lists_by_row, replace_column
from sources.config import SourceConfig
from sources.reader import Unit, read_unit

BATCH_ROWS = 8192
ROWS_PER_SHUFFLE_PARTITION = 250_000
CHECKPOINT_ROWS_PER_FILE = 100_000  # fewer, larger files: each file is a Ray read task
# Below this many rows a fused group runs in the driver alone: starting worker processes (imports,
# models) costs more than it saves.
POOL_MIN_ROWS = 4 * BATCH_ROWS
POOL_MIN_BYTES = 32 << 20  # of source files, for ingest


# --- worker-side functions ------------------------------------------------------------------------


def to_work_schema(table: pa.Table) -> pa.Table:
    return table.select(WORK_SCHEMA.names).cast(WORK_SCHEMA)


def kept(batch: pa.Table) -> pa.Table:
    """The rows a stage gets: those no earlier step dropped, with the previous step's flags cleared
    (counted in its ledger already; a fused group's flags carry their step, another type)."""
    batch = batch.filter(pc.is_null(batch.column(DROP)))
    if FLAGS in batch.column_names:
        batch = batch.drop_columns([FLAGS])
    return to_work_schema(batch.append_column(FLAGS, pa.nulls(batch.num_rows, WORK_SCHEMA.field(FLAGS).type)))


def ingest_units(batch: pa.Table, sources: dict[str, SourceConfig]) -> pa.Table:
    tables = [read_unit(Unit(**row), sources[row["source"]]) for row in batch.to_pylist()]
    return pa.concat_tables(tables)


def _tag_flags(flags: pa.StructArray, step: str) -> pa.StructArray:
    """Flags (structs) with `step` filled in."""
    return pa.StructArray.from_arrays([*flags.flatten(), pa.array([step] * len(flags), pa.string())], fields=list(GROUP_FLAG_TYPE))


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
                raise RuntimeError(f"stage {name} returned {out.num_rows} rows for {batch.num_rows}: a row-local stage keeps every row")
            new = out.column(FLAGS).combine_chunks()
            owners.append(np.repeat(where, pc.fill_null(pc.list_value_length(new), 0).to_numpy(zero_copy_only=False)))
            values.append(_tag_flags(pc.list_flatten(new), name))
            gone = pc.is_valid(out.column(DROP)).to_numpy(zero_copy_only=False)
            if gone.any():
                rows = np.flatnonzero(gone)
                done.append(self._finish(out.take(rows), where[rows], owners, values, name, lang_in.take(rows), n))
            stay = np.flatnonzero(~gone)
            batch, lang_in, where = out.take(stay), lang_in.take(stay), where[stay]
            batch = replace_column(batch, FLAGS, pa.nulls(batch.num_rows, WORK_SCHEMA.field(FLAGS).type))  # collected above
        done.append(self._finish(batch, where, owners, values, None, lang_in, n))
        return pa.concat_tables(done)

    @staticmethod
    def _finish(rows: pa.Table, where: np.ndarray, owners: list[np.ndarray], values: list[pa.Array], step: str | None, lang_in: pa.Array, n: int) -> pa.Table:
        """`rows` (input rows `where`) with the flags every stage raised on them, in stage order."""
        position = np.full(n, -1)
        position[where] = np.arange(len(where))
        at = position[np.concatenate(owners)]
        mine = at >= 0
        flags = lists_by_row(len(where), at[mine], pa.concat_arrays(values).filter(pa.array(mine)))
        rows = rows.drop_columns([FLAGS]).append_column(FLAGS, flags)
        return rows.append_column(DROP_STEP, pa.array([step] * rows.num_rows, pa.string())).append_column(LANG_IN, lang_in)


class ShuffleWorker:
    """A shuffle stage on whole partitions (every row of a key together)."""

    def __init__(self, step: Step, context: RunContext):
        self.stage = step.stages[0].build(context)
        self.stage.setup()

    def key(self, batch: pa.Table) -> pa.Table:
        batch = kept(batch)
        return batch.append_column("_key", self.stage.key(batch))  # type: ignore[attr-defined]

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


def _group_setup(step: Step, context: RunContext) -> None:
    _worker(GroupWorker, step, context)


def _group_apply(batch: pa.Table, step: Step, context: RunContext) -> pa.Table:
    return _worker(GroupWorker, step, context)(batch)


def _add_key(batch: pa.Table, step: Step, context: RunContext) -> pa.Table:
    return _worker(ShuffleWorker, step, context).key(batch)


def _shuffle_apply(batch: pa.Table, step: Step, context: RunContext) -> pa.Table:
    return _worker(ShuffleWorker, step, context)(batch)


# --- in the driver --------------------------------------------------------------------------------


def source_bytes(units: list[Unit]) -> int:
    """The size of the files the units read (a hub dataset id counts nothing)."""
    return sum(storage.size_and_mtime(p)[0] for p in {u.path for u in units})


def _write(table: pa.Table, out: str, index: int) -> None:
    # Row groups of a batch: the unit of work of the next step's processes.
    storage.write_parquet(table, storage.join(out, f"part-{index:05d}.parquet"), row_group_size=BATCH_ROWS)


def _rows_task(file: str, row_group: int, out: str, index: int, step: Step, context: RunContext) -> None:
    """One row group of the input through the process's set-up group, written as one output file."""
    table = pq.ParquetFile(file).read_row_group(row_group, columns=WORK_SCHEMA.names)
    parts = [_group_apply(table.slice(start, BATCH_ROWS), step, context) for start in range(0, table.num_rows, BATCH_ROWS)]
    if parts:
        _write(pa.concat_tables(parts), out, index)


def _ingest_task(unit: Unit, source: SourceConfig, out: str, index: int) -> None:
    _write(read_unit(unit, source), out, index)


def _map(fn: Callable[..., None], tasks: list[tuple], parallel: bool, setup: Callable[..., Any] | None = None,
         setup_args: tuple = ()) -> None:
    """`fn(*task)` for every task: in this process, or when `parallel` in a pool of worker
    processes, one per CPU, each running `setup(*setup_args)` first. fastText and most of Python
    hold the GIL, so threads would not run the stages in parallel."""
    processes = min(len(os.sched_getaffinity(0)), len(tasks))
    if not parallel or processes < 2:
        if setup:
            setup(*setup_args)
        for task in tasks:
            fn(*task)
        return
    spawn = multiprocessing.get_context("spawn")  # a fork could copy Ray's or polars' threads mid-flight
    with ProcessPoolExecutor(processes, mp_context=spawn, initializer=setup, initargs=setup_args) as pool:
        list(pool.map(fn, *zip(*tasks)))  # in order; a worker's exception is raised here


def run_local(step: Step, units: list[Unit], sources: dict[str, SourceConfig], files: list[str], rows: int, context: RunContext, out: str) -> None:
    """Compute the step in this process from local `files` and write its checkpoint files under
    `out` (a local folder or a prefix in object storage)."""
    if step.kind == "ingest":
        _map(_ingest_task, [(u, sources[u.source], out, i) for i, u in enumerate(units)], source_bytes(units) >= POOL_MIN_BYTES)
        return
    if step.kind == "rows":  # a row group per task, written as one file
        groups = [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
        _map(_rows_task, [(f, g, out, i, step, context) for i, (f, g) in enumerate(groups)], rows >= POOL_MIN_ROWS,
             _group_setup, (step, context))
        _WORKERS.clear()  # the driver keeps no models once the step is done
        return
    if step.kind == "dataset":  # the plan's rounds run in this process (see pipeline/ops/exchange.py)
        blocks = [kept(pq.read_table(f, columns=WORK_SCHEMA.names)) for f in files]
        stage = step.stages[0].build(context)
        assert isinstance(stage, DatasetStage)
        for i, block in enumerate(stage.plan([b for b in blocks if b.num_rows], rows)):
            _write(to_work_schema(exchange.get(block)), out, i)  # a table, or a reference if Ray is up
        return
    shuffle = ShuffleWorker(step, context)
    parts = max(1, math.ceil(rows / ROWS_PER_SHUFFLE_PARTITION))
    tables = [pq.read_table(f, columns=WORK_SCHEMA.names) for f in files]
    if not sum(t.num_rows for t in tables):
        return
    if parts == 1:  # every key in one partition: no key to compute
        _write(shuffle(kept(pa.concat_tables(tables))), out, 0)
        return
    table = pa.concat_tables([shuffle.key(t) for t in tables])
    partition = (table.column("_key").to_numpy() % np.uint64(parts)).astype(np.int64)
    for p in range(parts):
        _write(shuffle(table.filter(pa.array(partition == p))), out, p)


# --- on Ray ---------------------------------------------------------------------------------------


def run_ray(step: Step, units: list[Unit], sources: dict[str, SourceConfig], files: list[str], rows: int, context: RunContext, out: str) -> None:
    """Compute the step with Ray Data and write its checkpoint files under `out`; `files` and `out`
    are local or in object storage, read and written by every node directly (no shared mount)."""
    import ray
    import ray.data

    cluster = ray.cluster_resources()
    cpus = int(cluster.get("CPU", 1))
    if step.kind == "ingest":
        items = [u.as_dict() for u in units]
        ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
        ds = ds.map_batches(ingest_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"sources": sources})
    else:
        fs = storage.filesystem(files[0])[0] if files else None
        inner = [storage.filesystem(f)[1] for f in files]
        ds = ray.data.read_parquet(inner, filesystem=fs, override_num_blocks=max(2 * cpus, len(files))).select_columns(list(WORK_SCHEMA.names))
        ds = _plan(step, ds, rows, context, cluster)
    fs, inner_out = storage.filesystem(out)
    ds.write_parquet(inner_out, filesystem=fs, min_rows_per_file=CHECKPOINT_ROWS_PER_FILE, max_rows_per_file=2 * CHECKPOINT_ROWS_PER_FILE)


def _plan(step: Step, ds: Any, rows: int, context: RunContext, cluster: dict[str, float]) -> Any:
    """The Ray Data plan of a step over `ds`, its input."""
    import ray.data

    cls = step.stages[0].cls
    args = (step, context)
    if step.kind == "dataset":
        blocks = ds.map_batches(kept, batch_format="pyarrow", batch_size=BATCH_ROWS).to_arrow_refs()  # stay in the object store
        stage = step.stages[0].build(context)
        assert isinstance(stage, DatasetStage)
        return ray.data.from_arrow_refs(stage.plan(blocks, rows)).map_batches(to_work_schema, batch_format="pyarrow", batch_size=None)
    if step.kind == "shuffle":
        partitions = max(int(cluster.get("CPU", 1)), math.ceil(rows / ROWS_PER_SHUFFLE_PARTITION))
        ds = ds.map_batches(_add_key, batch_format="pyarrow", fn_args=args, batch_size=BATCH_ROWS)
        ds = ds.repartition(partitions, keys=["_key"])
        # batch_size=None: a whole partition per call, so every row of a key is seen together; a GPU
        # per task where the stage asks for one and the cluster has them (dense mining embeds there).
        return ds.map_batches(_shuffle_apply, batch_format="pyarrow", fn_args=args, batch_size=None, **cls.resources.ray_options(cluster))
    return ds.map_batches(_group_apply, batch_format="pyarrow", fn_args=args, batch_size=BATCH_ROWS, **step.resources().ray_options(cluster))

