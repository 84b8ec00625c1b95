"""The shipped stage-2 manifest end to end, offline: every task type in the shards, instructed, with
mined or constructed negatives, and the mixing plan written."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.conftest import ROOT, chart_sizes, open_page, run_cli

pytestmark = pytest.mark.slow


def test_stage2_sample_run_has_every_task_instructed_with_negatives(stage2_run):
    tmp_path = stage2_run
    shards = pl.read_parquet(tmp_path / "run" / "shards" / "**" / "*.parquet")
    assert set(shards["task"]) == {"retrieval", "bitext", "sts", "pair_classification", "classification", "clustering"}
    # what the trainer evaluates on
    heldout = pl.read_ndjson(ROOT / "manifests" / "samples" / "xquad_r_heldout" / "*.jsonl.gz")
    assert (
        shards.filter(
            pl.col("query").is_in(heldout["question"].implode())
            | pl.col("positive").is_in(heldout["context"].implode())
        ).height
        == 0
    )
    assert shards["instruction"].is_not_null().all() and shards["positive"].is_not_null().all()
    # negatives by id, every passage once in the passage table
    corpus = pl.read_parquet(tmp_path / "run" / "corpus" / "*.parquet")
    assert corpus["doc_id"].is_unique().all() and set(shards["negative_ids"].explode().drop_nulls()) <= set(
        corpus["doc_id"]
    )
    text = dict(corpus.select("doc_id", "text").iter_rows())
    shards = shards.with_columns(pl.col("negative_ids").list.eval(pl.element().replace_strict(text)).alias("negatives"))
    retrieval = shards.filter(task="retrieval")
    assert (retrieval["negatives"].list.len() <= 24).all() and retrieval["negatives"].list.len().mean() > 20
    mined = retrieval.filter(pl.col("positive_score").is_not_null())
    assert (mined["negative_scores"].list.len() == mined["negatives"].list.len()).all()
    assert not mined.filter(pl.col("negatives").list.contains(pl.col("positive"))).height
    classified = shards.filter(task="classification")
    assert (classified["negatives"].list.len() == 1).all() and set(classified["negatives"].explode()) <= set(
        classified["positive"]
    )  # label descriptions
    assert shards.filter(task="clustering")["negatives"].list.len().min() >= 1
    assert (shards.filter(task="sts")["score"] >= 4.0).all()
    reports = tmp_path / "run" / "reports"
    mining = pl.read_csv(next(reports.glob("*-mine_negatives.csv")))
    assert mining["queries"].sum() == retrieval.height
    # A query alone in its language has no pool to mine: kept, flagged, counted (tests/test_mining_pools.py
    # makes one; here every unmined row must be one of those).
    ledger = pl.read_parquet(tmp_path / "run" / "ledger.parquet")
    skipped = ledger.filter(kind="flagged", reason="mining_skipped:pool_too_small")["rows"].sum()
    unmined = retrieval.filter(pl.col("positive_score").is_null())
    assert skipped == unmined.height and unmined["negatives"].list.len().fill_null(0).sum() == 0
    assert mining["queries_without_negatives"].sum() >= skipped  # with those whose every candidate a filter removed
    assert 0 < mining["removed_rank_window"].sum() <= 5 * mining["queries"].sum()
    assert (mining["positive_score_p50"] > mining["hardest_negative_score_p50"]).all() and (
        mining["margin_p50"] > 0
    ).all()
    mix = pl.read_csv(next(reports.glob("*-mix.csv")))
    assert mix["rows_after"].sum() == shards.height and abs(mix["share_after"].sum() - 1) < 1e-9
    plan = json.loads((tmp_path / "run" / "mix_plan.json").read_text())
    # no source reaches 80,000
    assert {p["source"] for p in plan} == set(shards["source"]) and all(p["rate"] == 1.0 for p in plan)
    assert ledger.filter(kind="flagged", reason="negatives_filtered:above_positive_ratio")["rows"].sum() > 0


def test_dashboard_draws_every_chart_and_shows_the_shards_figures(stage2_run, browser):
    run = stage2_run / "run"
    page, errors = open_page(browser, run / "stats" / "dashboard.html")
    sizes = chart_sizes(page)
    expected = {
        "languages",
        "scripts",
        "families",
        "top_natural",
        "top_programming",
        "tasks",
        "funnel",
        "funnel_languages",
        "confidence",
        "exact_clusters",
        "near_clusters",
        "negatives",
        "margins",
        "comparison",
        "filters",
    }
    assert expected <= {k.removeprefix("fig-") for k in sizes}, sizes.keys()
    for name, (width, height, marks) in sizes.items():
        assert width > 300 and height > 300, (name, width, height)
        if name != "fig-top_programming":  # no code in these samples: the chart says so instead
            assert marks > 0, f"{name} drew no marks"
    page.screenshot(path=str(run / "stats" / "dashboard.png"), full_page=True)
    assert errors == []

    # Figures on the page (the embedded data the charts and table are drawn from) against the shards.
    shards = pl.read_parquet(run / "shards" / "**" / "*.parquet")
    data = page.evaluate("() => JSON.parse(document.getElementById('stats-data').textContent)")
    shown = {r["language"]: r for r in data["languages"]}
    per_lang = shards.group_by(pl.col("query_lang").fill_null("und")).agg(
        pl.len().alias("records"),
        pl.col("negative_ids").list.len().sum().alias("negatives"),
        pl.col("cross_lingual").sum().alias("cross"),
    )
    assert set(shown) == set(per_lang["query_lang"])
    for lang, records, negatives, cross in per_lang.iter_rows():
        assert shown[lang]["records"] == records and shown[lang]["negatives"] == negatives, lang
        assert abs(shown[lang]["cross_lingual_share"] - cross / records) < 1e-9
    bars = data["figures"]["languages"]["data"]
    assert {x: y for trace in bars for x, y in zip(trace["x"], trace["y"])} == dict(
        per_lang.select("query_lang", "records").iter_rows()
    )
    tasks = data["figures"]["tasks"]["data"]
    by_task = {}
    for trace in tasks:
        for task, n in zip(trace["x"], trace["y"]):
            by_task[task] = by_task.get(task, 0) + n
    assert by_task == dict(shards.group_by("task").len().iter_rows())
    funnel = data["figures"]["funnel"]["data"][0]
    assert funnel["x"][-1] == shards.height
    margins = shards.select(pl.col("positive_score") - pl.col("negative_scores").list.max()).to_series().drop_nulls()
    hist = pl.read_parquet(run / "stats" / "histograms.parquet").filter(metric="margin").sort("bin")
    assert hist["count"].sum() == margins.len() > 0
    median_bin = hist.filter(pl.col("count").cum_sum() >= margins.len() / 2).row(0, named=True)
    assert median_bin["bin_lo"] - 1e-6 <= margins.median() <= median_bin["bin_hi"] + 1e-6
    comparison = pl.read_csv(run / "stats" / "comparison.csv")
    eng = comparison.filter(language="eng").row(0, named=True)  # a code without script sums every script of it
    assert (
        eng["records"] == shards.filter(pl.col("query_lang").str.starts_with("eng_")).height
        and abs(eng["reference_share"] - 0.5 / 1.01) < 1e-9
    )

    # Terminal view of one language agrees too.
    out = run_cli("stats", str(run), "--lang", "deu_Latn")
    assert out.returncode == 0, out.stderr
    assert f"{shards.filter(query_lang='deu_Latn').height:,}" in out.stdout and "German" in out.stdout
