"""Shared helpers: paths to the shipped samples and the shared real data, manifest writing."""

from __future__ import annotations

import os
import subprocess
import sys
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


STAGE1_STAGES = [{"stage": "normalize"}, {"stage": "langid"}, {"stage": "exact_dedup", "key": ["query", "positive"]}]


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA
