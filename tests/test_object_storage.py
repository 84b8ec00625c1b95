"""Object storage everywhere a path is accepted, against a real S3 API on loopback (moto in server
mode): sources (globs), evaluation sets and the output in S3; commit markers; crash and resume; the
lease; throttling and dropped connections; a two-node cluster whose nodes share no folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from core import storage
from pipeline.engine.checkpoint import MARKER, read_marker
from pipeline.engine.lock import Lease, RunLocked
from pipeline.engine.runner import storage_copy
from pipeline.ops.exchange import SCRATCH_CACHE
from tests.conftest import (
    BUCKET,
    ROOT,
    SAMPLES,
    kill_tree,
    object_digests,
    passages_manifest,
    run_cli,
    stage1_manifest,
    stage1_sources,
    steps_in,
    upload_tree,
    write_manifest,
)

pytestmark = pytest.mark.slow
DATA = f"s3://{BUCKET}/samples"
LEASE = 3  # seconds: the lease term of runs that are killed here


@pytest.fixture(scope="module")
def s3_samples(s3_endpoint) -> str:
    """The stage-1 samples and the held-out evaluation split, uploaded to S3."""
    for name in ("xquad_r", "sib200_bitext", "xquad_r_heldout"):
        upload_tree(SAMPLES / name, f"{DATA}/{name}")
    return DATA


def _s3_stage1(folder: Path, output: str) -> Path:
    """manifests/stage1.yaml with every path in S3: sources (globs), evaluation set, output."""
    sources = stage1_sources()
    for source in sources:
        source["path"] = source["path"].replace(str(SAMPLES), DATA)
    manifest = stage1_manifest(folder, sources, output)
    text = manifest.read_text(encoding="utf-8").replace(str(ROOT / "manifests" / "samples"), DATA)
    manifest.write_text(text, encoding="utf-8")
    return manifest


@pytest.fixture(scope="module")
def s3_run(s3_samples, loopback_cluster, tmp_path_factory) -> str:
    """The stage-1 run with everything in S3, on the two-node loopback cluster: each node has only
    its own temporary folders (no path is shared), every step runs on Ray and reads and writes S3."""
    output = f"s3://{BUCKET}/runs/stage1"
    manifest = _s3_stage1(tmp_path_factory.mktemp("s3"), output)
    copies_before = set(SCRATCH_CACHE.rglob("*.npy"))
    result = run_cli("run", str(manifest), "--quiet", "--ray-address", loopback_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    # The nodes' copies of scratch arrays went with the scratch space; the driver keeps a local
    # copy of the last checkpoint only (the next run's input), not of every step.
    assert set(SCRATCH_CACHE.rglob("*.npy")) <= copies_before
    steps = sorted(storage.name(p) for p in storage.children(f"{output}/stages"))
    assert sorted(p.name for p in (storage_copy(output) / "stages").iterdir()) == steps[-1:]
    return output


def _rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows comparable between runs reading the same files from different places: `origin` keeps
    only the file name and line."""
    return frame.with_columns(pl.col("origin").str.extract(r"([^/]+)$")).sort("id", "origin")


def test_stage1_in_s3_on_a_two_node_cluster_gives_the_local_rows(s3_run, stage1_run):
    from_s3 = pl.concat(
        [
            pl.read_parquet(storage.read_bytes(p))
            for p in storage.list_files(f"{s3_run}/shards")
            if p.endswith(".parquet")
        ]
    )
    local = pl.read_parquet(stage1_run / "shards" / "**" / "*.parquet")
    assert from_s3.height > 10_000 and _rows(from_s3).equals(_rows(local))
    assert from_s3["origin"].str.starts_with(f"{DATA}/").all()
    assert read_marker(f"{s3_run}/stages/00-ingest")["in_process"] is False  # on the cluster
    # Every file a run writes is there: the dataset card, ledger, quarantine, reports, statistics.
    names = {p[len(s3_run) + 1 :] for p in storage.list_files(s3_run)}
    for name in (
        "README.md",
        "ledger.parquet",
        "quarantine/part-00000.parquet",
        "stats/dashboard.html",
        "stats/languages.parquet",
    ):
        assert name in names, name
    ledger = pl.read_parquet(storage.read_bytes(f"{s3_run}/ledger.parquet"))
    assert ledger.equals(pl.read_parquet(stage1_run / "ledger.parquet"))
    # Exactly the committed files: each step's marker names its attempt and files, nothing else is
    # left; the shards folder holds what its marker lists; the lease is gone.
    for step in storage.children(f"{s3_run}/stages"):
        marker = read_marker(step)
        assert {p[len(step) + 1 :] for p in storage.list_files(step)} == {MARKER} | {
            f"{marker['attempt']}/{f}" for f in marker["files"]
        }
    shards = read_marker(f"{s3_run}/shards")
    assert {p[len(s3_run) + 8 :] for p in storage.list_files(f"{s3_run}/shards")} == {MARKER} | {
        s["path"] for s in shards["shards"]
    }
    # the passage table, as its marker says
    corpus = {p[len(s3_run) + 8 :] for p in storage.list_files(f"{s3_run}/corpus")}
    assert corpus and corpus == {c["path"] for c in shards["corpus"]}
    assert not any(n.startswith(("work/", "_lease")) for n in names)


