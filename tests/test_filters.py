"""The `filter` stage: the pair filters written here, datatrove's filters run by class name, validation
with the manifest's line, and the defaults on real SIB-200 text (clean rows kept in every language,
broken rows removed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from bench.filters import broken_rows, clean_rows, filtered
from core.record import DROP, FLAGS, WORK_SCHEMA
from core.settings import ConfigError
from pipeline.engine.manifest import load_manifest
from pipeline.engine.stage import RunContext
from pipeline.stages import REGISTRY
from pipeline.stages.filter import FilterConfig, QualityFilter
from tests.conftest import write_manifest


def run(rows: list[dict], **config) -> list[dict]:
    stage = QualityFilter(FilterConfig(stage="filter", **config), RunContext(Path("."), ("s",)))
    stage.setup()
    records = [{"id": str(i), "source": "s", "licence": "x", "origin": f"f:{i}", "task": "retrieval", **r} for i, r in enumerate(rows)]
    return stage(pa.Table.from_pylist(records, schema=WORK_SCHEMA)).to_pylist()


def drops(rows: list[dict], **config) -> list[str | None]:
    return [r[DROP] for r in run(rows, **config)]


EN = {"query_lang": "eng_Latn", "positive_lang": "eng_Latn"}


def test_pair_filters_drop_what_they_name():
    passage = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
    rows = [
        {"query": "Where is the Eiffel Tower?", "positive": passage, **EN},
        {"query": "https://en.wikipedia.org/wiki/Eiffel_Tower", "positive": passage, **EN},
        {"query": "Where is it?", "positive": "1889 - 2024", **EN},
        {"query": "Where is it?", "positive": "<div class='x'><br/></div>", **EN},
        {"query": "Where is the Eiffel Tower? " + passage, "positive": passage, **EN},
        {"query": "Where is the Eiffel Tower?", "positive": "In Paris.", **EN},  # a retrieval passage of 2 words
        {"task": "sts", "query": "A man plays a guitar.", "positive": "Un homme joue de la guitare.", "query_lang": "eng_Latn", "positive_lang": "fra_Latn"},
        {"task": "bitext", "query": "A man plays a guitar.", "positive": "Un homme joue de la guitare.", "query_lang": "eng_Latn", "positive_lang": "fra_Latn"},
        {"task": "bitext", "query": "A man plays a guitar.", "positive": "Ein Mann spielt Gitarre. " * 6, "query_lang": "eng_Latn", "positive_lang": "deu_Latn"},
        {"task": "bitext", "query": "A man plays a guitar in the park on a sunny afternoon.", "positive": "一个男人在阳光明媚的下午在公园里弹吉他。",
         "query_lang": "eng_Latn", "positive_lang": "cmn_Hans"},  # a tenth of the characters: Chinese's own ratio
        {"task": "bitext", "query": "A man plays a guitar.", "positive": "Мужчина играет на гитаре.", "query_lang": "eng_Latn", "positive_lang": "arb_Arab"},
    ]
    assert drops(rows) == [None, "filter:non_text:url", "filter:non_text:number", "filter:non_text:markup",
                           "filter:same_text:positive_in_query", "filter:min_length:too_short", "filter:languages_differ",
                           None, "filter:length_ratio", None, "filter:script_mismatch"]
    assert run(rows[1:2])[0]["_detail"] == "query is a URL"


def test_words_of_scripts_without_spaces_come_from_their_tokenizer():
    from pipeline.ops.words import word_counts

    texts = pa.array(["ฉันรักภาษาไทยมาก", "The cat sat.", "我喜欢学习中文"])
    counts = word_counts(texts, pa.array(["tha_Thai", "eng_Latn", "cmn_Hans"]))
    assert counts[1] == 3 and 3 <= counts[0] <= 6  # pythainlp's words, not 16 characters nor one "word"
    assert counts[2] >= 3


def test_datatrove_filters_run_by_class_name_with_their_own_reasons():
    rows = [{"query": "What is lorem ipsum?", "positive": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.", **EN},
            {"query": "Cookies?", "positive": "This website uses cookies. Read our privacy policy.", **EN},
            {"query": "Where is the Eiffel Tower?", "positive": "The Eiffel Tower is in Paris. It was built in 1889.", **EN}]
    c4 = {"name": "C4QualityFilter", "args": {"filter_no_terminal_punct": False, "min_num_sentences": 1, "min_words_per_line": -1},
          "fields": ["positive"]}
    out = run(rows, filters=[c4])
    assert [r[DROP] for r in out] == ["filter:C4QualityFilter:lorem_ipsum", "filter:C4QualityFilter:too_few_sentences", None]
    assert all(r[FLAGS] is None for r in out)  # every text was judged (English has its tokenizer)
    repeated = [{"query": "Repeated?", "positive": "\n".join(["Buy now and save big today!"] * 8), **EN}]
    assert drops(repeated, filters=[{"name": "GopherRepetitionFilter", "fields": ["positive"]}]) == ["filter:GopherRepetitionFilter:dup_line_frac"]


def test_unknown_filters_and_arguments_fail_validation_with_their_line(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"q": "a", "p": "b"}\n')
    sources = [{"name": "s", "task": "retrieval", "path": str(data), "columns": {"query": "q", "positive": "p"}, "licence": "x"}]
    for filters, message in [([{"name": "NoSuchFilter"}], "'NoSuchFilter' is neither a filter of this project nor one of datatrove's"),
                             ([{"name": "C4QualityFilter", "args": {"no_such_arg": 1}}], "C4QualityFilter: got an unexpected keyword argument 'no_such_arg'"),
                             ([{"name": "length_ratio", "args": {"max_ratio": 0.5}}], "max_ratio"),
                             ([{"name": "GopherQualityFilter", "args": {"language": "en"}}], "language is set by the stage")]:
        manifest = write_manifest(tmp_path, sources, [{"stage": "langid"}, {"stage": "filter", "filters": filters}])
        with pytest.raises(ConfigError) as error:
            load_manifest(manifest, REGISTRY)
        line = next(i for i, text in enumerate(manifest.read_text().splitlines(), 1) if f"name: {filters[0]['name']}" in text)
        assert f"manifest.yaml:{line}: stages[1].filters[0]" in str(error.value) and message in str(error.value), str(error.value)


@pytest.fixture(scope="module")
def sib200_rows(shared_data) -> list[dict]:
    """SIB-200 dev, every language: 30 sentences of each as bitext and as retrieval rows."""
    rows = clean_rows(shared_data)
    per_language: dict[tuple, int] = {}
    kept = []
    for r in rows:
        key = (r["task"], r["positive_lang"])
        per_language[key] = per_language.get(key, 0) + 1
        if per_language[key] <= 30:
            kept.append(r)
    return kept


def test_defaults_keep_clean_text_in_every_language_and_remove_broken_rows(sib200_rows):
    out = filtered(sib200_rows)
    rates = out.group_by("positive_lang").agg(pl.col("_drop").is_not_null().mean().alias("rate"), pl.len().alias("rows"))
    assert rates.height >= 200 and rates["rows"].min() >= 30
    # At most 1% of a language's clean rows, i.e. none of its 30-60 here.
    assert rates.filter(pl.col("rate") > 0.01).height == 0, rates.sort("rate", descending=True).head(5)
    caught = filtered(broken_rows(sib200_rows, 100)).group_by("kind").agg(pl.col("_drop").is_not_null().mean().alias("removed"))
    assert dict(caught.iter_rows()) == pytest.approx({k: 1.0 for k in caught["kind"]}, abs=0.1)  # >= 90% of each kind


@pytest.mark.slow
def test_a_run_counts_each_filters_drops_per_language(stage1_run):
    from tests.conftest import run_cli

    table = pl.read_parquet(stage1_run / "stats" / "filters.parquet")
    ledger = pl.read_parquet(stage1_run / "ledger.parquet").filter(pl.col("step").str.ends_with("-filter"))
    assert table["rows_in"].sum() == ledger.filter(kind="in")["rows"].sum() * table["filter"].n_unique()
    dropped = ledger.filter(kind="dropped")
    assert table["dropped"].sum() == dropped["rows"].sum() and dropped["reason"].str.starts_with("filter:").all()
    out = run_cli("stats", str(stage1_run), "--filters")
    assert out.returncode == 0 and "rows each filter dropped" in out.stdout


def test_every_pair_filter_setting_is_documented():
    from pipeline.stages.filter import PAIR_FILTERS
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "stages.md").read_text(encoding="utf-8")
    for name, (settings, _) in PAIR_FILTERS.items():
        assert f"`{name}`" in doc and all(f"`{field}`" in doc for field in settings.model_fields), name
