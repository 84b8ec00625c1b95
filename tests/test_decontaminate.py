"""Evaluation-set decontamination: exact and n-gram overlap in spaced and unspaced scripts, drop or
flag, and the counts per evaluation set and language in the ledger of a real run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from core.record import DETAIL, DROP, FLAGS, WORK_SCHEMA
from pipeline.engine.stage import RunContext
from pipeline.stages.decontaminate import Decontaminate, DecontaminateConfig
from tests.conftest import SAMPLES, ready, run_cli, stage1_sources, write_manifest

XQUAD = SAMPLES / "xquad_r"


def _rows(lang: str) -> list[dict]:
    with gzip.open(XQUAD / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _stage(**extra) -> Decontaminate:
    sets = [
        {"name": "xquad_en", "path": str(XQUAD / "en.jsonl.gz"), "columns": ["question", "context"]},
        {"name": "xquad_zh", "path": str(XQUAD / "zh.jsonl.gz"), "columns": ["context"]},
    ]
    return ready(
        Decontaminate(
            DecontaminateConfig(stage="decontaminate", eval_sets=sets, **extra), RunContext(Path("."), ("s",))
        )
    )


def _batch(rows: list[dict]) -> pa.Table:
    base = {"id": "", "source": "s", "task": "retrieval", "licence": "x", "origin": "", "query_lang": "eng_Latn"}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=WORK_SCHEMA)


def test_exact_and_ngram_overlap_in_latin_and_han():
    en, zh = _rows("en"), _rows("zh")
    words = en[0]["context"].split()
    inserted = " ".join(words[: len(words) // 2] + ["four", "entirely", "new", "words"] + words[len(words) // 2 :])
    zh_edited = zh[0]["context"][:50] + "新的字" + zh[0]["context"][53:]
    half = (
        " ".join(words[: len(words) // 3])
        + " "
        + "Another paragraph entirely, about something else, written for this test only. " * 6
    )
    rows = [
        {
            "query": "  " + en[5]["question"].upper() + " ?!",
            "positive": "cooking pasta at home",
        },  # case and punctuation differ
        {"query": "what is it", "positive": inserted},  # a paragraph with an insertion
        {"query": "who", "positive": zh_edited},  # Chinese: character 13-grams
        {"query": "who", "positive": half},  # a third copied: under min_overlap
        {"query": "what", "positive": "a fresh sentence that no evaluation set holds"},
        {"query": "Which", "positive": None},  # a short common query is not matched by chance
    ]
    out = _stage()(_batch(rows)).to_pylist()
    assert [r[DROP] for r in out] == [
        "eval_overlap:xquad_en",
        "eval_overlap:xquad_en",
        "eval_overlap:xquad_zh",
        None,
        None,
        None,
    ]
    assert out[0][DETAIL] == "query: exact match in evaluation set xquad_en"
    assert out[1][DETAIL].startswith("positive: ") and "of its n-grams in evaluation set xquad_en" in out[1][DETAIL]
    flagged = _stage(action="flag", min_overlap=0.2)(_batch(rows)).to_pylist()
    assert all(r[DROP] is None for r in flagged)
    assert [r[FLAGS] for r in flagged][:4] == [
        [{"reason": "eval_overlap:xquad_en", "language": "eng_Latn", "count": None}]
    ] * 2 + [
        [{"reason": "eval_overlap:xquad_zh", "language": "eng_Latn", "count": None}],
        [{"reason": "eval_overlap:xquad_en", "language": "eng_Latn", "count": None}],
    ]


def test_eval_set_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no file matches"):
        DecontaminateConfig(stage="decontaminate", eval_sets=[{"name": "x", "path": str(tmp_path / "missing.jsonl")}])
    with pytest.raises(ValueError, match="has no column 'text'"):
        _ = ready(
            Decontaminate(
                DecontaminateConfig(
                    stage="decontaminate", eval_sets=[{"name": "x", "path": str(XQUAD / "en.jsonl.gz")}]
                ),
                RunContext(Path("."), ()),
            )
        )


@pytest.mark.slow
def test_run_counts_overlap_per_eval_set_and_language(tmp_path):
    stages = [
        {"stage": "normalize"},
        {"stage": "langid"},
        {
            "stage": "decontaminate",
            "eval_sets": [{"name": "xquad_en", "path": str(XQUAD / "en.jsonl.gz"), "columns": ["question"]}],
        },
    ]
    manifest = write_manifest(
        tmp_path, stage1_sources(xquad_glob="*.jsonl.gz", bitext_glob="eng_Latn-fra_Latn.tsv.gz"), stages
    )
    result = run_cli("run", str(manifest), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = pl.read_parquet(tmp_path / "run" / "ledger.parquet")
    hits = ledger.filter(step="03-decontaminate", kind="dropped", reason="eval_overlap:xquad_en")
    english = ledger.filter(step="03-decontaminate", kind="in", source="xquad_r", language="eng_Latn")["rows"].sum()
    assert hits.filter(source="xquad_r", language="eng_Latn")["rows"].sum() == english  # every English question
    # Every English question (1,190), whatever language ID made of the short ones, and little else.
    assert 1190 <= hits["rows"].sum() <= 1200
    assert "eval_overlap" in result.stdout  # the run summary shows the drop reason


def test_eval_set_from_a_saved_datasets_folder(tmp_path):
    import datasets

    en = _rows("en")
    datasets.Dataset.from_list([{"question": r["question"], "context": r["context"]} for r in en[:50]]).save_to_disk(
        str(tmp_path / "xq")
    )
    sets = [{"name": "xquad_hf", "format": "hf", "path": str(tmp_path / "xq"), "columns": ["question", "context"]}]
    stage = ready(
        Decontaminate(DecontaminateConfig(stage="decontaminate", eval_sets=sets), RunContext(Path("."), ("s",)))
    )
    out = stage(
        _batch(
            [
                {"query": en[3]["question"], "positive": "unrelated"},
                {"query": en[60]["question"], "positive": "unrelated"},
            ]
        )
    ).to_pylist()
    assert [r[DROP] for r in out] == ["eval_overlap:xquad_hf", None]
    with pytest.raises(ValueError, match="no column"):
        ready(
            Decontaminate(
                DecontaminateConfig(stage="decontaminate", eval_sets=[{**sets[0], "columns": ["answer"]}]),
                RunContext(Path("."), ()),
            )
        )
