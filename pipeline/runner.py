"""Runs a manifest: sources -> stages -> shards, on Ray Data, with checkpoints, ledger and resume.

The runner knows stages only through the `Stage` contract (`pipeline/stage.py`): plain stages run as
Ray tasks, stateful ones in an actor pool, shuffle stages behind a hash partitioning on their key,
dataset stages (near-dup) plan their own distributed work over the whole dataset.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

import pipeline
from pipeline import dashboard, stats
from pipeline import ledger as ledger_mod
from pipeline.arrow_utils import replace_column
from pipeline.card import write_card
from pipeline.checkpoint import Checkpoint, fingerprint
from pipeline.lock import RunLock
from pipeline.manifest import Manifest, SourceConfig
from pipeline.record import DETAIL, DROP, FLAGS, RAW, WORK_SCHEMA
from pipeline.shards import write_shards
from pipeline.stage import STAGES, DatasetStage, RunContext, ShuffleStage, Stage
from sources.reader import Unit, plan_units, read_unit

BATCH_ROWS = 8192
ROWS_PER_SHUFFLE_PARTITION = 250_000
CHECKPOINT_ROWS_PER_FILE = 100_000  # fewer, larger files: each file is a Ray read task


@dataclass
class StepResult:
    name: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    seconds: float
    resumed: bool
    flagged: dict[str, int] = field(default_factory=dict)  # kept rows a stage flagged, by reason


@dataclass
class RunResult:
    run_dir: Path
    steps: list[StepResult] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    shards_tag: str = ""  # in every shard's file name; see pipeline/shards.py
    reports: dict[str, pl.DataFrame] = field(default_factory=dict)  # by step: stages' own summaries
    dashboard: Path | None = None
    seconds: float = 0.0


# --- functions that run on Ray workers ------------------------------------------------------------


def _to_work_schema(table: pa.Table) -> pa.Table:
    return table.select(WORK_SCHEMA.names).cast(WORK_SCHEMA)


def _ingest_units(batch: pa.Table, sources: dict[str, SourceConfig]) -> pa.Table:
    tables = [read_unit(Unit(**row), sources[row["source"]]) for row in batch.to_pylist()]
    return pa.concat_tables(tables)


def _kept(batch: pa.Table) -> pa.Table:
    """The rows a stage gets: those no earlier step dropped, with the previous step's flags cleared."""
    batch = batch.filter(pc.is_null(batch.column(DROP)))
    return replace_column(batch, FLAGS, pa.nulls(batch.num_rows, WORK_SCHEMA.field(FLAGS).type))


def _apply(batch: pa.Table, stage_cls: type[Stage], config: Any, context: RunContext) -> pa.Table:
    return _to_work_schema(stage_cls(config, context)(batch))


def _add_key(batch: pa.Table, stage_cls: type[ShuffleStage], config: Any, context: RunContext) -> pa.Table:
    batch = _kept(batch)
    return batch.append_column("_key", stage_cls(config, context).key(batch))


class _StageActor:
    """Holds one stateful stage per actor (e.g. a loaded model) across batches."""

    def __init__(self, stage_cls: type[Stage], config: Any, context: RunContext):
        self.stage = stage_cls(config, context)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _to_work_schema(self.stage(_kept(batch)))


def _apply_kept(batch: pa.Table, stage_cls: type[Stage], config: Any, context: RunContext) -> pa.Table:
    return _apply(_kept(batch), stage_cls, config, context)


# --- the driver -----------------------------------------------------------------------------------


@dataclass
class _Step:
    name: str
    fingerprint: str
    build: Callable[[list[str], int], Any]  # (input files, input rows) -> ray Dataset to write
    stage: Stage | None = None  # None for ingest


