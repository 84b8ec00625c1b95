"""Statistics over a run folder's shards and ledger: token rule, mergeable partials, quantiles from
histograms, comparison with a reference, drift against the previous run, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.passages import CORPUS_SCHEMA
from core.record import SCHEMA
from core.settings import ConfigError
from pipeline.api import load_manifest
from pipeline.engine.ledger import LEDGER_SCHEMA
from pipeline.reporting import stats
from tests.conftest import SAMPLES, by_reference, stage1_sources, write_manifest


def _make_run(folder: Path, rows: list[dict], fingerprint: str = "a" * 24) -> Path:
    """A finished run's folder as the runner leaves it: shards, their marker, and the ledger."""
    (folder / "shards" / "src").mkdir(parents=True, exist_ok=True)
    (folder / "corpus").mkdir(exist_ok=True)
    rows, passages = by_reference(rows)
    pq.write_table(pa.Table.from_pylist(passages, schema=CORPUS_SCHEMA), folder / "corpus" / "part-00000.parquet")
    table = pa.Table.from_pylist([{**{f: None for f in SCHEMA.names}, **r} for r in rows], schema=SCHEMA)
    half = table.num_rows // 2
    shards = []
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        path = f"src/part-{i:05d}-{fingerprint[:8]}.parquet"
        pq.write_table(part, folder / "shards" / path)
        shards.append({"path": path, "rows": part.num_rows, "source": "src"})
    (folder / "shards" / "_SUCCESS.json").write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "shards": shards,
                "corpus": [{"path": "part-00000.parquet", "rows": len(passages)}],
            }
        )
    )
    langs = pl.from_arrow(table.select(["query_lang"]))["query_lang"].value_counts()
    ledger = pl.DataFrame(
        {
            "step": "01-x",
            "source": "src",
            "language": langs["query_lang"],
            "kind": "out",
            "reason": None,
            "rows": langs["count"],
        },
        schema=LEDGER_SCHEMA,
    )
    ledger = pl.concat(
        [
            ledger,
            pl.DataFrame(
                [
                    {
                        "step": "01-x",
                        "source": "src",
                        "language": "deu_Latn",
                        "kind": "dropped",
                        "reason": "eval_overlap:xquad",
                        "rows": 2,
                    }
                ],
                schema=LEDGER_SCHEMA,
            ),
        ]
    )
    ledger.write_parquet(folder / "ledger.parquet")
    return folder


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    texts = {
        "eng_Latn": "the cat sat on the mat",
        "deu_Latn": "die Katze sitzt auf der Matte",
        "cmn_Hans": "猫坐在垫子上",
    }
    out = []
    for i in range(n):
        lang = ["eng_Latn", "deu_Latn", "cmn_Hans"][i % 3]
        k = int(rng.integers(0, 4))
        out.append(
            {
                "id": str(i),
                "source": "src",
                "task": "retrieval",
                "origin": f"f:{i}",
                "query": texts[lang] * (1 + i % 5),
                "positive": texts[lang],
                "negatives": [texts[lang][:5]] * k,
                "positive_score": float(rng.uniform(5, 10)),
                "negative_scores": list(rng.uniform(0, 8, k)),
                "query_lang": lang,
                "query_lang_conf": float(rng.uniform(0.3, 1)),
                "cross_lingual": bool(i % 7 == 0),
                "dup_count": int(1 + (i % 11 == 0)),
                "licence": "x",
            }
        )
    return out


def test_script_aware_tokens_count_words_and_unspaced_characters():
    count = stats.TokenCounter()
    texts = pl.Series(["Hello, world 42!", "我爱北京天安门", "สวัสดีครับ", "Tokyo 東京 is big", None, ""])
    # Thai: one token per consonant with its combining vowel/tone marks.
    assert count(texts).to_list() == [3, 7, 7, 5, 0, 0]


