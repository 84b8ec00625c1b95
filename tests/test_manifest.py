"""Manifests fail before anything runs, naming the file, line and key path."""

from __future__ import annotations

import json

import pytest

from core.settings import ConfigError
from pipeline.api import load_manifest
from tests.conftest import ROOT, run_cli, stage1_sources, write_manifest


def test_shipped_manifest_is_valid():
    manifest = load_manifest(ROOT / "manifests" / "stage1.yaml")
    assert [s.name for s in manifest.sources] == ["xquad_r", "sib200_bitext"]
    assert [s.stage for s in manifest.stages] == [
        "normalize",
        "langid",
        "langid_prior",
        "filter",
        "decontaminate",
        "exact_dedup",
        "near_dedup",
    ]
    assert manifest.output == str((ROOT / "runs" / "stage1").resolve())
    stage2 = load_manifest(ROOT / "manifests" / "stage2.yaml")
    assert {s.task for s in stage2.sources} == {
        "retrieval",
        "bitext",
        "sts",
        "pair_classification",
        "classification",
        "clustering",
    }


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_manifest(path)
    return str(exc.value)


def _base(tmp_path, extra_stage: str = "  - stage: normalize\n") -> str:
    sample = ROOT / "manifests" / "samples" / "xquad_r" / "en.jsonl.gz"
    return (
        f"output: out\nsources:\n  - name: x\n    task: retrieval\n    path: {sample}\n"
        f"    columns: {{query: question, positive: context}}\n    licence: CC-BY-SA-4.0\nstages:\n{extra_stage}"
    )


def test_typo_key_names_line_and_path(tmp_path):
    msg = _error(
        tmp_path,
        _base(tmp_path)
        .replace("    licence:", "    licence: x\n    colums: {}\n    licenc:", 1)
        .replace("licenc: CC-BY-SA-4.0", "licenc: y"),
    )
    assert "m.yaml:8: sources[0].colums: Extra inputs are not permitted" in msg
    assert "m.yaml:9: sources[0].licenc" in msg


def test_stage_setting_typo_and_bad_value(tmp_path):
    msg = _error(
        tmp_path,
        _base(tmp_path, "  - stage: normalize\n    unicode_fom: NFC\n  - stage: langid\n    min_confidence: 2\n"),
    )
    assert "m.yaml:10: stages[0].unicode_fom: Extra inputs are not permitted" in msg
    assert "m.yaml:12: stages[1].min_confidence: Input should be less than or equal to 1" in msg


def test_unknown_stage_wrong_type_missing_file(tmp_path):
    text = (
        _base(tmp_path, "  - stage: normalise\n").replace("en.jsonl.gz", "nope-*.jsonl")
        + "shards:\n  rows_per_shard: many\n"
    )
    msg = _error(tmp_path, text)
    assert "m.yaml:5: sources[0].path: Value error, no file matches" in msg
    assert (
        "m.yaml:9: stages[0]: Input tag 'normalise' found using 'stage' does not match any of the expected tags" in msg
    )
    assert "m.yaml:11: shards.rows_per_shard: Input should be a valid integer" in msg


def test_task_needs_its_columns_and_duplicate_keys(tmp_path):
    msg = _error(tmp_path, _base(tmp_path).replace("task: retrieval", "task: sts"))
    assert "task 'sts' needs columns for ['score']" in msg
    msg = _error(tmp_path, _base(tmp_path) + "output: again\n")
    assert "m.yaml:10: output: duplicate key" in msg


def test_yaml_syntax_error_has_line(tmp_path):
    assert "m.yaml:3: invalid YAML" in _error(tmp_path, "output: out\nsources:\n\t- name: x\n")


def test_cli_invalid_manifest_exits_2_before_anything_is_written(tmp_path):
    sources = stage1_sources()
    sources[0]["colums"] = sources[0].pop("columns")
    path = write_manifest(tmp_path, sources)
    result = run_cli("run", str(path))
    assert result.returncode == 2
    assert "sources[0].colums" in result.stderr and "manifest.yaml:" in result.stderr
    assert not (tmp_path / "run").exists()
    assert "ray" not in result.stderr.lower()


def test_cli_validate_and_schema(tmp_path):
    ok = run_cli("validate", str(ROOT / "manifests" / "stage1.yaml"))
    assert ok.returncode == 0, ok.stderr
    schema = json.loads(run_cli("schema").stdout)
    assert "sources" in schema["properties"] and "stages" in schema["properties"]
    stage_names = json.dumps(schema)
    for name in ("normalize", "langid", "exact_dedup"):
        assert f'"const": "{name}"' in stage_names