def test_rerun_on_s3_is_a_no_op(s3_run, tmp_path):
    before = object_digests(s3_run)
    manifest = _s3_stage1(tmp_path, s3_run)
    again = run_cli("run", str(manifest), "--quiet")
    assert again.returncode == 0 and again.stdout.count("(done before)") == steps_in(manifest), again.stderr[-2000:]
    assert object_digests(s3_run) == before


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.1)  # each look is a few requests to the S3 server the run uses too


def test_kill_9_during_a_step_and_during_shard_upload_then_resume_is_identical(s3_run, s3_proxy, tmp_path):
    """Killed once while a step's files are being written, once while shards are being uploaded
    (uploads slowed by the proxy, so the moment is certain): nothing of either attempt is taken for
    committed data, and the resumed run (in process) writes the same shards, byte for byte, as the
    uninterrupted one (on the cluster)."""
    output = f"s3://{BUCKET}/runs/killed"
    manifest = _s3_stage1(tmp_path, output)
    env = {"AWS_ENDPOINT_URL": s3_proxy.url, "ML_EMBED_DATA_LEASE_SECONDS": str(LEASE)}

    def start() -> subprocess.Popen:
        time.sleep(LEASE + 1)  # the killed run's lease expires
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(manifest), "--quiet"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def uncommitted_part(step_prefix: str) -> bool:
        steps = [s for s in storage.children(f"{output}/stages") if storage.name(s).startswith(step_prefix)]
        return (
            bool(steps)
            and read_marker(steps[0]) is None
            and any(p.endswith(".parquet") for p in storage.list_files(steps[0]))
        )

    proc = start()
    _wait_for(lambda: uncommitted_part("01-"), proc)  # the fused row-local step has written a file
    kill_tree(proc.pid)
    proc.wait()
    try:
        proc = start()
        _wait_for(lambda: read_marker(f"{output}/stages/07-near_dedup") is not None, proc)
        s3_proxy.put_delay = 0.3  # from here on, uploads are slow enough to be caught in the middle
        _wait_for(lambda: any(p.endswith(".parquet") for p in storage.list_files(f"{output}/shards")), proc)
        kill_tree(proc.pid)
        proc.wait()
    finally:
        s3_proxy.put_delay = 0.0
    assert read_marker(f"{output}/shards") is None  # killed mid-upload: some shards, no marker
    time.sleep(LEASE + 1)
    finished = run_cli("run", str(manifest), "--quiet", env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "taking over" in finished.stderr  # the killed run's lease had expired
    assert object_digests(output) == object_digests(s3_run)


def test_second_run_on_the_same_s3_output_is_refused_and_an_expired_lease_is_taken_over(s3_samples, tmp_path):
    output = f"s3://{BUCKET}/runs/locked"
    manifest = write_manifest(
        tmp_path, [{**stage1_sources()[0], "path": f"{DATA}/xquad_r/en.jsonl.gz"}], [], output=output
    )
    with Lease(output, seconds=60):
        refused = run_cli("run", str(manifest), "--quiet")
    assert refused.returncode == 3 and "another run" in refused.stderr and "holds its lease" in refused.stderr
    assert not storage.list_files(f"{output}/stages")
    crashed = Lease(output, seconds=2).__enter__()  # the store's clock counts whole seconds
    crashed._stop.set()  # a crashed run: its lease is never renewed nor released
    with pytest.raises(RunLocked, match="holds its lease"):
        Lease(output, seconds=2).__enter__()
    time.sleep(3)
    said: list[str] = []
    with Lease(output, seconds=2, log=said.append):
        assert said and "stopped renewing its lease" in said[0]


def test_throttling_and_dropped_connections_are_retried(s3_samples, s3_proxy, tmp_path):
    """Every 5th request answered 503 SlowDown and every 9th connection dropped: the run retries
    with backoff and writes the same shards as an undisturbed one."""
    sources = [{**stage1_sources()[0], "path": f"{DATA}/xquad_r/[dz]*.jsonl.gz"}]
    settings = {"stats": {"enabled": False}, "shards": {"rows_per_shard": 500}}  # several shards
    clean = run_cli(
        "run", str(write_manifest(tmp_path, sources, [], output=f"s3://{BUCKET}/runs/clean", **settings)), "--quiet"
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    s3_proxy.fail_every, s3_proxy.drop_every = 5, 9
    try:
        faulty = run_cli(
            "run",
            str(write_manifest(tmp_path, sources, [], output=f"s3://{BUCKET}/runs/faulty", **settings)),
            "--quiet",
            env={"AWS_ENDPOINT_URL": s3_proxy.url},
        )
    finally:
        s3_proxy.fail_every = s3_proxy.drop_every = 0
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert s3_proxy.failed >= 5 and s3_proxy.dropped >= 3
    assert object_digests(f"s3://{BUCKET}/runs/faulty") == object_digests(f"s3://{BUCKET}/runs/clean")


def test_an_unsupported_or_malformed_url_fails_validation_with_its_line(tmp_path):
    for url, message in (
        ("ftp://host/data/*.jsonl", "unsupported storage 'ftp://'"),
        ("s3:/corpus/x/*.jsonl", "malformed URL"),
    ):
        manifest = write_manifest(tmp_path, [{**stage1_sources()[0], "path": url}], [], output=url.rsplit("/", 1)[0])
        result = run_cli("validate", str(manifest))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if message in line]
        assert {line.split(": ", 2)[1] for line in lines} >= {"output", "sources[0].path"}, result.stderr
        assert all(line.startswith(f"{manifest}:") for line in lines)
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "ftp:").exists()


