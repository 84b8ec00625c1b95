"""End to end, as a user runs it: the CLI on the shipped samples with a real embedded Ray cluster,
crash and resume, a locked folder, bad input, and a two-node cluster on loopback."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.engine.lock import RunLock
from tests.conftest import (
    ROOT,
    SAMPLES,
    STAGE1_STAGES,
    kill_tree,
    run_cli,
    shard_digests,
    stage1_manifest,
    steps_in,
    write_manifest,
)

pytestmark = pytest.mark.slow


def test_run_folder_ledger_and_readers(stage1_run):
    for name in ("shards", "stages", "quarantine", "ledger.parquet", "README.md"):
        assert (stage1_run / name).exists(), name
    ledger = pl.read_parquet(stage1_run / "ledger.parquet")
    per_step = (
        ledger.group_by("step", "source", "kind")
        .agg(pl.col("rows").sum())
        .pivot("kind", index=["step", "source"], values="rows")
        .fill_null(0)
    )
    assert per_step.height == 16  # 8 steps x 2 sources
    assert (per_step["in"] == per_step["out"] + per_step["dropped"]).all()
    ingest_in = ledger.filter(step="00-ingest", kind="in")["rows"].sum()
    assert ingest_in == 8 * 1190 + 37 * 250  # every line of every sample file
    final_out = ledger.filter(step="07-near_dedup", kind="out")["rows"].sum()
    assert (
        0
        < ledger.filter(step="07-near_dedup", kind="dropped", reason="near_duplicate")["rows"].sum()
        < 0.02 * final_out
    )
    # The held-out split (148 questions of 6 articles per language) is decontaminated away.
    held_out = ledger.filter(step="05-decontaminate", kind="dropped", reason="eval_overlap:xquad_r_heldout")
    assert 0.95 * 8 * 148 <= held_out.filter(source="xquad_r")["rows"].sum() <= 8 * 148

    import datasets

    by_pyarrow = pq.read_table(stage1_run / "shards")
    by_polars = pl.read_parquet(stage1_run / "shards" / "**" / "*.parquet")
    by_datasets = datasets.load_dataset(str(stage1_run), split="train")
    one_source = datasets.load_dataset(str(stage1_run), "xquad_r", split="train")
    assert by_pyarrow.num_rows == by_polars.height == len(by_datasets) == final_out
    assert set(one_source["source"]) == {"xquad_r"} and len(one_source) == by_polars.filter(source="xquad_r").height
    assert by_polars["id"].n_unique() == by_polars.height
    langs = (
        by_polars.filter(source="xquad_r")["query_lang"]
        .value_counts()
        .sort("count", descending=True)["query_lang"]
        .head(8)
        .to_list()
    )
    assert set(langs) == {
        "arb_Arab",
        "deu_Latn",
        "ell_Grek",
        "eng_Latn",
        "spa_Latn",
        "hin_Deva",
        "rus_Cyrl",
        "cmn_Hans",
    }
    assert by_polars["dup_count"].min() >= 1
    held_out_contexts = pl.read_ndjson(sorted((SAMPLES / "xquad_r_heldout").glob("*.jsonl.gz")))["context"]
    assert not by_polars.filter(pl.col("positive").is_in(held_out_contexts.implode())).height
    # Bitext is flagged cross-lingual, not dropped; its declared English side is verified.
    flagged = ledger.filter(step="02-langid", kind="flagged", source="sib200_bitext")
    tagged = ledger.filter(step="02-langid", kind="out", source="sib200_bitext")["rows"].sum()
    cross = flagged.filter(reason="cross_lingual")["rows"].sum()
    assert 0.9 * tagged <= cross < tagged
    assert flagged.filter(reason="language_mismatch")["rows"].sum() < 0.02 * tagged
    assert set(flagged.filter(reason="language_mismatch")["language"].to_list()) <= {"eng_Latn"}
    bitext = by_polars.filter(source="sib200_bitext")
    xquad = by_polars.filter(source="xquad_r")  # question and paragraph share a language: few model slips
    assert bitext["cross_lingual"].sum() >= 0.9 * bitext.height and xquad["cross_lingual"].sum() < 0.03 * xquad.height
    assert (bitext["query_lang"] == "eng_Latn").sum() >= 0.98 * bitext.height
    # every file of a partition holds one source, at most rows_per_shard rows
    for path in (stage1_run / "shards").rglob("*.parquet"):
        table = pq.read_table(path)
        assert table.num_rows <= 4000 and set(table["source"].to_pylist()) == {path.parent.name}


def test_rerun_is_a_no_op_and_changed_settings_rerun_from_that_stage(stage1_run, tmp_path):
    before = shard_digests(stage1_run)
    manifest = stage1_run.parent / "manifest.yaml"
    again = run_cli("run", str(manifest), "--quiet")
    assert again.returncode == 0 and again.stdout.count("(done before)") == steps_in(manifest)
    assert shard_digests(stage1_run) == before


def test_sigkill_at_random_moments_then_resume_gives_identical_shards(stage1_run, tmp_path):
    manifest = stage1_manifest(tmp_path)
    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(manifest), "--quiet"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(4, 22))
        kill_tree(proc.pid)  # the driver and every Ray process it started
        proc.wait()
    finished = run_cli("run", str(manifest), "--quiet")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert shard_digests(tmp_path / "run") == shard_digests(stage1_run)


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    manifest = stage1_manifest(tmp_path)
    with RunLock(tmp_path / "run"):
        result = run_cli("run", str(manifest), "--quiet")
    assert result.returncode == 3 and "another run" in result.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_bad_input_ends_in_quarantine_and_the_run_finishes(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b"\n".join(
            [
                json.dumps(
                    {"question": "Where is the Eiffel Tower?", "context": "The Eiffel Tower is in Paris."}
                ).encode(),
                b'{"question": "broken',
                '{"question": "caf\u00e9", "context": "latin-1"}'.encode("latin-1"),
                json.dumps({"question": "", "context": "empty query"}).encode(),
                json.dumps({"question": "x" * (20 << 20), "context": "20 MB"}).encode(),
                json.dumps({"context": "no question column"}).encode(),
            ]
        )
        + b"\n"
    )
    sources = [
        {
            "name": "bad",
            "task": "retrieval",
            "path": str(bad),
            "columns": {"query": "question", "positive": "context"},
            "licence": "CC0-1.0",
        }
    ]
    result = run_cli("run", str(write_manifest(tmp_path, sources, STAGE1_STAGES)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    quarantine = pl.read_parquet(tmp_path / "run" / "quarantine")
    assert dict(zip(quarantine["origin"].str.extract(r":(\d+)$").to_list(), quarantine["reason"])) == {
        "2": "bad_json",
        "3": "invalid_encoding",
        "4": "empty_text",
        "5": "oversize",
        "6": "missing_field",
    }
    assert pl.read_parquet(tmp_path / "run" / "shards" / "**" / "*.parquet")["query"].to_list() == [
        "Where is the Eiffel Tower?"
    ]


def test_same_manifest_on_a_two_node_loopback_cluster(stage1_run, loopback_cluster, tmp_path):
    result = run_cli("run", str(stage1_manifest(tmp_path)), "--quiet", "--ray-address", loopback_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_digests(tmp_path / "run") == shard_digests(stage1_run)


def test_datasets_reads_each_run_not_a_cached_one(tmp_path):
    """`datasets` caches local datasets by folder name and file patterns: two runs in folders of the
    same name, with different rows, must each load their own rows."""
    import datasets

    loaded = []
    for name, lines in (("a", ["Where is the Eiffel Tower?"]), ("b", ["What is MRL?", "Who wrote Faust?"])):
        folder = tmp_path / name
        folder.mkdir()
        data = folder / "q.jsonl"
        data.write_text(
            "".join(json.dumps({"question": q, "context": "a passage"}) + "\n" for q in lines), encoding="utf-8"
        )
        sources = [
            {
                "name": "s",
                "task": "retrieval",
                "path": str(data),
                "columns": {"query": "question", "positive": "context"},
                "licence": "CC0-1.0",
            }
        ]
        result = run_cli("run", str(write_manifest(folder, sources, [])), "--quiet")
        assert result.returncode == 0, result.stderr[-3000:]
        loaded.append(sorted(datasets.load_dataset(str(folder / "run"), split="train")["query"]))
    assert loaded == [["Where is the Eiffel Tower?"], ["What is MRL?", "Who wrote Faust?"]]
