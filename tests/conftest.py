"""Shared helpers: paths to the shipped samples and the shared real data, manifest writing."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "manifests" / "samples"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_manifest(folder: Path, sources: list[dict], stages: list[dict] | None = None, **extra) -> Path:
    """A manifest in `folder` writing to `folder/run`."""
    data = {"output": "run", "sources": sources, "stages": stages if stages is not None else [], **extra}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def stage1_sources(xquad_glob: str = "*.jsonl.gz", bitext_glob: str = "*.tsv.gz") -> list[dict]:
    return [
        {"name": "xquad_r", "task": "retrieval", "path": str(SAMPLES / "xquad_r" / xquad_glob),
         "columns": {"query": "question", "positive": "context"}, "licence": "CC-BY-SA-4.0"},
        {"name": "sib200_bitext", "task": "bitext", "path": str(SAMPLES / "sib200_bitext" / bitext_glob),
         "columns": {"query": "source", "positive": "target"}, "licence": "CC-BY-SA-4.0", "language": {"query": "eng_Latn"}},
    ]


STAGE1_STAGES = [{"stage": "normalize"}, {"stage": "langid"}, {"stage": "exact_dedup", "key": ["query", "positive"]},
                 {"stage": "near_dedup", "fields": ["query", "positive"]}]


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def ray_local():
    """An embedded two-CPU Ray for tests that call a stage's Ray plan directly."""
    from pipeline import ray_cluster

    started = ray_cluster.start(None, 2, None, True)
    yield
    if started:
        ray_cluster.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


def shard_digests(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every shard file of a run, by path: equal digests mean byte-identical output."""
    shards = run_dir / "shards"
    return {str(p.relative_to(shards)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shards.rglob("*.parquet"))}


def _wait_for_nodes(ray_cli: str, address: str, env: dict, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = subprocess.run([ray_cli, "status", f"--address={address}"], env=env, capture_output=True, text=True, timeout=60).stdout
        active = status.split("Active:")[1].split("Pending:")[0] if "Active:" in status else ""
        if active.count("node_") >= count and f"/{count}.0 CPU" in status:
            return
        assert time.monotonic() < deadline, f"cluster did not reach {count} nodes:\n{status}"
        time.sleep(2)


@pytest.fixture(scope="session")
def loopback_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (a head and a worker node, one CPU each): its address."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"127.0.0.1:{random.Random().randint(20000, 40000)}"
    start = [ray_cli, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([*start, "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"], check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([*start, f"--address={address}"], check=True, env=env, capture_output=True, timeout=120)
        _wait_for_nodes(ray_cli, address, env, 2)
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