def test_globs_in_s3_match_what_the_same_globs_match_locally(s3_samples):
    for pattern in (
        "xquad_r/*.jsonl.gz",
        "**/*.jsonl.gz",
        "xquad_r/[dz]?.jsonl.gz",
        "*/e*.tsv.gz",
        "xquad_r/en.jsonl.gz",
        "none/*.gz",
    ):
        local = [p[len(str(SAMPLES)) + 1 :] for p in storage.glob(f"{SAMPLES}/{pattern}")]
        in_s3 = [p[len(DATA) + 1 :] for p in storage.glob(f"{DATA}/{pattern}")]
        uploaded = [p for p in local if p.split("/")[0] in ("xquad_r", "sib200_bitext", "xquad_r_heldout")]
        assert in_s3 == uploaded, pattern


def test_negatives_stored_by_reference_in_s3(s3_endpoint, tmp_path):
    """The passage store and the passage table of a run whose output is in S3 (its workers write the
    store there; the driver reads it back for the table)."""
    output = f"s3://{BUCKET}/runs/passages"
    result = run_cli("run", str(passages_manifest(tmp_path, output=output)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p for p in storage.list_files(f"{output}/passages") if p.endswith(".parquet")]
    marker = read_marker(f"{output}/shards")
    corpus = pl.concat([pl.read_parquet(storage.read_bytes(f"{output}/corpus/{c['path']}")) for c in marker["corpus"]])
    shards = pl.concat([pl.read_parquet(storage.read_bytes(f"{output}/shards/{s['path']}")) for s in marker["shards"]])
    topics = shards.filter(source="topics")
    assert (topics["negative_ids"].list.len() == 3).all() and set(topics["negative_ids"].explode()) <= set(
        corpus["doc_id"]
    )
