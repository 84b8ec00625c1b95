"""The `filter` stage: the pair filters written here, datatrove's filters run by class name (with the
right word tokenizer per language, or none), negatives filtered inside their lists, validation with
the manifest's line, and the defaults on real SIB-200 and STS text tagged by the langid stage (clean
rows kept in every language, broken rows removed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from bench.filters import broken_rows, clean_rows, filtered, tagged
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
    records = [
        {"id": str(i), "source": "s", "licence": "x", "origin": f"f:{i}", "task": "retrieval", **r}
        for i, r in enumerate(rows)
    ]
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
        {
            "task": "sts",
            "query": "A man plays a guitar.",
            "positive": "Un homme joue de la guitare.",
            "query_lang": "eng_Latn",
            "positive_lang": "fra_Latn",
            "query_lang_conf": 0.99,
            "positive_lang_conf": 0.97,
        },
        {
            "task": "bitext",
            "query": "A man plays a guitar.",
            "positive": "Un homme joue de la guitare.",
            "query_lang": "eng_Latn",
            "positive_lang": "fra_Latn",
        },
        {
            "task": "bitext",
            "query": "A man plays a guitar.",
            "positive": "Ein Mann spielt Gitarre. " * 6,
            "query_lang": "eng_Latn",
            "positive_lang": "deu_Latn",
        },
        {
            "task": "bitext",
            "query": "A man plays a guitar in the park on a sunny afternoon.",
            "positive": "一个男人在阳光明媚的下午在公园里弹吉他。",
            "query_lang": "eng_Latn",
            "positive_lang": "cmn_Hans",
        },  # a tenth of the characters: Chinese's own ratio
        {
            "task": "bitext",
            "query": "A man plays a guitar.",
            "positive": "Мужчина играет на гитаре.",
            "query_lang": "eng_Latn",
            "positive_lang": "arb_Arab",
        },
    ]
    assert drops(rows) == [
        None,
        "filter:non_text:url",
        "filter:non_text:number",
        "filter:non_text:markup",
        "filter:same_text:positive_in_query",
        "filter:min_length:too_short",
        "filter:languages_differ",
        None,
        "filter:length_ratio",
        None,
        "filter:script_mismatch",
    ]
    assert run(rows[1:2])[0]["_detail"] == "query is a URL"
    # STS: an identical pair is a labelled example; a Russian sentence tagged Bulgarian at 0.6 is not sure enough.
    sts = [
        {"task": "sts", "query": "A man plays a guitar.", "positive": "A man plays a guitar.", **EN},
        {
            "task": "sts",
            "query": "Мужчина играет.",
            "positive": "Мужчина играет на гитаре.",
            "query_lang": "bul_Cyrl",
            "positive_lang": "rus_Cyrl",
            "query_lang_conf": 0.6,
            "positive_lang_conf": 0.95,
        },
    ]
    assert drops(sts) == [None, None]


def test_words_of_scripts_without_spaces_come_from_their_tokenizer():
    from pipeline.ops.words import word_counts

    texts = pa.array(["ฉันรักภาษาไทยมาก", "The cat sat.", "我喜欢学习中文"])
    counts = word_counts(texts, pa.array(["tha_Thai", "eng_Latn", "cmn_Hans"]))
    assert counts[1] == 3 and 3 <= counts[0] <= 6  # pythainlp's words, not 16 characters nor one "word"
    assert counts[2] >= 3


def test_datatrove_filters_run_by_class_name_with_their_own_reasons():
    rows = [
        {
            "query": "What is lorem ipsum?",
            "positive": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.",
            **EN,
        },
        {"query": "Cookies?", "positive": "This website uses cookies. Read our privacy policy.", **EN},
        {
            "query": "Where is the Eiffel Tower?",
            "positive": "The Eiffel Tower is in Paris. It was built in 1889.",
            **EN,
        },
    ]
    c4 = {
        "name": "C4QualityFilter",
        "args": {"filter_no_terminal_punct": False, "min_num_sentences": 1, "min_words_per_line": -1},
        "fields": ["positive"],
    }
    out = run(rows, filters=[c4])
    assert [r[DROP] for r in out] == [
        "filter:C4QualityFilter:lorem_ipsum",
        "filter:C4QualityFilter:too_few_sentences",
        None,
    ]
    assert all(r[FLAGS] is None for r in out)  # every text was judged (English has its tokenizer)
    repeated = [{"query": "Repeated?", "positive": "\n".join(["Buy now and save big today!"] * 8), **EN}]
    assert drops(repeated, filters=[{"name": "GopherRepetitionFilter", "fields": ["positive"]}]) == [
        "filter:GopherRepetitionFilter:dup_line_frac"
    ]


def test_texts_without_a_tokenizer_are_kept_and_flagged_and_negatives_are_filtered_in_their_lists():
    tibetan = "བོད་ཡིག་ནི་བོད་ཀྱི་ཡི་གེ་ཡིན། ད་ལྟ་ང་ཚོ་སློབ་གྲྭར་འགྲོ་གི་ཡོད།"
    lorem = "Lorem ipsum dolor sit amet, this is placeholder text of many words."
    good = "The Eiffel Tower is in Paris. It was built in 1889."
    rows = [
        {
            "query": "Tibetan?",
            "positive": tibetan,
            "query_lang": "eng_Latn",
            "positive_lang": "bod_Tibt",
        },  # no Tibetan tokenizer here
        {
            "query": "Unknown?",
            "positive": lorem,
            "query_lang": "eng_Latn",
            "positive_lang": "und",
        },  # spaced: the multilingual tokenizer judges
        {
            "query": "Where is the Eiffel Tower?",
            "positive": good,
            **EN,
            "negatives_lang": "eng_Latn",
            "negatives": [good.replace("Paris", "Lyon"), "https://spam.example.com/x", lorem],
            "negative_scores": [0.9, 0.8, 0.7],
        },
        {
            "query": "Where is the Eiffel Tower?",
            "positive": "https://example.com",
            **EN,
            "negatives": ["http://a.b/c"],
            "negatives_lang": "eng_Latn",
        },
    ]
    c4 = {
        "name": "C4QualityFilter",
        "args": {"filter_no_terminal_punct": False, "min_num_sentences": 1, "min_words_per_line": -1},
        "fields": ["positive", "negatives"],
    }
    out = run(rows, filters=[{"name": "non_text"}, c4])
    assert [r[DROP] for r in out] == [None, "filter:C4QualityFilter:lorem_ipsum", None, "filter:non_text:url"]
    assert out[0][FLAGS] == [{"reason": "filter_skipped:C4QualityFilter", "language": "bod_Tibt", "count": None}]
    assert out[2]["negatives"] == [good.replace("Paris", "Lyon")] and out[2]["negative_scores"] == [pytest.approx(0.9)]
    assert sorted(f["reason"] for f in out[2][FLAGS]) == ["filter_negative:C4QualityFilter", "filter_negative:non_text"]
    assert out[3]["negatives"] == ["http://a.b/c"]  # a dropped row keeps its list as it was
    empty = QualityFilter(FilterConfig(stage="filter"), RunContext(Path("."), ("s",)))
    empty.setup()
    assert empty(WORK_SCHEMA.empty_table()).num_rows == 0  # a batch an earlier stage emptied


def test_the_filters_table_lists_skips_and_removals_under_the_texts_language():
    from pipeline.reporting.stats import filters

    funnel = pl.DataFrame(
        {
            "step": ["05-filter"] * 5,
            "language": ["eng_Latn", "eng_Latn", "fra_Latn", "bod_Tibt", "fra_Latn"],
            "kind": ["in", "dropped", "in", "flagged", "flagged"],
            "reason": [None, "filter:non_text:url", None, "filter_skipped:C4QualityFilter", "filter_negative:non_text"],
            "rows": [100, 3, 50, 2, 1],
        }
    )
    table = filters(funnel)
    assert table.filter(language="eng_Latn", filter="non_text").row(0, named=True) | {"rate": 0.03} == {
        "language": "eng_Latn",
        "filter": "non_text",
        "rows_in": 100,
        "dropped": 3,
        "rate": 0.03,
        "skipped": 0,
        "negatives_removed": 0,
    }
    assert table.filter(language="bod_Tibt", filter="C4QualityFilter")["skipped"].item() == 2
    assert table.filter(language="fra_Latn", filter="non_text")["negatives_removed"].item() == 1
    nothing = filters(funnel.filter(kind="in"))  # the stage ran and found nothing: languages, no filter
    assert nothing.height == 2 and nothing["filter"].null_count() == 2
    assert not filters(funnel.with_columns(pl.lit("04-langid").alias("step"))).height  # no filter stage


def test_unknown_filters_and_arguments_fail_validation_with_their_line(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"q": "a", "p": "b"}\n')
    sources = [
        {
            "name": "s",
            "task": "retrieval",
            "path": str(data),
            "columns": {"query": "q", "positive": "p"},
            "licence": "x",
        }
    ]
    for filters, message in [
        ([{"name": "NoSuchFilter"}], "'NoSuchFilter' is neither a filter of this project nor one of datatrove's"),
        (
            [{"name": "C4QualityFilter", "args": {"no_such_arg": 1}}],
            "C4QualityFilter: got an unexpected keyword argument 'no_such_arg'",
        ),
        ([{"name": "length_ratio", "args": {"max_ratio": 0.5}}], "max_ratio"),
        ([{"name": "GopherQualityFilter", "args": {"language": "en"}}], "language is set by the stage"),
        (
            [{"name": "C4QualityFilter", "args": {"min_num_sentences": "five"}}],
            "C4QualityFilter: min_num_sentences='five'",
        ),
        ([{"name": "URLFilter"}], "URLFilter cannot run here: it reads each document's url metadata"),
        ([{"name": "same_text", "fields": ["query"]}], "same_text is a pair filter"),
    ]:
        manifest = write_manifest(tmp_path, sources, [{"stage": "langid"}, {"stage": "filter", "filters": filters}])
        with pytest.raises(ConfigError) as error:
            load_manifest(manifest, REGISTRY)
        line = next(
            i for i, text in enumerate(manifest.read_text().splitlines(), 1) if f"name: {filters[0]['name']}" in text
        )
        assert f"manifest.yaml:{line}: stages[1].filters[0]" in str(error.value) and message in str(error.value), str(
            error.value
        )


@pytest.fixture(scope="module")
def clean(shared_data) -> list[dict]:
    """SIB-200 dev, every language, as bitext and retrieval rows, and STS dev pairs in 11 languages:
    30 rows of each task and language, tagged by the langid stage as a run tags them."""
    per_key: dict[tuple, int] = {}
    kept = []
    for r in clean_rows(shared_data):
        key = (r["task"], r["language"])
        per_key[key] = per_key.get(key, 0) + 1
        if per_key[key] <= 30:
            kept.append(r)
    return tagged(kept)


def test_defaults_keep_clean_text_in_every_language_and_remove_broken_rows(clean):
    out = filtered(clean)
    rows = out.group_by("task", "language").agg(pl.len().alias("rows"), pl.col("_drop").drop_nulls().alias("drops"))
    assert (
        rows.filter(task="bitext").height >= 200 and rows.filter(task="sts").height == 11 and rows["rows"].min() >= 30
    )
    # At most 1% of a task's clean rows in a language, i.e. none of its 30 here.
    assert rows.filter(pl.col("drops").list.len() > 0).height == 0, rows.filter(pl.col("drops").list.len() > 0)
    caught = (
        filtered(tagged(broken_rows(clean, 100)))
        .group_by("kind")
        .agg(pl.col("_drop").is_not_null().mean().alias("removed"))
    )
    assert caught.height == 5 and caught["removed"].min() >= 0.9, caught


@pytest.mark.slow
def test_a_run_counts_each_filters_drops_per_language(stage1_run):
    from tests.conftest import run_cli

    table = pl.read_parquet(stage1_run / "stats" / "filters.parquet")
    ledger = pl.read_parquet(stage1_run / "ledger.parquet").filter(pl.col("step").str.ends_with("-filter"))
    assert table.unique("language")["rows_in"].sum() == ledger.filter(kind="in")["rows"].sum()
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
