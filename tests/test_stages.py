"""Stages on real text, called directly (no Ray): what each does to a batch."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pyarrow as pa
import xxhash

from core.record import DROP, WORK_SCHEMA
from pipeline.engine.stage import RunContext
from pipeline.ops import exchange
from pipeline.ops.tasks import InProcess
from pipeline.stages import REGISTRY
from pipeline.stages.exact_dedup import key_text
from tests.conftest import ready

CTX = RunContext(Path("."), ("first", "second"))


def _batch(rows: list[dict]) -> pa.Table:
    base = {"id": "", "source": "first", "task": "retrieval", "query": "", "licence": "x", "origin": ""}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=WORK_SCHEMA)


def _stage(name: str, **cfg):
    cls = REGISTRY[name]
    return ready(cls(cls.config_model(stage=name, **cfg), CTX))


def test_normalize_unicode_controls_whitespace():
    out = _stage("normalize")(
        _batch(
            [
                {
                    "query": "Cafe\u0301  au\tlait\x07 ",
                    "positive": "line one  \r\n\r\n\r\n\n  line two",
                    "negatives": ["  a\u00a0 b ", "e\u0301"],
                },
                {"query": " \x00 \t", "positive": "kept?"},
                {"query": "q", "positive": None},
            ]
        )
    ).to_pylist()
    assert out[0]["query"] == "Café au lait" and out[0]["positive"] == "line one\n\nline two"
    assert out[0]["negatives"] == ["a b", "é"] and out[0][DROP] is None
    assert out[1][DROP] == "empty_after_normalize"
    assert out[2][DROP] is None and out[2]["positive"] is None


def test_regex_replacements_run_only_where_they_change_a_row():
    """`replace_regex` replaces only on the rows its `rows` pattern finds: for each whitespace rule,
    every kind of space, alone, doubled and beside a newline, gives what a plain replace gives."""
    import itertools

    import pyarrow.compute as pc

    from pipeline.ops.arrow import HSPACE, HSPACE_TO_COLLAPSE, SPACE_OR_NEWLINE_TO_COLLAPSE, replace_regex

    spaces = [
        " ",
        "\t",
        "\x0b",
        "\x0c",
        "\u00a0",
        "\u1680",
        "\u2000",
        "\u2005",
        "\u200a",
        "\u202f",
        "\u205f",
        "\u3000",
        "\n",
        "\r\n",
    ]
    texts = pa.array([f"a{x}b{y}c" for x, y in itertools.product(spaces + [""], repeat=2)] + [None, "", "plain words"])
    for pattern, replacement, rows in (
        (HSPACE + "+", " ", HSPACE_TO_COLLAPSE),
        (f"(?:{HSPACE}|\\n)+", " ", SPACE_OR_NEWLINE_TO_COLLAPSE),
        (r" ?\n ?", "\n", r" \n|\n "),
        (r"\r\n?", "\n", None),
    ):
        assert replace_regex(texts, pattern, replacement, rows).equals(
            pc.replace_substring_regex(texts, pattern=pattern, replacement=replacement)
        )


def _sib_sentences(shared_data: Path, codes: list[str], n: int = 20) -> dict[str, list[str]]:
    out = {}
    with tarfile.open(shared_data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        for code in codes:
            f = io.TextIOWrapper(tar.extractfile(f"sib200/annotated/{code}/dev.tsv"), "utf-8")
            out[code] = [r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:n]
    return out


def test_langid_labels_real_sentences_with_script(shared_data):
    codes = [
        "eng_Latn",
        "deu_Latn",
        "rus_Cyrl",
        "srp_Cyrl",
        "arb_Arab",
        "hin_Deva",
        "tha_Thai",
        "zho_Hans",
        "zho_Hant",
        "jpn_Jpan",
        "kor_Hang",
        "ell_Grek",
    ]
    expected = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant"}
    sentences = _sib_sentences(shared_data, codes)
    rows = [{"query": s, "positive": s, "negatives": [s, s]} for c in codes for s in sentences[c]]
    out = _stage("langid")(_batch(rows)).to_pylist()
    # The default model (short200) takes a few Traditional Mandarin sentences for Cantonese, written
    # in the same characters: FLORES, which it was trained on, has both.
    least = {"zho_Hant": 0.75}
    for i, code in enumerate(codes):
        got = [r["query_lang"] for r in out[i * 20 : (i + 1) * 20]]
        share = got.count(expected.get(code, code)) / 20
        assert share >= least.get(code, 0.9), (code, got)
        assert set(got) <= {expected.get(code, code), "yue_Hant"}, (code, got)
    assert all(
        0 < r["query_lang_conf"] <= 1 and r["negatives_lang"] == r["query_lang"]
        for r in out
        if r["query_lang"] != "und"
    )


def test_langid_threshold_tags_und_and_can_drop():
    rows = [
        {"query": "data", "positive": None},
        {"query": "The weather in Paris is lovely in spring.", "positive": None},
    ]
    out = _stage("langid", min_confidence=0.9, drop_below=True)(_batch(rows)).to_pylist()
    assert out[0]["query_lang"] == "und" and out[0][DROP] == "low_language_confidence"
    assert out[1]["query_lang"] == "eng_Latn" and out[1][DROP] is None and out[1]["positive_lang"] is None


def _planned(stage, batch: pa.Table) -> pa.Table:
    """A dataset stage's plan over `batch` cut in two blocks, its rounds run here."""
    import tempfile

    blocks = [batch.slice(0, batch.num_rows // 2), batch.slice(batch.num_rows // 2)]
    rounds = exchange.Rounds(tempfile.mkdtemp(), InProcess())
    return pa.concat_tables([exchange.get(b) for b in stage.plan(blocks, batch.num_rows, rounds)])


def test_exact_dedup_keeps_earliest_source_and_counts_cluster():
    stage = _stage("exact_dedup", key=["query", "positive"])
    rows = [
        {"id": "b", "source": "second", "query": "What is  MRL?", "positive": "Nested dims.", "origin": "f:1"},
        {"id": "c", "source": "first", "query": "what is mrl?", "positive": "Nested dims.", "origin": "f:2"},
        {"id": "a", "source": "second", "query": "What is MRL?", "positive": "nested dims.", "origin": "f:3"},
        {"id": "d", "source": "first", "query": "What is MRL?", "positive": "Another passage", "origin": "f:4"},
    ]
    batch = _batch(rows)
    keys = key_text(batch, stage.config).to_pylist()
    assert keys[0] == keys[1] == keys[2] != keys[3]
    out = {r["id"]: r for r in _planned(stage, batch).to_pylist()}
    assert out["c"][DROP] is None and out["c"]["dup_count"] == 3  # earliest source wins over smaller id
    assert out["a"][DROP] == out["b"][DROP] == "exact_duplicate" and out["a"]["_detail"] == "duplicate of c"
    assert out["d"][DROP] is None and out["d"]["dup_count"] == 1
    cluster = f"{xxhash.xxh3_64_intdigest(keys[0].encode()):016x}"
    assert (
        out["a"]["dup_cluster"]
        == out["b"]["dup_cluster"]
        == out["c"]["dup_cluster"]
        == cluster
        != out["d"]["dup_cluster"]
    )
    case_sensitive = _stage("exact_dedup", key=["query"], casefold=False)
    assert len(set(key_text(batch, case_sensitive.config).to_pylist())) == 2  # "what is mrl?" vs "What is MRL?"


def test_dedup_priority_puts_named_sources_first():
    rows = [
        {"id": "a", "source": "first", "query": "Same question?", "origin": "f:1"},
        {"id": "b", "source": "second", "query": "same question?", "origin": "f:2"},
    ]
    default = {r["id"]: r[DROP] for r in _planned(_stage("exact_dedup"), _batch(rows)).to_pylist()}
    preferred = {
        r["id"]: r[DROP] for r in _planned(_stage("exact_dedup", priority=["second"]), _batch(rows)).to_pylist()
    }
    assert default == {"a": None, "b": "exact_duplicate"} and preferred == {"a": "exact_duplicate", "b": None}


def test_instruct_sets_source_then_task_instructions():
    rows = [
        {"id": "a", "source": "first", "task": "retrieval", "query": "q"},
        {"id": "b", "source": "second", "task": "retrieval", "query": "q"},
        {"id": "c", "source": "second", "task": "classification", "query": "q", "instruction": "Given by the source"},
        {"id": "d", "source": "second", "task": "sts", "query": "q"},
    ]
    config = dict(
        tasks={"retrieval": "Retrieve passages that answer the question", "classification": "Classify the text"},
        sources={"first": "Retrieve Wikipedia paragraphs that answer the question"},
    )
    out = [r["instruction"] for r in _stage("instruct", **config)(_batch(rows)).to_pylist()]
    assert out == [
        "Retrieve Wikipedia paragraphs that answer the question",
        "Retrieve passages that answer the question",
        "Given by the source",
        None,
    ]
    replaced = [r["instruction"] for r in _stage("instruct", overwrite=True, **config)(_batch(rows)).to_pylist()]
    assert replaced[2] == "Classify the text" and replaced[3] is None


def test_build_pairs_for_labelled_sts_and_nli_rows(shared_data):
    with tarfile.open(shared_data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        f = io.TextIOWrapper(tar.extractfile("sib200/annotated/eng_Latn/dev.tsv"), "utf-8")
        topics = [(r["text"], r["category"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:60]
    rows = [
        {"id": f"t{i}", "source": "first", "task": "clustering", "query": t, "label": c, "origin": f"f:{i}"}
        for i, (t, c) in enumerate(topics)
    ]
    rows += [
        {"id": f"c{i}", "source": "second", "task": "classification", "query": t, "label": c, "origin": f"g:{i}"}
        for i, (t, c) in enumerate(topics)
    ]
    rows += [
        {
            "id": "lonely",
            "source": "first",
            "task": "clustering",
            "query": "one of a kind",
            "label": "unique",
            "origin": "f:x",
        },
        {
            "id": "s1",
            "source": "first",
            "task": "sts",
            "query": "A man is dancing.",
            "positive": "A man dances.",
            "score": 4.6,
            "origin": "s:1",
        },
        {
            "id": "s2",
            "source": "first",
            "task": "sts",
            "query": "A man is dancing.",
            "positive": "A cat sleeps.",
            "score": 0.4,
            "origin": "s:2",
        },
        {
            "id": "n1",
            "source": "first",
            "task": "pair_classification",
            "query": "A dog runs in a park.",
            "positive": "An animal is outside.",
            "label": "entailment",
            "origin": "n:1",
        },
        {
            "id": "n2",
            "source": "first",
            "task": "pair_classification",
            "query": "A dog runs in a park.",
            "positive": "The dog is asleep indoors.",
            "label": "contradiction",
            "origin": "n:2",
        },
        {
            "id": "n3",
            "source": "first",
            "task": "pair_classification",
            "query": "A dog runs in a park.",
            "positive": "The dog is brown.",
            "label": "neutral",
            "origin": "n:3",
        },
        {
            "id": "n4",
            "source": "first",
            "task": "pair_classification",
            "query": "Rain.",
            "positive": "It is dry.",
            "label": "contradiction",
            "origin": "n:4",
        },
    ]
    described = {"sports": "The text is about sports.", "travel": "The text is about travel."}
    stage = _stage("build_pairs", label_descriptions={"second": described})
    out = {r["id"]: r for r in stage(_batch(rows)).to_pylist()}
    label_of = {**{t: c for t, c in topics}, "one of a kind": "unique", **{d: c for c, d in described.items()}}
    for i, (text, cat) in enumerate(topics):
        clustered, classified = out[f"t{i}"], out[f"c{i}"]
        assert clustered[DROP] is None and clustered["positive"] != text and label_of[clustered["positive"]] == cat
        assert all(label_of[n] != cat for n in clustered["negatives"]) and len(clustered["negatives"]) == min(
            7, len(set(label_of.values())) - 1
        )  # one per other cluster
        negative = classified["negatives"][0]
        assert len(classified["negatives"]) == 1 and label_of[negative] != cat
        assert classified["positive"] == described[cat] if cat in described else label_of[classified["positive"]] == cat
        if cat in described and label_of[negative] in described:  # a description's negative is another description
            assert negative == described[label_of[negative]]
    assert out["lonely"][DROP] == "no_positive"
    assert out["s1"][DROP] is None and out["s2"][DROP] == "sts_low_score"
    assert out["n1"][DROP] is None and out["n1"]["negatives"] == ["The dog is asleep indoors."]
    assert (out["n2"][DROP], out["n3"][DROP], out["n4"][DROP]) == ("merged_into_pair", "neutral_pair", "no_entailment")
    assert stage(_batch(rows)).to_pylist() == list(out.values())  # seeded: the same choices again
