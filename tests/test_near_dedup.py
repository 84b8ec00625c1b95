"""Near-duplicate dedup in rounds of tasks (on Ray, in worker processes or here): against a
single-process reference on real UDHR paragraphs with planted edited copies; determinism across
block layouts and executors; languages; and the connected-components algorithm against scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 (pa.parquet)
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from core.record import DETAIL, DROP, WORK_SCHEMA
from pipeline.engine.stage import RunContext
from pipeline.ops import exchange
from pipeline.ops.minhash import band_keys
from pipeline.ops.tasks import InProcess, Pool, RayTasks
from pipeline.stages.near_dedup import NearDedup, NearDedupConfig
from pipeline.tools.dedup_calibration import planted_corpus


@pytest.fixture(scope="module")
def planted(shared_data) -> tuple[pa.Table, dict[str, str]]:
    rows = planted_corpus(shared_data, texts=50)
    records = [
        {
            "id": f"{i:06d}",
            "source": "late" if i % 3 else "early",
            "task": "retrieval",
            "query": r["text"],
            "licence": "x",
            "origin": f"f:{i}",
            "query_lang": r["language"],
        }
        for i, r in enumerate(rows)
    ]
    return pa.Table.from_pylist(records, schema=WORK_SCHEMA), {f"{i:06d}": r["cluster"] for i, r in enumerate(rows)}


def _run(table: pa.Table, blocks: int, executor: str = "ray", tmp: Path | None = None, **config) -> pl.DataFrame:
    """The stage's plan over `table` cut into `blocks` input files, its rounds run by `executor`."""
    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp))
    files = []
    for i, chunk in enumerate(np.array_split(np.arange(table.num_rows), blocks)):
        files.append(str(folder / f"in-{i}.parquet"))
        pa.parquet.write_table(table.take(pa.array(chunk, pa.int64())), files[-1])
    runner = {"ray": RayTasks, "pool": Pool, "here": InProcess}[executor]()
    rounds = exchange.Rounds(str(folder / "scratch"), runner)
    stage = NearDedup(NearDedupConfig(stage="near_dedup", **config), RunContext(Path("."), ("early", "late")))
    out = [exchange.get(b) for b in stage.plan(exchange.blocks(files), table.num_rows, rounds)]
    rounds.close()
    runner.close()
    assert not (folder / "scratch").exists()
    return pl.from_arrow(pa.concat_tables(out)).sort("id")  # type: ignore[return-value]


def _reference(table: pa.Table, config: NearDedupConfig) -> set[str]:
    """The ids the stage should drop, computed in one process: every pair of rows of one language
    sharing a band and verified by the stage's own decision is linked (all pairs, not only the
    bucket centre's), components by scipy, kept row = earliest source, then smallest id."""
    sig = config.signature([table.column("query")])
    bands, rows = config.banding()
    keys = band_keys(sig, range(bands), rows)
    langs = table.column("query_lang").to_pylist()
    buckets: dict[tuple, list[int]] = {}
    for i in range(table.num_rows):
        for k in keys[i]:
            buckets.setdefault((langs[i], int(k)), []).append(i)
    candidates = sorted(
        {(a, b) for members in buckets.values() for x, a in enumerate(members) for b in members[x + 1 :]}
    )
    a, b = np.array([p[0] for p in candidates]), np.array([p[1] for p in candidates])
    ok = config.verified(sig[a], sig[b])
    u, v = a[ok], b[ok]
    n = table.num_rows
    _, comp = scipy_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)
    df = pl.DataFrame(
        {
            "id": table.column("id").to_pylist(),
            "prio": [s != "early" for s in table.column("source").to_pylist()],
            "c": comp,
        }
    )
    df = df.sort("c", "prio", "id").with_columns(pl.int_range(pl.len()).over("c").alias("rank"))
    return set(df.filter(pl.col("rank") > 0)["id"])


