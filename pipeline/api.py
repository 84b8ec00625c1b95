"""The pipeline's entry points with the built-in stages: load a manifest, run it.

from pipeline.api import load_manifest, run
result = run(load_manifest("manifests/stage1.yaml"))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pipeline.engine import manifest as manifest_mod
from pipeline.engine.card import write_card
from pipeline.engine.lock import RunLocked, run_lock
from pipeline.engine.manifest import Manifest
from pipeline.engine.runner import Runner, RunResult, publish
from pipeline.reporting import dashboard, stats
from pipeline.stages import REGISTRY


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest against the registered stages (raises `ConfigError`)."""
    return manifest_mod.load_manifest(path, REGISTRY)


def json_schema() -> dict[str, Any]:
    return manifest_mod.json_schema(REGISTRY)


def run(
    manifest: Manifest,
    ray_address: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run (or resume) a manifest in its output folder, which it holds locked: steps, ledger and
    shards, then the statistics, the dashboard and the dataset card (all uploaded when the output is
    in object storage)."""
    started = time.perf_counter()
    with run_lock(manifest.output, log) as lock:
        result = Runner(manifest, REGISTRY, ray_address, quiet, log, verbose).run()
        if manifest.stats.enabled:
            log("statistics and dashboard")
            settings = manifest.stats
            stats.compute(
                result.run_dir,
                settings.tokenizer,
                settings.reference,
                settings.samples_per_language,
                progress=not quiet,
            )
            result.dashboard = dashboard.render(result.run_dir)
        result.seconds = time.perf_counter() - started
        write_card(manifest, result)
        if getattr(lock, "lost", False):  # another run took the output over (our lease expired): publish nothing
            raise RunLocked(f"{manifest.output}: this run's lease expired and another run took the output over")
        publish(result.run_dir, result.output)
    return result
