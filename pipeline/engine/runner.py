"""Runs the steps of a manifest: sources -> stages -> shards, with checkpoints, ledger and resume.

The runner knows stages only through the contract (`pipeline/engine/stage.py`) and the plan
(`pipeline/engine/plan.py`); how a step's rows are computed is `pipeline/engine/execute.py`'s job,
as tasks of an executor the runner picks per step (`pipeline/ops/tasks.py`): this process, a pool of
worker processes, or Ray. Ray is started only when a step needs it (an input above
`ray.in_process_rows`, or a cluster address), so a small or fully resumed run pays none of its
start-up cost. Before a step starts, the disk and memory it needs are checked
(`pipeline/engine/resources.py`).

The output may be in object storage (`s3://...`). Checkpoints are then written there by whichever
node computes them and committed by marker (`pipeline/engine/checkpoint.py`); the driver keeps a
local copy of the run folder (`run_dir`, see `storage_copy`) where it reads committed checkpoint
files (immutable, so a copy never goes stale) and writes what it makes itself (ledger, quarantine,
reports, shards, statistics, card), and uploads those: shards file by file, then their marker;
everything else with `publish`, generically, whatever a stage or report put there.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import polars as pl

import pipeline
from core import storage
from core.passages import CORPUS_DIR, STORE_DIR
from core.record import DETAIL, DROP, RAW
from pipeline.engine import execute, resources
from pipeline.engine import ledger as ledger_mod
from pipeline.engine.checkpoint import MARKER, Checkpoint, fingerprint, read_marker, write_marker
from pipeline.engine.corpus import write_corpus
from pipeline.engine.manifest import Manifest
from pipeline.engine.plan import Step, plan_steps
from pipeline.engine.shards import write_shards
from pipeline.engine.stage import Registry, RunContext
from pipeline.ops.passage_store import store_files
from pipeline.ops.tasks import Executor, InProcess, Pool, RayTasks
from sources.reader import Unit, plan_units

# Ingest has no row count before it runs: its input counts as small below this many bytes of source
# files per row allowed in process (the shipped samples hold about 1 KB per row on disk).
INGEST_BYTES_PER_ROW = 1024
# What the driver does not copy between its local folder and an output in object storage: checkpoints
# and shards (with the passage table) are committed by their own markers, the passage store is
# written there by the workers, `work/` is scratch, the lease is the lock's.
NOT_PUBLISHED = ("stages", "shards", CORPUS_DIR, STORE_DIR, "work", "_lease.json", ".lock")


def storage_copy(output: str) -> Path:
    """The driver's local folder for an output: the output itself when it is local, else a folder
    named after the URL under $ML_EMBED_DATA_CACHE (default: the system's temporary folder)."""
    if not storage.is_url(output):
        return Path(output)
    root = Path(os.environ.get("ML_EMBED_DATA_CACHE", Path(tempfile.gettempdir()) / "ml-embed-data"))
    return root / f"{storage.name(output)}-{hashlib.sha256(output.encode()).hexdigest()[:12]}"


def publish(run_dir: Path, output: str) -> None:
    """Upload what the driver wrote in its local folder (all but NOT_PUBLISHED) to an output in
    object storage; nothing to do for a local output. Each file is one atomic object."""
    if not storage.is_url(output):
        return
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir)
        if relative.parts[0] not in NOT_PUBLISHED and ".part" not in path.name:
            storage.upload(path, storage.join(output, relative.as_posix()))


@dataclass
class StepResult:
    name: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    seconds: float | None  # None for a stage fused with the next (the group's time is on its last stage)
    resumed: bool
    flagged: dict[str, int] = field(default_factory=dict)  # kept rows a stage flagged, by reason


@dataclass
class RunResult:
    run_dir: Path  # local: the output itself, or the driver's copy of an output in object storage
    output: str = ""  # the run folder as the manifest names it (a local path or a URL)
    steps: list[StepResult] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    shards_tag: str = ""  # in every shard's file name; see pipeline/engine/shards.py
    reports: dict[str, pl.DataFrame] = field(default_factory=dict)  # by step: stages' own summaries
    ledger: pl.DataFrame | None = None
    dashboard: Path | None = None
    seconds: float = 0.0


