"""The stage contract and the plan: declared columns checked with their line, an explicit registry,
fused row-local stages counted like separate ones, work on the worker only, same rows in process
and on Ray."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from core.settings import ConfigError
from pipeline.engine import execute
from pipeline.engine.manifest import load_manifest, manifest_model
from pipeline.engine.plan import plan_steps
from pipeline.engine.runner import Runner
from pipeline.engine.stage import Registry
from pipeline.stages import REGISTRY
from pipeline.stages.langid import LangTag
from pipeline.stages.normalize import Normalize
from tests.conftest import SAMPLES, shard_digests, write_manifest
from tests.stages_for_tests import ShortQueries

SOURCES = [
    {
        "name": "xquad_r",
        "task": "retrieval",
        "path": str(SAMPLES / "xquad_r" / "[de]*.jsonl.gz"),
        "columns": {"query": "question", "positive": "context"},
        "licence": "CC-BY-SA-4.0",
    }
]


def test_a_stage_reading_a_column_no_earlier_stage_writes_fails_with_its_line(tmp_path):
    path = write_manifest(
        tmp_path, SOURCES, [{"stage": "normalize"}, {"stage": "near_dedup", "fields": ["query"]}, {"stage": "langid"}]
    )
    with pytest.raises(ConfigError) as err:
        load_manifest(path, REGISTRY)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "near_dedup" in text)
    assert (
        f"manifest.yaml:{line}: stages[1] (near_dedup) reads 'query_lang', which stages[2] (langid) writes after it"
        in str(err.value)
    )
    # comparing across languages reads no language: valid in that order; without langid every row is `und`
    ok = write_manifest(
        tmp_path, SOURCES, [{"stage": "near_dedup", "fields": ["query"], "cross_language": True}, {"stage": "langid"}]
    )
    assert load_manifest(ok, REGISTRY).stages[0].stage == "near_dedup"
    alone = write_manifest(tmp_path, SOURCES, [{"stage": "near_dedup", "fields": ["query"]}])
    assert load_manifest(alone, REGISTRY).stages[0].stage == "near_dedup"


def test_a_stage_registered_after_import_is_known_to_the_manifest(tmp_path):
    registry = Registry((Normalize, LangTag))
    path = write_manifest(tmp_path, SOURCES, [{"stage": "langid"}, {"stage": "short_queries", "log": "x"}])
    with pytest.raises(ConfigError, match="short_queries"):
        load_manifest(path, registry)
    registry.register(ShortQueries)
    assert load_manifest(path, registry).stages[1].max_chars == 40
    assert "short_queries" in str(manifest_model(registry).model_json_schema())
    with pytest.raises(ValueError, match="two stages named 'langid'"):
        registry.register(type("Other", (LangTag,), {}))


def test_row_local_stages_fuse_and_checkpoint_settings_split_them():
    configs = [
        REGISTRY[s].config_model(stage=s, **extra)
        for s, extra in (
            ("normalize", {}),
            ("langid", {}),
            ("exact_dedup", {}),
            ("instruct", {}),
            (
                "decontaminate",
                {
                    "eval_sets": [
                        {"name": "e", "path": str(SAMPLES / "xquad_r_heldout" / "en.jsonl.gz"), "columns": ["question"]}
                    ],
                    "checkpoint": True,
                },
            ),
            ("instruct", {"tasks": {"retrieval": "x"}}),
        )
    ]
    names = [s.name for s in plan_steps(configs, REGISTRY, "fp")]
    assert names == [
        "00-ingest",
        "01-normalize+02-langid",
        "03-exact_dedup",
        "04-instruct+05-decontaminate",
        "06-instruct",
    ]
    every = [s.name for s in plan_steps(configs, REGISTRY, "fp", every_step=True)]
    assert every == [
        "00-ingest",
        "01-normalize",
        "02-langid",
        "03-exact_dedup",
        "04-instruct",
        "05-decontaminate",
        "06-instruct",
    ]
    fused, split = plan_steps(configs, REGISTRY, "fp"), plan_steps(configs, REGISTRY, "fp", every_step=True)
    assert fused[1].fingerprint == split[2].fingerprint  # a stage's fingerprint does not depend on grouping


def _run(folder: Path, stages: list[dict], registry: Registry, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Runner(
        load_manifest(write_manifest(folder, SOURCES, stages, stats={"enabled": False}, **extra), registry),
        registry,
        quiet=True,
        log=lambda m: None,
    ).run()
    return folder / "run"


@pytest.mark.slow
def test_fused_every_step_pooled_and_ray_give_the_same_ledger_and_shards_and_setup_runs_on_workers_only(
    tmp_path, monkeypatch
):
    """In process (alone or with worker processes) and on Ray (every step, near_dedup's rounds
    included), fused and not: one result."""
    registry = Registry((*(REGISTRY[n] for n in REGISTRY.names()), ShortQueries))
    log = tmp_path / "setups.log"
    # lid176, the faster model, for speed: which model tags does not matter to this test.
    stages = [
        {"stage": "normalize"},
        {"stage": "langid", "model": "lid176"},
        {"stage": "short_queries", "max_chars": 45, "log": str(log)},
        {
            "stage": "decontaminate",
            "eval_sets": [
                {
                    "name": "heldout",
                    "path": str(SAMPLES / "xquad_r_heldout" / "de.jsonl.gz"),
                    "columns": ["question", "context"],
                }
            ],
        },
        {"stage": "exact_dedup", "key": ["positive"]},
        {"stage": "near_dedup", "fields": ["query"], "threshold": 0.3},
    ]
    fused = _run(tmp_path / "fused", stages, registry)
    assert log.read_text().count("setup") == 1  # in process: one worker, one set-up
    assert sorted(p.name for p in (fused / "stages").iterdir()) == [
        "00-ingest",
        "01-normalize+02-langid+03-short_queries+04-decontaminate",
        "05-exact_dedup",
        "06-near_dedup",
    ]
    _run(tmp_path / "fused", stages, registry)  # resumed: nothing is set up again
    assert log.read_text().count("setup") == 1
    every = _run(tmp_path / "every", stages, registry, checkpoint="every_step")
    on_ray = _run(tmp_path / "ray", stages, registry, ray={"in_process_rows": 0})
    monkeypatch.setattr(execute, "POOL_MIN_ROWS", 0)
    monkeypatch.setattr(execute, "POOL_MIN_BYTES", 0)  # ingest too
    before = log.read_text().count("setup")
    pooled = _run(tmp_path / "pool", stages, registry)
    assert log.read_text().count("setup") - before == 2  # one set-up in each of the two worker processes

    def ledger(run: Path) -> pl.DataFrame:
        return pl.read_parquet(run / "ledger.parquet").sort(pl.all(), nulls_last=True)

    counts = ledger(fused)
    assert counts.equals(ledger(every)) and counts.equals(ledger(on_ray)) and counts.equals(ledger(pooled))
    assert shard_digests(fused) == shard_digests(every) == shard_digests(on_ray) == shard_digests(pooled)
    # every stage is in the ledger, balanced, with its own drops and flags
    dropped = counts.filter(kind="dropped").group_by("step", "reason").agg(pl.col("rows").sum()).sort("step")
    assert dropped["step"].to_list() == ["03-short_queries", "04-decontaminate", "05-exact_dedup", "06-near_dedup"]
    assert dropped["reason"].to_list() == ["too_long", "eval_overlap:heldout", "exact_duplicate", "near_duplicate"]
    langs_in = counts.filter(step="01-normalize", kind="out")["language"].unique().to_list()
    assert langs_in == ["und"] and "deu_Latn" in counts.filter(step="02-langid", kind="out")["language"].to_list()
    for step in (
        "01-normalize",
        "02-langid",
        "03-short_queries",
        "04-decontaminate",
        "05-exact_dedup",
        "06-near_dedup",
    ):
        rows = {k: counts.filter(step=step, kind=k)["rows"].sum() for k in ("in", "out", "dropped")}
        assert rows["in"] == rows["out"] + rows["dropped"] > 0, step
    assert not counts.filter(
        step="04-decontaminate", kind="flagged"
    ).height  # langid's flags are counted once, at langid