def test_statistics_add_up_across_batches_and_match_the_shards(tmp_path, monkeypatch):
    rows = _records(300)
    run = _make_run(tmp_path / "run", rows)
    whole = stats.compute(run, progress=False)
    monkeypatch.setattr(stats, "BATCH_ROWS", 7)  # many batches: partials folded along the way
    monkeypatch.setattr(stats, "FOLD_EVERY", 5)
    batched = stats.compute(run, progress=False)
    for name in ("languages", "sources", "tasks", "histograms"):
        assert whole[name].equals(batched[name]), name
    langs = whole["languages"]
    eng = langs.filter(language="eng_Latn").row(0, named=True)
    expected = [r for r in rows if r["query_lang"] == "eng_Latn"]
    assert eng["records"] == len(expected) and eng["name"] == "English (Latin)" and eng["family"] == "Indo-European"
    assert eng["negatives"] == sum(len(r["negatives"]) for r in expected)
    # texts by id, through the passage table
    assert eng["negative_chars"] == sum(len(n) for r in expected for n in r["negatives"])
    assert eng["query_chars"] == sum(len(r["query"]) for r in expected)
    assert eng["cross_lingual_share"] == pytest.approx(sum(r["cross_lingual"] for r in expected) / len(expected))
    assert eng["exact_dup_clusters"] == sum(r["dup_count"] > 1 for r in expected)
    assert langs.filter(language="deu_Latn")["decontaminated"][0] == 2
    # Quantiles read from the histograms are within one bin of the exact ones.
    exact = np.quantile([r["query_lang_conf"] for r in expected], [0.1, 0.5])
    assert abs(eng["query_lang_conf_p10"] - exact[0]) <= 0.011 and abs(eng["query_lang_conf_p50"] - exact[1]) <= 0.011
    cmn = [len(r["query"]) for r in rows if r["query_lang"] == "cmn_Hans"]
    assert langs.filter(language="cmn_Hans")["query_chars_p50"][0] == pytest.approx(np.median(cmn), rel=0.13)
    for name in ("languages", "sources", "tasks", "funnel", "histograms", "samples"):
        assert pl.read_csv(run / "stats" / f"{name}.csv").height == whole[name].height


def test_drift_against_the_previous_run_and_a_reference(tmp_path):
    run = _make_run(tmp_path / "run", _records(90))
    stats.compute(run, progress=False)
    stats.compute(run, progress=False)  # the same shards again: no drift recorded
    assert not (run / "stats" / "previous_languages.parquet").exists()
    _make_run(run, _records(90) + [r for r in _records(60) if r["query_lang"] == "cmn_Hans"], fingerprint="b" * 24)
    (tmp_path / "ref.csv").write_text("language,count\neng,3\ncmn_Hans,1\nfra_Latn,1\n")
    tables = stats.compute(run, reference=str(tmp_path / "ref.csv"), progress=False)
    langs = tables["languages"]
    cmn = langs.filter(language="cmn_Hans").row(0, named=True)
    assert cmn["previous_records"] == 30 and cmn["records"] == 50
    assert cmn["share_change"] == pytest.approx(50 / 110 - 30 / 90)
    assert langs["share_change"].sum() == pytest.approx(0, abs=1e-12)
    comparison = tables["comparison"]
    assert comparison.filter(language="eng")["records"][0] == 30  # an ISO 639-3 code gathers every script of it
    assert comparison.filter(language="fra_Latn")["records"][0] == 0 and comparison[
        "reference_share"
    ].sum() == pytest.approx(1)
    assert json.loads((run / "stats" / "meta.json").read_text())["previous"] == "a" * 24


def test_bad_reference_and_missing_files_are_reported(tmp_path):
    run = _make_run(tmp_path / "run", _records(30))
    (tmp_path / "ref.csv").write_text("lang,n\neng,3\n")
    with pytest.raises(ValueError, match=r"ref\.csv.*language and count"):
        stats.compute(run, reference=str(tmp_path / "ref.csv"), progress=False)
    with pytest.raises(FileNotFoundError, match="no finished shards"):
        stats.compute(tmp_path, progress=False)
    path = write_manifest(tmp_path, stage1_sources(), stats={"reference": "nowhere.csv", "tokenizer": str(SAMPLES)})
    with pytest.raises(ConfigError, match=r"manifest\.yaml:\d+: stats\.reference: .*no such file"):
        load_manifest(path)
