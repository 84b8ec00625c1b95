"""The shipped stage-2 manifest end to end, offline: every task type in the shards, instructed, with
mined or constructed negatives, and the mixing plan written."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_stage2_sample_run_has_every_task_instructed_with_negatives(tmp_path):
    manifest = yaml.safe_load((ROOT / "manifests" / "stage2.yaml").read_text(encoding="utf-8"))
    manifest["output"] = str(tmp_path / "run")
    for source in manifest["sources"]:
        source["path"] = str(ROOT / "manifests" / source["path"])
    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    result = run_cli("run", str(path), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    shards = pl.read_parquet(tmp_path / "run" / "shards" / "**" / "*.parquet")
    assert set(shards["task"]) == {"retrieval", "bitext", "sts", "pair_classification", "classification", "clustering"}
    assert shards["instruction"].is_not_null().all() and shards["positive"].is_not_null().all()
    retrieval = shards.filter(task="retrieval")
    assert (retrieval["negatives"].list.len() <= 24).all() and retrieval["negatives"].list.len().mean() > 20
    assert (retrieval["negative_scores"].list.len() == retrieval["negatives"].list.len()).all() and retrieval["positive_score"].is_not_null().all()
    assert (shards.filter(task="classification")["negatives"].list.len() == 1).all()
    assert shards.filter(task="clustering")["negatives"].list.len().min() >= 1
    assert (shards.filter(task="sts")["score"] >= 4.0).all()
    reports = tmp_path / "run" / "reports"
    mining = pl.read_csv(next(reports.glob("*-mine_negatives.csv")))
    assert 0.99 * retrieval.height <= mining["queries"].sum() <= retrieval.height
    assert 0 < mining["removed_rank_window"].sum() <= 5 * mining["queries"].sum()
    assert (mining["positive_score_p50"] > mining["hardest_negative_score_p50"]).all() and (mining["margin_p50"] > 0).all()
    mix = pl.read_csv(next(reports.glob("*-mix.csv")))
    assert mix["rows_after"].sum() == shards.height and abs(mix["share_after"].sum() - 1) < 1e-9
    plan = json.loads((tmp_path / "run" / "mix_plan.json").read_text())
    assert {p["source"] for p in plan} == set(shards["source"]) and all(p["rate"] == 1.0 for p in plan)  # no source reaches 80,000
    ledger = pl.read_parquet(tmp_path / "run" / "ledger.parquet")
    assert ledger.filter(kind="flagged", reason="negatives_filtered:above_positive_ratio")["rows"].sum() > 0