def test_language_settings_are_checked_with_lines(tmp_path):
    text = _base(tmp_path, "  - stage: langid\n    model: nothere.ftz\n    thresholds: {english: 0.5}\n").replace(
        "    licence: CC-BY-SA-4.0\n", "    licence: CC-BY-SA-4.0\n    language: {query: klingon, positive: fr}\n", 1
    )
    msg = _error(tmp_path, text)
    assert "m.yaml:8: sources[0].language: Value error, 'klingon' is not a language label" in msg
    assert (
        "m.yaml:11: stages[0].model: Value error, no fastText model at" in msg
        and "bundled models: lid176, sib200" in msg
    )
    assert "m.yaml:12: stages[0].thresholds" in msg
    ok = _base(tmp_path, "  - stage: langid\n    model: sib200\n").replace(
        "    licence: CC-BY-SA-4.0\n",
        "    licence: CC-BY-SA-4.0\n    language: {query: zho_Hans, positive: de}\n    language_policy: trusted\n",
        1,
    )
    (tmp_path / "ok.yaml").write_text(ok)
    source = load_manifest(tmp_path / "ok.yaml").sources[0]
    assert source.declared_language("query") == "cmn_Hans" and source.declared_language("positive") == "deu_Latn"
    assert source.declared_language("negatives") is None and source.language_policy == "trusted"


def test_dedup_priority_must_name_sources(tmp_path):
    msg = _error(tmp_path, _base(tmp_path, "  - stage: exact_dedup\n    priority: [x, nope]\n"))
    assert "m.yaml:8: stages: Value error, stages[0] (exact_dedup) names sources the manifest lacks: ['nope']" in msg


def test_dense_mining_needs_a_model_folder(tmp_path):
    msg = _error(tmp_path, _base(tmp_path, "  - stage: mine_negatives\n    retriever: dense\n"))
    assert "m.yaml:9: stages[0]" in msg and "retriever: dense needs `model`" in msg
    (tmp_path / "not_a_model").mkdir()
    msg = _error(tmp_path, _base(tmp_path, "  - stage: mine_negatives\n    retriever: dense\n    model: not_a_model\n"))
    assert "m.yaml:11: stages[0].model" in msg and "is not a model folder" in msg


def test_a_stage_reading_negative_texts_after_they_are_stored_by_reference_is_refused(tmp_path):
    after = (
        "  - stage: build_pairs\n  - stage: normalize\n    fields: [query, negatives]\n  - stage: decontaminate\n"
        "    fields: [query]\n    eval_sets: [{name: e, path: m.yaml, columns: [text]}]\n"
    )
    msg = _error(tmp_path, _base(tmp_path, after))
    assert (
        "m.yaml:10: stages[1] (normalize) reads negative texts, which stages[0] (build_pairs) stores by reference "
        "before it: put normalize first"
    ) in msg
    assert "stages[2]" not in msg  # the same stage without negatives is fine


def test_a_mining_corpus_must_be_a_corpus_source_and_be_named(tmp_path):
    msg = _error(tmp_path, _base(tmp_path, "  - stage: mine_negatives\n    pool: corpus\n    corpus: wiki\n"))
    assert "m.yaml:8: stages: Value error, stages[0] (mine_negatives) names sources the manifest lacks: ['wiki']" in msg
    msg = _error(tmp_path, _base(tmp_path, "  - stage: mine_negatives\n    pool: corpus\n    corpus: x\n"))
    assert "uses ['x'] as a corpus, but a corpus source has `task: corpus`" in msg
    msg = _error(tmp_path, _base(tmp_path, "  - stage: mine_negatives\n    pool: corpus\n"))
    assert "m.yaml:9: stages[0]" in msg and "`pool: corpus` and `corpus: SOURCE` go together" in msg
    corpus = _base(tmp_path).replace(
        "stages:\n",
        "  - name: wiki\n    task: corpus\n    path: {p}\n    columns: {{query: context}}\n"
        "    licence: CC-BY-SA-4.0\nstages:\n".format(p=ROOT / "manifests" / "samples" / "xquad_r" / "en.jsonl.gz"),
    )
    assert "corpus sources ['wiki'] are named by no stage" in _error(tmp_path, corpus)
