"""Mining pools wider than a source's own positives (every source of the language, a named corpus),
the approximate index for large pools, and bad pool input: on real XQuAD-R questions and paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from core.passages import CORPUS_DIR, DOC_ID, NEGATIVE_IDS, TEXT
from core.record import DROP, FLAGS, WORK_SCHEMA
from pipeline.api import load_manifest, run
from pipeline.engine.stage import RunContext
from pipeline.ops.retrieval import AnnSearch, DenseSearch
from pipeline.stages.mine_negatives import POOL_PASSAGE, MineNegatives, MineNegativesConfig
from tests.conftest import write_manifest, xquad_paragraphs


@pytest.fixture(scope="module")
def paragraphs(shared_data) -> dict[str, list[dict]]:
    """Per language, one entry per paragraph: its text and its questions."""
    return {
        lang: [
            {"text": p["context"], "questions": [qa["question"] for qa in p["qas"]]}
            for p in xquad_paragraphs(shared_data, lang)
        ]
        for lang in ("en", "zh")
    }


def _records(paras: list[dict], source: str, lang: str, task: str = "retrieval") -> list[dict]:
    if task == "corpus":  # passages only, the text in `query`
        return [{"source": source, "task": task, "query": p["text"], "query_lang": lang} for p in paras]
    return [
        {"source": source, "task": task, "query": q, "positive": p["text"], "query_lang": lang}
        for p in paras
        for q in p["questions"][:2]
    ]


def _mine(records: list[dict], **config) -> list[dict]:
    rows = [{"id": str(i), "licence": "x", "origin": f"f:{i}", **r} for i, r in enumerate(records)]
    sources = tuple(dict.fromkeys(r["source"] for r in rows))
    stage = MineNegatives(MineNegativesConfig(stage="mine_negatives", **config), RunContext(Path("."), sources))
    return stage(pa.Table.from_pylist(rows, schema=WORK_SCHEMA)).to_pylist()


def test_pools_by_source_by_language_and_from_a_named_corpus(paragraphs):
    en, zh = paragraphs["en"], paragraphs["zh"]
    a, b = en[:60], en[60:120]  # two sources of the same language, different paragraphs
    texts_a, texts_b = {p["text"] for p in a}, {p["text"] for p in b}
    records = _records(a, "a", "eng_Latn") + _records(b, "b", "eng_Latn")

    own = [m for m in _mine(records) if m["source"] == "a"]
    assert all(set(m["negatives"]) <= texts_a for m in own)
    wide = [m for m in _mine(records, pool="language") if m["source"] == "a"]
    assert sum(bool(set(m["negatives"]) & texts_b) for m in wide) > 0.5 * len(wide)
    assert all(m["positive"] not in m["negatives"] for m in wide)

    # A named corpus: B's paragraphs (English) and Chinese paragraphs; A's queries mine only the
    # English corpus passages, their positives lie outside the pool and are still scored.
    corpus = _records(b, "wiki", "eng_Latn", "corpus") + _records(zh[:40], "wiki", "cmn_Hans", "corpus")
    queries = _records(a, "a", "eng_Latn") + _records(zh[40:50], "a", "cmn_Hans")
    out = _mine(queries + corpus, pool="corpus", corpus="wiki")
    mined = [m for m in out if m["source"] == "a" and m["query_lang"] == "eng_Latn"]
    assert sum(len(m["negatives"]) > 0 for m in mined) > 0.9 * len(mined)
    assert all(set(m["negatives"]) <= texts_b for m in mined)
    assert all(max(m["negative_scores"], default=0) <= 0.95 * m["positive_score"] for m in mined)
    assert [m[DROP] for m in out if m["source"] == "wiki"] == [POOL_PASSAGE] * len(corpus)
    zh_rows = [m for m in out if m["source"] == "a" and m["query_lang"] == "cmn_Hans"]
    assert zh_rows and all(set(m["negatives"]) <= {p["text"] for p in zh[:40]} for m in zh_rows)
    # the negatives' language is their passages' (the corpus rows' tags), so the passage table has one
    assert {m["negatives_lang"] for m in mined} == {"eng_Latn"} and {m["negatives_lang"] for m in zh_rows} == {
        "cmn_Hans"
    }

    # Queries of a language the corpus lacks: kept, without negatives, and counted.
    lonely = _mine(_records(a[:5], "a", "deu_Latn") + corpus, pool="corpus", corpus="wiki")
    assert [m[FLAGS][0]["reason"] for m in lonely if m["source"] == "a"] == ["mining_skipped:empty_pool"] * 10
    # Two questions on the one German paragraph of their source: a pool of one passage, nothing to mine.
    alone = _mine(_records(a[:1], "a", "deu_Latn") + _records(a[1:], "a", "eng_Latn"))
    german = [m for m in alone if m["query_lang"] == "deu_Latn"]
    assert len(german) == 2 and all(
        m[FLAGS][0]["reason"] == "mining_skipped:pool_too_small" and not m["negatives"] for m in german
    )


def test_approximate_index_finds_what_exact_search_finds():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)
    pool = centres[rng.integers(0, 50, 6000)] + 0.5 * rng.standard_normal((6000, 32)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[rng.integers(0, 5000, 200)] + 0.2 * rng.standard_normal((200, 32)).astype(np.float32)
    positives = rng.integers(5000, 6000, 200)  # outside the 5,000 candidates: scored, never returned
    exact = DenseSearch(pool, queries, candidates=5000)(list(range(200)), positives, 100)
    ann = AnnSearch(pool, queries, candidates=5000, nprobe=8)
    found = ann(list(range(200)), positives, 100)
    recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / 100 for f, e in zip(found[0], exact[0])])
    assert recall > 0.9 and all(f.max() < 5000 for f in found[0])
    assert np.allclose(found[2], exact[2]) and np.allclose(found[2], np.einsum("ij,ij->i", queries, pool[positives]))
    again = AnnSearch(pool, queries, candidates=5000, nprobe=8)(list(range(200)), positives, 100)
    assert all(np.array_equal(x, y) for x, y in zip(found[0], again[0]))  # the same index every run
    near = ann.neighbours(np.array([3, 7]), 5)
    assert [3 not in near[0], 7 not in near[1], len(near[0])] == [True, True, 5]


def test_a_named_corpus_with_broken_rows_is_quarantined_and_the_rest_is_the_pool(paragraphs, tmp_path):
    corpus = tmp_path / "wiki.jsonl"
    lines = [json.dumps({"text": p["text"]}).encode() for p in paragraphs["en"][60:100]]
    corpus.write_bytes(b"\n".join([*lines[:20], b'{"text": "broken', b"{}", *lines[20:]]) + b"\n")
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "\n".join(json.dumps({"q": q, "p": p["text"]}) for p in paragraphs["en"][:30] for q in p["questions"][:1])
    )
    sources = [
        {
            "name": "qa",
            "task": "retrieval",
            "path": str(queries),
            "columns": {"query": "q", "positive": "p"},
            "licence": "x",
        },
        {
            "name": "wiki",
            "task": "corpus",
            "path": str(corpus),
            "columns": {"query": "text"},
            "licence": "CC-BY-SA-4.0",
        },
    ]
    stages = [{"stage": "mine_negatives", "pool": "corpus", "corpus": "wiki", "per_language": False}]
    run(load_manifest(write_manifest(tmp_path, sources, stages)), quiet=True, log=lambda m: None)
    quarantine = pl.read_parquet(tmp_path / "run" / "quarantine")
    assert sorted(quarantine["reason"].to_list()) == ["bad_json", "missing_field"]
    shards = pl.read_parquet(tmp_path / "run" / "shards" / "**" / "*.parquet")
    assert set(shards["source"]) == {"qa"} and shards.height == 30
    pool = {json.loads(line)["text"] for line in lines}
    corpus_table = dict(pl.read_parquet(tmp_path / "run" / CORPUS_DIR).select(DOC_ID, TEXT).iter_rows())
    # by id, texts in the passage table
    negatives = {corpus_table[i] for i in shards[NEGATIVE_IDS].explode().drop_nulls()}
    assert negatives <= pool and (shards[NEGATIVE_IDS].list.len() > 0).all()
    ledger = pl.read_parquet(tmp_path / "run" / "ledger.parquet")
    dropped = ledger.filter(pl.col("reason") == POOL_PASSAGE)["rows"].sum()
    assert dropped == 40  # every passage read is accounted for: the pool, or the quarantine


def test_dedup_ranks_pool_sources_after_every_source_of_records(tmp_path):
    from pipeline.stages.exact_dedup import ExactDedupConfig
    from sources.config import SourceConfig

    def source(name: str, task: str) -> SourceConfig:
        return SourceConfig(
            name=name,
            task=task,
            path=str(tmp_path / "x.jsonl"),
            columns={"query": "q", "label": "l"} if task != "corpus" else {"query": "q"},
            licence="x",
        )

    (tmp_path / "x.jsonl").write_text("{}\n")
    sources = {"wiki": source("wiki", "corpus"), "qa": source("qa", "clustering")}  # the pool listed first
    context = RunContext(tmp_path, ("wiki", "qa"), sources)
    assert ExactDedupConfig(stage="exact_dedup").ranks(context) == {"qa": 0, "wiki": 1}
    # unless named
    assert ExactDedupConfig(stage="exact_dedup", priority=["wiki"]).ranks(context) == {"wiki": 0, "qa": 1}