def test_finds_planted_duplicates_like_a_single_process_reference(ray_local, planted):
    table, cluster = planted
    out = _run(table, blocks=5)
    assert out.height == table.num_rows
    dropped = set(out.filter(pl.col(DROP) == "near_duplicate")["id"])
    assert dropped == _reference(table, NearDedupConfig(stage="near_dedup"))
    # Against the planted truth: every planted cluster keeps a row (none merged into another), at
    # most 1% of the edited copies stay apart (an edit can take a short paragraph below 0.5).
    kept = out.filter(pl.col(DROP).is_null()).with_columns(pl.col("id").replace_strict(cluster).alias("cluster"))
    truth = pl.DataFrame({"id": list(cluster), "cluster": list(cluster.values())})
    assert kept["cluster"].n_unique() == truth["cluster"].n_unique()
    assert kept.height - truth["cluster"].n_unique() <= 0.01 * (truth.height - truth["cluster"].n_unique())
    # Clusters found whole: size on the kept row; kept = earliest source, then smallest id.
    whole = kept.filter(pl.len().over("cluster") == 1)
    sizes = truth.group_by("cluster").len()
    assert sizes["len"].max() > 1 and whole.height > 0.95 * kept.height
    assert dict(whole.join(sizes, on="cluster").select("id", "len").iter_rows()) == dict(
        whole.select("id", "near_dup_count").iter_rows()
    )
    expected = (
        truth.with_columns(pl.col("id").str.to_integer().mod(3).ne(0).alias("late"))
        .sort("cluster", "late", "id")
        .group_by("cluster", maintain_order=True)
        .first()
    )
    assert set(whole["id"]) <= set(expected["id"])
    detail = out.filter(pl.col(DROP).is_not_null()).with_columns(pl.col(DETAIL).str.extract(r"of (\d+) ").alias("kept"))
    assert set(detail["kept"]) <= set(kept["id"])


def test_results_do_not_depend_on_block_layout_or_executor(ray_local, planted):
    table, _ = planted
    one, many = _run(table, blocks=1), _run(table, blocks=9)
    columns = ["id", DROP, DETAIL, "near_dup_count"]
    assert one.select(columns).equals(many.select(columns))
    assert one.select(columns).equals(_run(table, blocks=4, executor="here").select(columns))
    assert one.select(columns).equals(_run(table, blocks=3, executor="pool").select(columns))
    unverified = _run(table, blocks=4, verify=False, bands=32, rows=4)  # the same candidates, unchecked
    assert set(unverified.filter(pl.col(DROP).is_not_null())["id"]) >= set(one.filter(pl.col(DROP).is_not_null())["id"])


def test_languages_kept_apart_unless_asked(ray_local):
    text = (
        "All human beings are born free and equal in dignity and rights. They are endowed with reason and conscience."
    )
    rows = [
        {
            "id": str(i),
            "source": "early",
            "task": "retrieval",
            "query": text + "!" * i,
            "licence": "x",
            "origin": f"f:{i}",
            "query_lang": lang,
        }
        for i, lang in enumerate(["eng_Latn", "eng_Latn", "sco_Latn", None])
    ] + [
        {"id": "e", "source": "early", "task": "retrieval", "query": "   ", "licence": "x", "origin": "f:e"},
        {"id": "f", "source": "early", "task": "retrieval", "query": "...", "licence": "x", "origin": "f:f"},
    ]
    table = pa.Table.from_pylist(rows, schema=WORK_SCHEMA)
    within = _run(table, blocks=2)
    assert within.filter(pl.col(DROP).is_not_null())["id"].to_list() == ["1"]
    across = _run(table, blocks=2, cross_language=True)
    assert across.filter(pl.col(DROP).is_not_null())["id"].to_list() == ["1", "2", "3"]
    assert across.filter(pl.col("id") == "0")["near_dup_count"].item() == 4
    assert across.filter(pl.col("id").is_in(["e", "f"]))[DROP].is_null().all()  # texts without words match nothing


def test_components_match_scipy_on_a_random_graph_with_a_long_chain(ray_local, tmp_path):
    from pipeline.ops.components import connected_components, route_undirected

    rng = np.random.default_rng(0)
    n = 20_000
    u, v = rng.integers(0, n, 12_000), rng.integers(0, n, 12_000)
    chain = np.arange(30_000, 33_000)  # a path of 3,000 nodes: the hard case for label propagation
    u, v = np.concatenate([u, chain[:-1]]), np.concatenate([v, chain[1:]])
    parts = 3
    producers = [
        route_undirected(pa.table({"u": u[s], "v": v[s]}), parts) for s in np.array_split(np.arange(len(u)), 4)
    ]
    rounds = exchange.Rounds(str(tmp_path / "scratch"), RayTasks())
    labels, count = connected_components(rounds, producers, parts)
    got = pl.from_arrow(pa.concat_tables([exchange.get(x) for x in labels]))
    _, comp = scipy_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(chain[-1] + 1,) * 2), directed=False)
    ref = pl.DataFrame({"node": np.arange(chain[-1] + 1), "c": comp}).with_columns(
        pl.col("node").min().over("c").alias("ref")
    )
    joined = ref.join(got, on="node", how="inner")
    assert got["node"].is_unique().all() and set(got["node"]) == set(np.concatenate([u, v]).tolist())
    assert joined.height == got.height and (joined["label"] == joined["ref"]).all()
    assert count < 30
    # Each round deleted the edges it read: what is left in scratch is the labels.
    left = sorted(p for p in (tmp_path / "scratch").rglob("*.parquet"))
    assert {p.parent.name.split("-", 3)[-1] for p in left} <= {"large_task"} and len(left) <= parts
    rounds.close()