class Runner:
    """Runs (or resumes) a validated manifest in its output folder; the caller holds the run lock."""

    def __init__(
        self,
        manifest: Manifest,
        registry: Registry,
        ray_address: str | None = None,
        quiet: bool = False,
        log: Callable[[str], None] = print,
        verbose: bool = False,
    ):
        self.manifest = manifest
        self.registry = registry
        self.output = manifest.output
        self.run_dir = storage_copy(manifest.output)
        self.ray_address = ray_address or manifest.ray.address
        self.quiet = quiet
        self.log = log
        self.verbose = verbose
        self.sources = {s.name: s for s in manifest.sources}
        self.context = RunContext(
            self.run_dir, tuple(self.sources), self.sources, passages=storage.join(self.output, STORE_DIR)
        )
        self.started_ray = False

    def run(self) -> RunResult:
        started = time.perf_counter()
        result = RunResult(self.run_dir, self.output)
        self._refresh_copy()
        units = [u for s in self.manifest.sources for u in plan_units(s)]
        steps = self._plan(units)
        checkpoints = [Checkpoint(storage.join(self.output, "stages"), s.name) for s in steps]
        first_todo = next(
            (i for i, (s, c) in enumerate(zip(steps, checkpoints)) if not c.is_done(s.fingerprint)), len(steps)
        )
        while first_todo > 0 and checkpoints[first_todo - 1].pruned():  # the rows it needs are gone: rebuild them
            first_todo -= 1
        self._remove_stale(steps, checkpoints, first_todo)
        try:
            parts = self._run_steps(steps, checkpoints, first_todo, units, result)
        finally:
            self._stop_ray()
        result.ledger = pl.concat(parts)
        ledger_mod.check_balance(result.ledger)
        ledger_mod.write(result.ledger, self.run_dir)
        result.reports = self._collect_reports(steps)
        result.shards, result.shards_tag = self._write_shards(steps[-1], checkpoints[-1])
        result.seconds = time.perf_counter() - started
        return result

    # --- planning ---------------------------------------------------------------------------------

    def _plan(self, units: list[Unit]) -> list[Step]:
        file_ids = sorted({(u.path, *storage.size_and_mtime(u.path)) for u in units})
        ingest_fp = fingerprint(
            pipeline.__version__, [s.model_dump(mode="json") for s in self.manifest.sources], file_ids
        )
        return plan_steps(self.manifest.stages, self.registry, ingest_fp, self.manifest.checkpoint == "every_step")

    def _work_dir(self, step: Step) -> Path:
        return self.run_dir / "work" / f"{step.name}-{step.fingerprint[:12]}"

    def _remove_stale(self, steps: list[Step], checkpoints: list[Checkpoint], first_todo: int) -> None:
        """Checkpoints after the first step to redo, uncommitted attempts of the others, and work
        folders of steps no longer unfinished."""
        keep = {s.name for s in steps[:first_todo]}
        for path in storage.children(storage.join(self.output, "stages")):
            if storage.name(path) not in keep:
                storage.delete(path)
        for ckpt in checkpoints[:first_todo]:
            ckpt.clean()
        work, unfinished = self.run_dir / "work", {self._work_dir(s).name for s in steps[first_todo:]}
        if work.exists():
            for path in work.iterdir():
                if path.name not in unfinished:
                    shutil.rmtree(path, ignore_errors=True)

    # --- the driver's local copy of an output in object storage ----------------------------------

    def _refresh_copy(self) -> None:
        """Make the local copy hold what the output holds (a run elsewhere, or a fresh machine):
        its small files downloaded again; committed checkpoint and shard copies kept (immutable)."""
        if not storage.is_url(self.output):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in self.run_dir.iterdir():
            if path.name not in NOT_PUBLISHED:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for child in storage.children(self.output):
            if storage.name(child) not in NOT_PUBLISHED:
                for path in storage.list_files(child) if storage.info(child).type.name == "Directory" else [child]:
                    storage.download(path, self.run_dir / path[len(self.output) + 1 :])

    def _drop_copies_but(self, ckpt: Checkpoint) -> None:
        """Remove the local copies of every checkpoint but `ckpt` (the next step's input): the
        output in object storage holds them, and the driver's disk need not hold the corpus twice."""
        if not storage.is_url(self.output):
            return
        mine = self.run_dir / ckpt.path[len(self.output) + 1 :]
        for path in (self.run_dir / "stages").glob("*"):
            if path != mine:
                shutil.rmtree(path, ignore_errors=True)

    def _local(self, paths: list[str]) -> list[str]:
        """Local copies of files of the output (the files themselves when the output is local)."""
        if not storage.is_url(self.output):
            return paths
        return [str(storage.download(p, self.run_dir / p[len(self.output) + 1 :])) for p in paths]

    # --- running ----------------------------------------------------------------------------------

    def _run_steps(
        self, steps: list[Step], checkpoints: list[Checkpoint], first_todo: int, units: list[Unit], result: RunResult
    ) -> list[pl.DataFrame]:
        """Each step run or resumed in order; returns the ledger parts. A step's input is the `out`
        of the last stage before it."""
        parts: list[pl.DataFrame] = []
        previous: pl.DataFrame | None = None
        for i, (step, ckpt) in enumerate(zip(steps, checkpoints)):
            resumed = i < first_todo
            if not resumed:
                self._run_step(step, ckpt, checkpoints[:i], units, previous)
                self._write_reports(step, ckpt)
                if self.manifest.keep_checkpoints == "last":
                    for older in checkpoints[:i]:
                        older.prune()
                self._drop_copies_but(ckpt)
            part = pl.read_parquet(self._local([ckpt.file("_ledger.parquet")])[0])
            parts.append(part)
            previous = part.filter(pl.col("step") == step.ledger_steps[-1])
            seconds = (ckpt.marker() or {}).get("seconds", 0.0)
            result.steps += [
                self._step_result(name, part, seconds if name == step.ledger_steps[-1] else None, resumed)
                for name in step.ledger_steps
            ]
            if (
                step.kind == "ingest"
                and (not resumed or not (self.run_dir / "quarantine").exists())
                and not ckpt.pruned()
            ):
                self._write_quarantine(ckpt)
        return parts

    def _run_step(
        self, step: Step, ckpt: Checkpoint, before: list[Checkpoint], units: list[Unit], previous: pl.DataFrame | None
    ) -> None:
        """Run `step` over the rows of the last checkpoint `before` it (none for ingest), committed as `ckpt`."""
        started = time.perf_counter()
        files = before[-1].files() if before else []
        rows_in = 0 if previous is None else int(previous.filter(pl.col("kind") == "out")["rows"].sum())
        local = self._in_process(step, rows_in, units)
        processes = self._check_resources(step, files, rows_in, units, before, local)
        if not local:
            self._start_ray()
        executor = self._executor(step, rows_in, units, local, processes)
        where = (
            f" (in process, {executor.parallelism} worker processes)"
            if isinstance(executor, Pool)
            else " (in process)"
            if local
            else ""
        )
        self.log(f"running {step.name}{where}")
        out = ckpt.begin()
        context = replace(self.context, work_dir=self._work_dir(step))
        scratch = self._scratch(step)
        storage.delete(scratch)  # what a killed attempt left
        try:
            # In process, the input is read from the local copy; on Ray, every node reads the output.
            execute.compute(
                step,
                units,
                self.sources,
                self._local(files) if local else files,
                rows_in,
                context,
                out,
                executor,
                scratch,
                self._task_options(step, local),
            )
        except OSError as exc:
            if resources.out_of_disk(exc):
                raise resources.disk_filled(step.name, self.output, exc) from exc
            raise
        finally:
            executor.close()
        written = [p for p in storage.list_files(out) if p.endswith(".parquet")]
        outcomes = ledger_mod.count_outcomes(step.ledger_steps, self._local(written), step.language_set_at())
        part = ledger_mod.entries(step.ledger_steps, outcomes, previous)
        ledger_mod.check_balance(part)
        buffer = io.BytesIO()
        part.write_parquet(buffer)
        storage.write_bytes(storage.join(out, "_ledger.parquet"), buffer.getvalue())
        ckpt.commit(step.fingerprint, {"seconds": time.perf_counter() - started, "in_process": local})
        shutil.rmtree(self._work_dir(step), ignore_errors=True)
        storage.delete(storage.join(self.output, "work", self._work_dir(step).name))
        self._drop_empty_work()

    def _check_resources(
        self, step: Step, files: list[str], rows: int, units: list[Unit], before: list[Checkpoint], local: bool
    ) -> int:
        """Disk for the step (a local output) and memory per worker (in process): how many worker
        processes to run, or `ResourceShortage` saying what is missing."""
        source_bytes = execute.source_bytes(units) if step.kind == "ingest" else 0
        memory = max((s.cls.resources.memory_mb for s in step.stages), default=0) << 20
        need = resources.needs(
            step.kind, files, rows, source_bytes, execute.TASK_ROWS, execute.ROWS_PER_SHUFFLE_PARTITION, memory
        )
        if not storage.is_url(self.output):
            prunable = sum(c.size() for c in before[:-1]) if self.manifest.keep_checkpoints == "all" else 0
            resources.check_disk(step.name, self.run_dir, need.disk, prunable)
        cpus = self.manifest.ray.num_cpus or resources.cpus()
        return resources.workers(step.name, need.worker, cpus) if local else cpus

    def _scratch(self, step: Step) -> str:
        """Where the step's rounds hand each other files: under `work/`, beside the output (in object
        storage for an `s3://` output, so every node reaches it)."""
        return storage.join(self.output, "work", self._work_dir(step).name, "scratch")

    def _executor(self, step: Step, rows_in: int, units: list[Unit], local: bool, processes: int) -> Executor:
        """Ray tasks, a pool of this machine's worker processes, or this process alone (small steps)."""
        if not local:
            return RayTasks(progress=not self.quiet)
        small = (
            execute.source_bytes(units) < execute.POOL_MIN_BYTES
            if step.kind == "ingest"
            else rows_in < execute.POOL_MIN_ROWS
        )
        return InProcess() if small else Pool(processes, progress=not self.quiet)

    @staticmethod
    def _task_options(step: Step, local: bool) -> dict[str, Any]:
        """What one task asks Ray for: the most any of the step's stages declares."""
        if local:
            return {}
        import ray

        return step.resources().ray_options(ray.cluster_resources())

    def _drop_empty_work(self) -> None:
        """A finished run leaves no `work/` folder (scratch of steps and shard writing)."""
        if (self.run_dir / "work").is_dir() and not any((self.run_dir / "work").iterdir()):
            (self.run_dir / "work").rmdir()

    def _in_process(self, step: Step, rows_in: int, units: list[Unit]) -> bool:
        """Small steps run in this process when no cluster was asked for (see `ray.in_process_rows`)."""
        limit = self.manifest.ray.in_process_rows
        if self.ray_address:
            return False
        if step.kind == "ingest":
            return execute.source_bytes(units) <= limit * INGEST_BYTES_PER_ROW
        return rows_in <= limit

    def _start_ray(self) -> None:
        if self.started_ray:
            return
        from pipeline.engine import cluster

        settings = self.manifest.ray
        self.started_ray = cluster.start(
            self.ray_address, settings.num_cpus, settings.object_store_mb, self.quiet, self.verbose
        )

    def _stop_ray(self) -> None:
        if self.started_ray:
            from pipeline.engine import cluster

            cluster.stop()
            self.started_ray = False

    # --- results ----------------------------------------------------------------------------------

    @staticmethod
    def _step_result(name: str, part: pl.DataFrame, seconds: float | None, resumed: bool) -> StepResult:
        mine = part.filter(pl.col("step") == name)

        def total(kind: str) -> int:
            return int(mine.filter(pl.col("kind") == kind)["rows"].sum())

        def by_reason(kind: str) -> dict[str, int]:
            return dict(mine.filter(pl.col("kind") == kind).group_by("reason").agg(pl.col("rows").sum()).iter_rows())

        return StepResult(name, total("in"), total("out"), by_reason("dropped"), seconds, resumed, by_reason("flagged"))

    def _write_reports(self, step: Step, ckpt: Checkpoint) -> None:
        """Each of the step's stages' own summary (mining, mixing) as `reports/<stage>.csv`, written
        when the step commits (its checkpoint may be pruned later)."""
        for spec in step.stages:
            path = self.run_dir / "reports" / f"{spec.step}.csv"
            path.unlink(missing_ok=True)
            table = spec.build(self.context).report(self._local(ckpt.files()))
            if table is not None:
                path.parent.mkdir(exist_ok=True)
                table.write_csv(path)

    def _collect_reports(self, steps: list[Step]) -> dict[str, pl.DataFrame]:
        """The reports of this plan's stages (from this run or the one it resumed); others' removed."""
        folder = self.run_dir / "reports"
        names = {spec.step for step in steps for spec in step.stages}
        reports = {}
        for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
            if path.stem in names:
                reports[path.stem] = pl.read_csv(path)
            else:
                path.unlink()
        return reports

    def _write_shards(self, last: Step, ckpt: Checkpoint) -> tuple[list[dict[str, Any]], str]:
        """The shards, at the paths users read (`shards/<partition>/part-NNNNN-<tag>.parquet`), then
        `shards/_SUCCESS.json` naming exactly them; then every other file under `shards/` is removed,
        so the folder holds the committed files only. The passage table (`corpus/`) is written the
        same way before that marker, which names its files too. Each file is written whole (renamed locally,
        one object remotely) and the layout is deterministic, so a resumed attempt rewrites a
        crashed one's files with the same bytes; `datasets` reads the tag's files only (the card)."""
        shards_fp = fingerprint(last.fingerprint, self.manifest.shards.model_dump(mode="json"))
        local, remote = self.run_dir / "shards", storage.join(self.output, "shards")
        corpus_local, corpus_remote = self.run_dir / CORPUS_DIR, storage.join(self.output, CORPUS_DIR)
        marker = read_marker(remote)
        if marker is None or marker.get("fingerprint") != shards_fp:
            self.log("writing shards")
            storage.delete(storage.join(remote, MARKER))  # nothing trusts the old shards from here on
            refs = self.run_dir / "work" / "_passage_refs"
            written = write_shards(
                self._local(ckpt.files()),
                local,
                self.manifest.shards,
                shards_fp[:8],
                refs,
                self.run_dir / "work" / "_spill",
            )
            self.log("writing the passage table")
            store = self._local(store_files(self.context.passages or ""))
            corpus = write_corpus(refs, store, corpus_local, self.manifest.shards, shards_fp[:8])
            shutil.rmtree(refs)
            self._drop_empty_work()
            for shard in written:
                storage.upload(local / shard["path"], storage.join(remote, shard["path"]))
            for part in corpus:
                storage.upload(corpus_local / part["path"], storage.join(corpus_remote, part["path"]))
            marker = {"fingerprint": shards_fp, "shards": written, "corpus": corpus}
            write_marker(remote, marker)
        if storage.is_url(self.output):  # the statistics read the local copy (shard names say their content)
            self._local([storage.join(remote, shard["path"]) for shard in marker["shards"]])
            self._local([storage.join(corpus_remote, part["path"]) for part in marker.get("corpus", [])])
            write_marker(local, marker)
        committed = {
            (str(local), remote): {shard["path"] for shard in marker["shards"]} | {MARKER},
            (str(corpus_local), corpus_remote): {part["path"] for part in marker.get("corpus", [])},
        }
        for folders, paths in committed.items():
            for folder in set(folders):
                for path in storage.list_files(folder):
                    if path[len(folder) + 1 :] not in paths:
                        storage.delete(path)
        return marker["shards"], shards_fp[:8]

    def _write_quarantine(self, ingest: Checkpoint) -> None:
        """Rows that could not be read or mapped, with their original bytes, place and reason."""
        target = self.run_dir / "quarantine"
        tmp = self.run_dir / "quarantine.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        bad = (
            pl.scan_parquet(self._local(ingest.files()))  # read as every checkpoint is: through core.storage
            .filter(pl.col(DROP).is_not_null())
            .select(
                "source",
                "origin",
                pl.col(DROP).alias("reason"),
                pl.col(DETAIL).alias("detail"),
                pl.col(RAW).alias("raw"),
            )
            .sort("source", "origin")
            .collect()
        )
        bad.write_parquet(tmp / "part-00000.parquet")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
