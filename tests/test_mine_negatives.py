"""Hard-negative mining with BM25 on XQuAD-R (real questions and Wikipedia paragraphs, English and
Chinese): the filters hold, scores are consistent, and positive-aware filtering lowers the share of
mined "negatives" that contain the gold answer (likely false negatives)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from core.record import FLAGS, WORK_SCHEMA
from pipeline.engine.stage import RunContext
from pipeline.stages.mine_negatives import MineNegatives, MineNegativesConfig
from tests.conftest import xquad_paragraphs


@pytest.fixture(scope="module")
def xquad(shared_data) -> dict[str, list[dict]]:
    return {
        lang: [
            {"query": qa["question"], "positive": p["context"], "answer": qa["answers"][0]["text"]}
            for p in xquad_paragraphs(shared_data, lang)
            for qa in p["qas"]
        ]
        for lang in ("en", "zh")
    }


def _mine(rows: list[dict], lang: str, **config) -> list[dict]:
    records = [
        {
            "id": str(i),
            "source": "xquad",
            "task": "retrieval",
            "query": r["query"],
            "positive": r["positive"],
            "licence": "x",
            "origin": f"f:{i}",
            "query_lang": lang,
        }
        for i, r in enumerate(rows)
    ]
    stage = MineNegatives(MineNegativesConfig(stage="mine_negatives", **config), RunContext(Path("."), ("xquad",)))
    return stage(pa.Table.from_pylist(records, schema=WORK_SCHEMA)).to_pylist()


def _false_negative_share(rows: list[dict], mined: list[dict], top: int) -> float:
    """Share of the `top` hardest mined negatives that contain the query's answer."""
    negatives = [(r["answer"], n) for r, m in zip(rows, mined) for n in (m["negatives"] or [])[:top]]
    return sum(answer in n for answer, n in negatives) / len(negatives)


def test_filters_hold_and_positive_aware_filtering_cuts_false_negatives(xquad):
    rows = xquad["en"]  # all 1,190 questions
    mined = _mine(rows, "eng_Latn")
    positives_of: dict[str, set[str]] = {}
    for r in rows:
        positives_of.setdefault(r["query"], set()).add(r["positive"])
    assert sum(bool(m["negatives"]) for m in mined) > 0.95 * len(rows)
    for r, m in zip(rows, mined):
        negs, scores = m["negatives"] or [], m["negative_scores"] or []
        assert len(negs) == len(scores) <= 24 and not set(negs) & positives_of[r["query"]]
        assert scores == sorted(scores, reverse=True) and all(s <= 0.95 * m["positive_score"] for s in scores)
    removed = {}
    for m in mined:
        for f in m[FLAGS] or []:
            removed[f["reason"]] = removed.get(f["reason"], 0) + f["count"]
    assert removed["negatives_filtered:rank_window"] > 0 and removed["negatives_filtered:above_positive_ratio"] > 0
    assert removed["negatives_filtered:positive_neighbour"] > 0
    assert _false_negative_share(rows, mined, top=1) <= 0.01  # the goal on every XQuAD-R development language
    unfiltered = _mine(
        rows, "eng_Latn", skip_top=0, max_score_ratio=None, near_dup_threshold=1.0, positive_neighbours=0
    )
    assert _false_negative_share(rows, mined, top=1) < 0.5 * _false_negative_share(rows, unfiltered, top=1)


def test_unspaced_script_and_per_task_counts(xquad):
    rows = xquad["zh"][:200]
    mined = _mine(rows, "cmn_Hans", num_negatives={"retrieval": 3}, sampling="random")
    assert sum(len(m["negatives"] or []) == 3 for m in mined) > 0.9 * len(rows)  # character tokens find candidates
    again = _mine(rows, "cmn_Hans", num_negatives={"retrieval": 3}, sampling="random")
    assert [m["negatives"] for m in mined] == [m["negatives"] for m in again]  # seeded
    none = _mine(rows, "cmn_Hans", num_negatives={"classification": 1})
    assert all(m["negatives"] is None for m in none)