def test_config_checks_bands_and_rows():
    with pytest.raises(ValueError, match="both"):
        NearDedupConfig(stage="near_dedup", bands=10)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        NearDedupConfig(stage="near_dedup", bands=20, rows=8, num_perm=128)
    assert NearDedupConfig(stage="near_dedup", bands=14, rows=8, num_perm=112).banding() == (14, 8)
    assert NearDedupConfig(stage="near_dedup").banding() == (32, 4)  # verified: few misses
    assert NearDedupConfig(stage="near_dedup", verify=False).banding() == (25, 5)
    # Two fields: a band takes hashes of both, so the same S-curve needs half as many of each.
    assert NearDedupConfig(stage="near_dedup", fields=["query", "positive"]).banding() == (42, 2)


@pytest.mark.slow
def test_run_finds_the_planted_clusters_and_a_two_node_cluster_gives_identical_shards(
    shared_data, loopback_cluster, tmp_path
):
    import json

    from tests.conftest import run_cli, shard_digests, write_manifest

    rows = planted_corpus(shared_data, texts=60, seed=3)
    data = tmp_path / "planted.jsonl"
    data.write_text(
        "".join(json.dumps({"text": r["text"], "cluster": r["cluster"]}, ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8",
    )
    sources = [
        {
            "name": "udhr",
            "task": "clustering",
            "path": str(data),
            "columns": {"query": "text", "label": "cluster"},
            "licence": "public-domain",
        }
    ]
    stages = [{"stage": "normalize"}, {"stage": "near_dedup"}]
    runs = {}
    for name, extra in [("local", []), ("two_nodes", ["--ray-address", loopback_cluster])]:
        folder = tmp_path / name
        folder.mkdir()
        result = run_cli("run", str(write_manifest(folder, sources, stages)), "--quiet", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = folder / "run"
    assert shard_digests(runs["local"]) == shard_digests(runs["two_nodes"])
    shards = pl.read_parquet(runs["local"] / "shards" / "**" / "*.parquet")
    clusters = len({r["cluster"] for r in rows})
    planted_dups = len(rows) - clusters
    # Every planted cluster keeps a row (none merged into another); at most 1% of the edited copies
    # are kept apart (an edit can push a short paragraph below the threshold, e.g. Inuktitut here).
    assert shards["label"].n_unique() == clusters and shards.height - clusters <= 0.01 * planted_dups
    ledger = pl.read_parquet(runs["local"] / "ledger.parquet").filter(step="02-near_dedup")
    assert ledger.filter(kind="dropped", reason="near_duplicate")["rows"].sum() == len(rows) - shards.height
    assert shards["near_dup_count"].sum() == len(rows)


def test_several_fields_must_all_be_alike(ray_local):
    passage = (
        "The Panthers defense gave up just 308 points, ranking sixth in the league, while also leading the NFL in "
        "interceptions with 24 and boasting four Pro Bowl selections."
    )
    rows = [
        ("a", "How many points did the Panthers defense surrender?", passage),
        ("b", "How many interceptions did the Panthers defense make?", passage),  # same passage, another question
        ("c", "How many points did the Panthers' defense surrender?", passage + " Source: Wikipedia."),  # both alike
        (
            "d",
            "How many points did the Panthers defense surrender?",
            "An unrelated passage about the weather in Paris in May.",
        ),
    ]
    table = pa.Table.from_pylist(
        [
            {
                "id": i,
                "source": "early",
                "task": "retrieval",
                "query": q,
                "positive": p,
                "licence": "x",
                "origin": f"f:{i}",
                "query_lang": "eng_Latn",
            }
            for i, q, p in rows
        ],
        schema=WORK_SCHEMA,
    )
    both = _run(table, blocks=2, fields=["query", "positive"])
    assert both.filter(pl.col(DROP).is_not_null())["id"].to_list() == ["c"]
    # passage alone
    assert _run(table, blocks=2, fields=["positive"]).filter(pl.col(DROP).is_not_null())["id"].to_list() == ["b", "c"]
