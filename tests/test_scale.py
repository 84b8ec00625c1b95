"""Runs at their users' size, at test scale: generated input with known duplicates (near-dedup against
the ground truth), a run killed during near_dedup that resumes there with the same shards, checkpoints
pruned to the last one, and steps the machine cannot hold stopping with a clear message (disk,
memory, a worker process killed), a re-run resuming at the failed step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.generate_corpus import generate
from bench.scale import near_duplicate_scores
from pipeline.engine import execute, resources
from pipeline.engine.manifest import load_manifest
from pipeline.engine.runner import Runner
from pipeline.engine.stage import Registry
from pipeline.ops import exchange
from pipeline.ops.tasks import WorkerLost
from pipeline.stages import REGISTRY
from tests.conftest import ROOT, kill_tree, shard_digests
from tests.stages_for_tests import KillWorker

ROWS = 12_000
KILLED_IN_COMPONENTS = """
import sys, time
from pipeline.stages import near_dedup
def pause(*args, **kwargs):
    print("components", flush=True)
    time.sleep(600)  # where the test kills the run (-9, every process)
near_dedup.connected_components = pause
from pipeline.cli import main
sys.exit(main(["run", sys.argv[1], "--quiet"]))
"""


@pytest.fixture(scope="module")
def generated(shared_data, tmp_path_factory) -> Path:
    """12,000 generated bitext rows (8% exact, 4% near copies), the manifest tagging with lid176."""
    folder = tmp_path_factory.mktemp("generated")
    generate(folder, ROWS, 3, 0.08, 0.04, 1.0, 0, shared_data)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    for stage in manifest["stages"]:
        if stage["stage"] == "langid":
            stage["model"] = "lid176"  # the faster model: which one tags does not matter here
    manifest["stats"] = {"enabled": False}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def manifest_copy(generated: Path, folder: Path, **changes) -> Path:
    manifest = yaml.safe_load((generated / "manifest.yaml").read_text())
    manifest["sources"][0]["path"] = str(generated / "part-*.tsv.gz")
    manifest.update(output=str(folder / "run"), **changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run(manifest: Path, registry: Registry = REGISTRY) -> Path:
    Runner(load_manifest(manifest, registry), registry, quiet=True, log=lambda m: None).run()
    return manifest.parent / "run"


@pytest.mark.slow
def test_generated_duplicates_are_found_and_a_run_killed_in_near_dedup_resumes_there(generated, tmp_path, monkeypatch):
    monkeypatch.setattr(execute, "POOL_MIN_ROWS", 0)  # every step in worker processes, as at scale
    whole = run(manifest_copy(generated, tmp_path / "whole"))
    scores = near_duplicate_scores(whole, generated)
    assert scores["should_drop"] >= 0.03 * ROWS and scores["precision"] >= 0.95 and scores["recall"] >= 0.95, scores
    truth = json.loads(json.dumps(scores))
    assert truth["right"] <= truth["dropped"]
    # The same run killed (every process) in near_dedup, between candidate pairs and components; then again.
    manifest = manifest_copy(generated, tmp_path / "killed")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_IN_COMPONENTS, str(manifest)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("components"):
            break
    # the killed step's scratch space: its signatures were written there (and discarded once read)
    assert (manifest.parent / "run" / "work").is_dir()
    kill_tree(process.pid)
    process.wait()
    stages = manifest.parent / "run" / "stages"
    done = {
        p.name: json.loads((p / "_SUCCESS.json").read_text())["attempt"]
        for p in stages.iterdir()
        if (p / "_SUCCESS.json").exists()
    }
    assert "04-near_dedup" not in done and "03-exact_dedup" in done
    resumed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(manifest), "--quiet"], cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "running 03-exact_dedup" not in resumed.stderr and "running 04-near_dedup" in resumed.stderr
    assert {p: json.loads((stages / p / "_SUCCESS.json").read_text())["attempt"] for p in done} == done  # untouched
    assert shard_digests(manifest.parent / "run") == shard_digests(whole)
    assert not (manifest.parent / "run" / "work").exists()


@pytest.mark.slow
def test_keep_checkpoints_last_holds_one_steps_rows_and_still_resumes(generated, tmp_path):
    pruned = run(manifest_copy(generated, tmp_path / "last", keep_checkpoints="last"))
    markers = {p.name: json.loads((p / "_SUCCESS.json").read_text()) for p in (pruned / "stages").iterdir()}
    assert [n for n, m in markers.items() if not m.get("pruned")] == ["04-near_dedup"]
    for name, marker in markers.items():  # a pruned step keeps its marker and ledger, no rows
        files = [p.name for p in (pruned / "stages" / name / marker["attempt"]).iterdir()]
        assert files == ["_ledger.parquet"] if marker.get("pruned") else "_ledger.parquet" in files
    kept = run(manifest_copy(generated, tmp_path / "all"))
    assert shard_digests(pruned) == shard_digests(kept)
    # A changed near_dedup needs rows only the sources still hold: every step runs again.
    changed = manifest_copy(
        generated,
        tmp_path / "last",
        keep_checkpoints="last",
        stages=[
            *yaml.safe_load((generated / "manifest.yaml").read_text())["stages"][:3],
            {"stage": "near_dedup", "fields": ["query", "positive"], "threshold": 0.7},
        ],
    )
    changed_stages = yaml.safe_load(changed.read_text())["stages"]
    changed_stages[1]["model"] = "lid176"
    changed.write_text(
        yaml.safe_dump({**yaml.safe_load(changed.read_text()), "stages": changed_stages}, sort_keys=False)
    )
    attempts = {n: m["attempt"] for n, m in markers.items()}
    run(changed)
    after = {p.name: json.loads((p / "_SUCCESS.json").read_text())["attempt"] for p in (pruned / "stages").iterdir()}
    assert all(after[n] != attempts[n] for n in attempts)
    assert [
        n
        for n, m in ((p.name, json.loads((p / "_SUCCESS.json").read_text())) for p in (pruned / "stages").iterdir())
        if not m.get("pruned")
    ] == ["04-near_dedup"]


def test_a_step_the_disk_cannot_hold_stops_before_it_starts_and_resumes_there(generated, tmp_path, monkeypatch):
    real = resources.free_disk
    no_room = tmp_path / "no_room"
    monkeypatch.setattr(
        resources, "free_disk", lambda path: resources.DISK_RESERVE + 1000 if no_room.exists() else real(path)
    )
    no_room.touch()
    with pytest.raises(
        resources.ResourceShortage, match=r"step 00-ingest needs about \d+ MB of free disk under .* GB are free"
    ):
        run(manifest_copy(generated, tmp_path / "empty"))
    no_room.unlink()
    folder = tmp_path / "disk"
    run(manifest_copy(generated, folder, stages=[{"stage": "normalize"}]))
    stages = folder / "run" / "stages"
    attempts = {p.name: json.loads((p / "_SUCCESS.json").read_text())["attempt"] for p in stages.iterdir()}
    longer = manifest_copy(
        generated, folder, stages=[{"stage": "normalize"}, {"stage": "exact_dedup", "key": ["query"]}]
    )
    no_room.touch()
    with pytest.raises(
        resources.ResourceShortage, match="step 02-exact_dedup needs about .* `keep_checkpoints: last`"
    ) as caught:
        run(longer)
    assert "the run resumes at this step" in str(caught.value)
    no_room.unlink()
    run(longer)
    after = {p.name: json.loads((p / "_SUCCESS.json").read_text())["attempt"] for p in stages.iterdir()}
    assert {k: after[k] for k in attempts} == attempts and "02-exact_dedup" in after


def test_memory_a_worker_needs_is_checked_and_a_killed_worker_is_reported(generated, tmp_path, monkeypatch):
    monkeypatch.setattr(execute, "POOL_MIN_ROWS", 0)
    monkeypatch.setattr(execute, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(resources, "available_memory", lambda: resources.MEMORY_RESERVE + (100 << 20))
    manifest = manifest_copy(generated, tmp_path / "memory", stages=[{"stage": "normalize"}])
    with pytest.raises(
        resources.ResourceShortage,
        match=r"step 00-ingest needs about \d+\.\d GB of memory per worker process.*GB are available",
    ):
        run(manifest)
    monkeypatch.undo()
    monkeypatch.setattr(execute, "POOL_MIN_ROWS", 0)
    registry = Registry((*(REGISTRY[n] for n in REGISTRY.names()), KillWorker))
    flag = tmp_path / "kill"
    flag.touch()
    killing = manifest_copy(
        generated, tmp_path / "killed", stages=[{"stage": "normalize"}, {"stage": "kill_worker", "when": str(flag)}]
    )
    with pytest.raises(WorkerLost, match="a worker process died .* the run resumes at this step"):
        run(killing, registry)
    flag.unlink()
    resumed = run(killing, registry)
    assert json.loads((resumed / "stages" / "01-normalize+02-kill_worker" / "_SUCCESS.json").read_text())["fingerprint"]


def test_copies_of_scratch_arrays_stay_within_their_share_of_the_disk(tmp_path, monkeypatch):
    """A node's copies of scratch arrays from object storage: beyond their share of the disk, the
    least recently read go first, never the one just asked for."""
    files = []
    for i in range(4):
        f = tmp_path / "step" / f"{i}.npy"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"x" * 1000)
        os.utime(f, (1000 + i, 1000 + i))  # read in this order
        files.append(f)
    monkeypatch.setattr(exchange, "CACHE_SHARE_OF_DISK", 2500 / shutil.disk_usage(tmp_path).total)
    exchange._evict(tmp_path, files[0])  # the oldest, just read again: kept
    assert [f.exists() for f in files] == [True, False, False, True]
