"""`bench/gpu_check.sh`, the one call that takes the GPU figures, runs on a CPU with `--tiny`, so the
script cannot rot between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_tiny_on_the_cpu(stage1_run):
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--tiny", "--shards", str(stage1_run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["tiny"] and {"torch", "device"} <= set(report["environment"])
    trainer, mining = report["trainer"], report["mining"]
    assert "error" not in trainer and "error" not in mining, (trainer.get("error"), mining.get("error"))
    assert set(trainer["ratio_over_sentence_transformers"]) == {"bare_loop", "ours_MRL_MLL", "ours_MRL_MLL_MEL"}
    # none to count on a CPU
    assert trainer["ours_MRL_MLL"]["samples_per_s"] > 0 and trainer["host_syncs_per_step"] is None
    assert mining["ratio_step"] > 0 and mining["queries"] == 1190