class Runner:
    def __init__(self, manifest: Manifest, ray_address: str | None = None, quiet: bool = False, log: Callable[[str], None] = print):
        self.manifest = manifest
        self.run_dir = Path(manifest.output)
        self.ray_address = ray_address or manifest.ray.address
        self.quiet = quiet
        self.log = log
        self.context = RunContext(self.run_dir, tuple(s.name for s in manifest.sources), {s.name: s for s in manifest.sources})
        self.cpus = 1.0

    def _steps(self, units: list[Unit]) -> list[_Step]:
        sources = {s.name: s for s in self.manifest.sources}
        file_ids = sorted({(u.path, *self._stat(u.path)) for u in units})
        fp = fingerprint(pipeline.__version__, [s.model_dump(mode="json") for s in self.manifest.sources], file_ids)

        def ingest(_files: list[str], _rows: int) -> Any:
            import ray.data

            items = [u.as_dict() for u in units]
            ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
            return ds.map_batches(_ingest_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"sources": sources})

        steps = [_Step("00-ingest", fp, ingest)]
        for i, config in enumerate(self.manifest.stages, start=1):
            cls = STAGES[config.stage]
            fp = fingerprint(fp, cls.name, cls.version, config.model_dump(mode="json"))
            name = f"{i:02d}-{cls.name}"
            steps.append(_Step(name, fp, self._stage_builder(cls, config, self._work_dir(name, fp)), cls(config, self.context)))
        return steps

    @staticmethod
    def _stat(path: str) -> tuple[int, int]:
        try:
            st = Path(path).stat()
            return st.st_size, st.st_mtime_ns
        except OSError:  # a hub dataset id: nothing local to fingerprint
            return 0, 0

    def _work_dir(self, step: str, fp: str) -> Path:
        return self.run_dir / "work" / f"{step}-{fp[:12]}"

    def _stage_builder(self, cls: type[Stage], config: Any, work_dir: Path) -> Callable[[list[str], int], Any]:
        context = replace(self.context, work_dir=work_dir)
        args = (cls, config, context)

        def build(files: list[str], rows: int) -> Any:
            import ray.data

            ds = ray.data.read_parquet(files, columns=list(WORK_SCHEMA.names), override_num_blocks=max(2 * int(self.cpus), len(files)))
            if issubclass(cls, DatasetStage):
                kept = ds.map_batches(_kept, batch_format="pyarrow", batch_size=BATCH_ROWS)
                return cls(config, context).plan(kept, rows).map_batches(_to_work_schema, batch_format="pyarrow", batch_size=None)
            if issubclass(cls, ShuffleStage):
                partitions = max(int(self.cpus), math.ceil(rows / ROWS_PER_SHUFFLE_PARTITION))
                ds = ds.map_batches(_add_key, batch_format="pyarrow", fn_args=args, batch_size=BATCH_ROWS)
                ds = cls(config, context).prepare(ds)
                ds = ds.repartition(partitions, keys=["_key"])
                # batch_size=None: a whole partition per call, so every row of a key is seen together.
                return ds.map_batches(_apply, batch_format="pyarrow", fn_args=args, batch_size=None)
            if cls.stateful:
                # Leave a CPU for reading and writing tasks: a pool that takes every CPU deadlocks.
                pool = max(1, int(self.cpus / cls.num_cpus) - 1)
                return ds.map_batches(_StageActor, batch_format="pyarrow", fn_constructor_args=args, batch_size=BATCH_ROWS,
                                      compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), num_cpus=cls.num_cpus)
            return ds.map_batches(_apply_kept, batch_format="pyarrow", fn_args=args, batch_size=BATCH_ROWS, num_cpus=cls.num_cpus)

        return build

    def run(self) -> RunResult:
        started = time.perf_counter()
        result = RunResult(self.run_dir)
        with RunLock(self.run_dir):
            units = [u for s in self.manifest.sources for u in plan_units(s)]
            steps = self._steps(units)
            stages_dir = self.run_dir / "stages"
            checkpoints = [Checkpoint(stages_dir, s.name) for s in steps]
            first_todo = next((i for i, (s, c) in enumerate(zip(steps, checkpoints)) if not c.is_done(s.fingerprint)), len(steps))
            self._remove_stale(stages_dir, {s.name for s in steps[:first_todo]})
            # A step's work folder is kept only while the same step (same fingerprint) is unfinished.
            self._remove_stale(self.run_dir / "work", {self._work_dir(s.name, s.fingerprint).name for s in steps[first_todo:]})
            shards_fp = fingerprint(steps[-1].fingerprint, self.manifest.shards.model_dump(mode="json"))
            shards_done = first_todo == len(steps) and Checkpoint(self.run_dir, "shards").is_done(shards_fp)

            started_ray = False
            if first_todo < len(steps):
                import ray

                from pipeline import ray_cluster

                started_ray = ray_cluster.start(self.ray_address, self.manifest.ray.num_cpus, self.manifest.ray.object_store_mb, self.quiet)
                self.cpus = ray.cluster_resources().get("CPU", 1.0)
            try:
                ledger_parts: list[pl.DataFrame] = []
                prev_out: pl.DataFrame | None = None
                for i, (step, ckpt) in enumerate(zip(steps, checkpoints)):
                    resumed = i < first_todo
                    if not resumed:
                        self._run_step(step, ckpt, checkpoints[i - 1] if i else None, prev_out)
                    part = pl.read_parquet(ckpt.path / "_ledger.parquet")
                    ledger_parts.append(part)
                    prev_out = part
                    result.steps.append(self._step_result(step.name, part, ckpt, resumed))
                    if i == 0 and (not resumed or not (self.run_dir / "quarantine").exists()):
                        self._write_quarantine(ckpt)
            finally:
                if started_ray:
                    from pipeline import ray_cluster

                    ray_cluster.stop()

            ledger = pl.concat(ledger_parts)
            ledger_mod.check_balance(ledger)
            ledger_mod.write(ledger, self.run_dir)
            result.reports = self._write_reports(steps, checkpoints)
            shards_ckpt = Checkpoint(self.run_dir, "shards")
            if not shards_done:
                self.log("writing shards")
                out = shards_ckpt.begin()
                written = write_shards(checkpoints[-1].files(), out, self.manifest.shards, shards_fp[:8])
                shards_ckpt.commit(shards_fp, {"shards": written})
            result.shards = shards_ckpt.marker()["shards"]  # type: ignore[index]
            result.shards_tag = shards_fp[:8]
            if self.manifest.stats.enabled:
                self.log("statistics and dashboard")
                settings = self.manifest.stats
                stats.compute(self.run_dir, settings.tokenizer, settings.reference, settings.samples_per_language, progress=not self.quiet)
                result.dashboard = dashboard.render(self.run_dir)
            result.seconds = time.perf_counter() - started
            write_card(self.manifest, result, ledger)
        return result

    def _write_reports(self, steps: list[_Step], checkpoints: list[Checkpoint]) -> dict[str, pl.DataFrame]:
        """Each stage's own summary of its step (mining, mixing), as `reports/<step>.csv`."""
        reports = {}
        folder = self.run_dir / "reports"
        shutil.rmtree(folder, ignore_errors=True)
        for step, ckpt in zip(steps, checkpoints):
            table = step.stage.report(ckpt.files()) if step.stage else None
            if table is not None:
                folder.mkdir(exist_ok=True)
                table.write_csv(folder / f"{step.name}.csv")
                reports[step.name] = table
        return reports

    def _remove_stale(self, stages_dir: Path, keep: set[str]) -> None:
        if not stages_dir.exists():
            return
        for path in stages_dir.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def _run_step(self, step: _Step, ckpt: Checkpoint, prev: Checkpoint | None, prev_ledger: pl.DataFrame | None) -> None:
        self.log(f"running {step.name}")
        started = time.perf_counter()
        out = ckpt.begin()
        rows_in = 0 if prev_ledger is None else int(prev_ledger.filter(pl.col("kind") == "out")["rows"].sum())
        ds = step.build(prev.files() if prev else [], rows_in)
        ds.write_parquet(str(out), min_rows_per_file=CHECKPOINT_ROWS_PER_FILE, max_rows_per_file=2 * CHECKPOINT_ROWS_PER_FILE)
        outcomes = ledger_mod.count_outcomes(step.name, sorted(str(p) for p in out.glob("*.parquet")))
        part = ledger_mod.entries(step.name, outcomes, prev_ledger)
        ledger_mod.check_balance(part)
        part.write_parquet(out / "_ledger.parquet")
        ckpt.commit(step.fingerprint, {"seconds": time.perf_counter() - started})
        shutil.rmtree(self._work_dir(step.name, step.fingerprint), ignore_errors=True)
        if (self.run_dir / "work").is_dir() and not any((self.run_dir / "work").iterdir()):
            (self.run_dir / "work").rmdir()

    @staticmethod
    def _step_result(name: str, part: pl.DataFrame, ckpt: Checkpoint, resumed: bool) -> StepResult:
        def total(kind: str) -> int:
            return int(part.filter(pl.col("kind") == kind)["rows"].sum())

        def by_reason(kind: str) -> dict[str, int]:
            return dict(part.filter(pl.col("kind") == kind).group_by("reason").agg(pl.col("rows").sum()).iter_rows())

        seconds = (ckpt.marker() or {}).get("seconds", 0.0)
        return StepResult(name, total("in"), total("out"), by_reason("dropped"), seconds, resumed, by_reason("flagged"))

    def _write_quarantine(self, ingest: Checkpoint) -> None:
        """Rows that could not be read or mapped, with their original bytes, place and reason."""
        target = self.run_dir / "quarantine"
        tmp = self.run_dir / "quarantine.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        bad = (
            pl.scan_parquet(ingest.files())
            .filter(pl.col(DROP).is_not_null())
            .select("source", "origin", pl.col(DROP).alias("reason"), pl.col(DETAIL).alias("detail"), pl.col(RAW).alias("raw"))
            .sort("source", "origin")
            .collect()
        )
        bad.write_parquet(tmp / "part-00000.parquet")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
