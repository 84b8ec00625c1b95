"""Dense hard-negative mining: exact sharded search, a run on Ray with a local model, and resume of
mining shards after the run is killed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.ops.embed import Embedder, load_encoder
from pipeline.ops.retrieval import DenseSearch
from tests.conftest import (
    ROOT,
    SAMPLES,
    kill_tree,
    run_cli,
    shard_digests,
    write_manifest,
)


def test_sharded_dense_search_equals_a_full_sort():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((1000, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[rng.integers(0, 1000, 300)] + 0.3 * rng.standard_normal((300, 16)).astype(np.float32)
    positives = rng.integers(0, 1000, 300)
    ranked, scored, pos = DenseSearch(pool, queries, shard_rows=64)(list(range(300)), positives, 50)
    full = queries @ pool.T
    for q in range(300):
        expected = np.argsort(-full[q], kind="stable")[:50]
        assert ranked[q].tolist() == expected.tolist()
        assert np.allclose(scored[q], full[q][expected], atol=1e-5)
    assert np.allclose(pos, full[np.arange(300), positives], atol=1e-5)


class _Recording:
    """The real model, with a record of the token ids of each batch it was asked to embed."""

    def __init__(self, model):
        self.model, self.tokenizer, self.max_seq_length, self.batches = model, model.tokenizer, model.max_seq_length, []
        self.device = model.device

    def __call__(self, features):
        mask = features["attention_mask"].bool()
        self.batches.append([ids[m].tolist() for ids, m in zip(features["input_ids"], mask)])
        return self.model(features)

    def get_embedding_dimension(self):
        return self.model.get_embedding_dimension()


def test_embedder_embeds_each_distinct_text_once_in_length_sorted_batches_and_reuses_its_cache(small_model, tmp_path):
    import gzip
    import json

    rows = [json.loads(line) for line in gzip.open(SAMPLES / "xquad_r" / "en.jsonl.gz", "rt")][:40]
    texts = [r["context"] for r in rows] + [r["question"] for r in rows]  # contexts repeat (several questions each)
    model = _Recording(load_encoder(str(small_model)))
    vectors = Embedder(lambda: model, batch_size=8, cache=tmp_path / "cache")(texts, "passage: ")
    distinct = sorted({"passage: " + t for t in texts})
    expected = model.tokenizer(distinct, truncation=True, max_length=model.max_seq_length)["input_ids"]
    embedded = [ids for b in model.batches for ids in b]
    assert sorted(embedded) == sorted(expected)  # each distinct text once, tokenized as the model would
    lengths = [len(ids) for ids in embedded]
    assert lengths == sorted(lengths) and max(len(b) for b in model.batches) == 8
    direct = model.model.encode(["passage: " + t for t in texts], normalize_embeddings=True)
    assert vectors.shape == direct.shape and np.allclose(vectors, direct, atol=1e-4)

    again = _Recording(model.model)
    assert np.array_equal(
        Embedder(lambda: again, batch_size=8, cache=tmp_path / "cache")(texts[::-1], "passage: "), vectors[::-1]
    )
    assert again.batches == []  # a re-run reads every chunk back


def test_embedder_leaves_a_models_own_default_prompt_to_its_encode(small_model):
    model = load_encoder(str(small_model))
    model.prompts, model.default_prompt_name = {"query": "query: "}, "query"
    texts = ["Wer verlor?", "Who lost the game?"]
    vectors = Embedder(lambda: model, batch_size=8)(texts)
    assert np.allclose(vectors, model.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert not np.allclose(vectors, model.encode(texts, prompt="", normalize_embeddings=True), atol=1e-3)


def _manifest(folder: Path, model: Path) -> Path:
    sources = [
        {
            "name": "xquad_r",
            "task": "retrieval",
            "path": str(SAMPLES / "xquad_r" / "[ez][nh].jsonl.gz"),
            "columns": {"query": "question", "positive": "context"},
            "licence": "CC-BY-SA-4.0",
        }
    ]
    stages = [
        {"stage": "langid", "model": "lid176"},  # the faster model: which one tags does not matter here
        {"stage": "mine_negatives", "retriever": "dense", "model": str(model), "shard_queries": 40},
    ]
    return write_manifest(folder, sources, stages)


@pytest.mark.slow
def test_dense_mining_run_is_killed_and_resumes_without_redoing_finished_shards(small_model, tmp_path):
    (tmp_path / "clean").mkdir()
    clean = run_cli("run", str(_manifest(tmp_path / "clean", small_model)), "--quiet")
    assert clean.returncode == 0, clean.stderr[-3000:]
    shards = pl.read_parquet(tmp_path / "clean" / "run" / "shards" / "**" / "*.parquet")
    assert shards.height == 2380 and not (tmp_path / "clean" / "run" / "work").exists()
    assert (
        shards["negative_ids"].list.len() == 24
    ).mean() > 0.5  # a weak (lexical) model: many candidates outscore the positive
    assert (shards["negative_scores"].list.max() <= 0.95 * shards["positive_score"] + 1e-6).all()
    assert not shards.filter(pl.col("negative_ids").list.contains(pl.col("positive_id"))).height

    manifest = _manifest(tmp_path, small_model)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(manifest), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(finished := list((tmp_path / "run" / "work").glob("*/mined/*.parquet"))) < 10:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before mining shards were written"
        time.sleep(0.2)
    kill_tree(proc.pid)  # the driver and every Ray process it started
    proc.wait()
    finished = list((tmp_path / "run" / "work").glob("*/mined/*.parquet"))
    done_rows = sum(pl.read_parquet(p).height for p in finished)
    assert 0 < done_rows < 2380

    resumed = run_cli("run", str(manifest), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ledger = pl.read_parquet(tmp_path / "run" / "ledger.parquet")
    flagged = ledger.filter(pl.col("kind") == "flagged", pl.col("reason") == "mining_resumed")["rows"].sum()
    assert flagged == done_rows  # every finished shard was read back, none mined again
    assert shard_digests(tmp_path / "run") == shard_digests(tmp_path / "clean" / "run")


@pytest.mark.parametrize("neighbours_by", ["lexical", "retriever"])
def test_dense_mining_drops_the_positives_lexical_neighbours_by_default(small_model, neighbours_by):
    """By default the positive's neighbours are found with BM25 whatever the retriever: no kept negative
    is among them; with `neighbours_by: retriever` (the model's neighbours) some are."""
    import gzip
    import json

    import pyarrow as pa

    from core.record import WORK_SCHEMA
    from pipeline.engine.stage import RunContext
    from pipeline.ops.retrieval import Bm25Search
    from pipeline.stages.mine_negatives import MineNegatives, MineNegativesConfig

    rows = [json.loads(line) for line in gzip.open(SAMPLES / "xquad_r" / "en.jsonl.gz", "rt")][:300]
    records = [
        {"id": str(i), "source": "x", "task": "retrieval", "query": r["question"], "positive": r["context"],
         "licence": "x", "origin": f"f:{i}"}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    config = MineNegativesConfig(
        stage="mine_negatives", retriever="dense", model=str(small_model), neighbours_by=neighbours_by
    )
    mined = MineNegatives(config, RunContext(Path("."), ("x",)))(pa.Table.from_pylist(records, schema=WORK_SCHEMA))
    pool = sorted({r["context"] for r in rows})
    lexical = Bm25Search(pool, [], len(pool))
    positives = sorted({pool.index(r["context"]) for r in rows})
    near = {
        pool[p]: {pool[n] for n in found} for p, found in zip(positives, lexical.neighbours(np.array(positives), 8))
    }
    kept = [set(texts or []) for texts in mined.column("negatives").to_pylist()]  # texts: outside a run
    assert sum(map(len, kept)) > 20 * len(rows)
    hits = sum(len(k & near[r["context"]]) for k, r in zip(kept, rows))
    assert (hits == 0) if neighbours_by == "lexical" else (hits > 0)
