"""Object storage's cost: the same runs with sources and output on the local disk, and in S3 served
on loopback by moto (a real S3 API over HTTP), in one process, alternating, fresh output each time.

    python bench/object_storage.py [--rows 300000] [--repeats 3]

Runs: the stage-1 sample run (manifests/stage1.yaml: normalize, langid, decontaminate, exact and
near dedup, statistics and dashboard), and `--rows` real SIB-200 pairs (as bench/pipeline_overhead.py
builds them) through normalize + langid + exact dedup. Prints the medians and the ratio S3 / local.
Loopback S3 has no network latency or bandwidth limit: the ratio is the cost of the storage layer
(HTTP, commit markers, the driver's local copy, uploads), not of a remote store.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_overhead import make_rows  # noqa: E402

BUCKET = "bench"


def start_s3() -> object:
    """moto's S3 server on a free loopback port; this process's environment points at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server


def upload(local: Path, url: str) -> None:
    from core import storage

    for path in sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]:
        storage.upload(path, f"{url}/{path.relative_to(local).as_posix()}" if local.is_dir() else url)


def stage1_manifest(folder: Path, data: str, output: str) -> Path:
    """manifests/stage1.yaml with its samples under `data` (a folder or a URL) and `output`."""
    text = (ROOT / "manifests" / "stage1.yaml").read_text(encoding="utf-8").replace("samples/", f"{data}/")
    manifest = yaml.safe_load(text)
    manifest["output"] = output
    path = folder / "stage1.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def rows_manifest(folder: Path, data: str, output: str) -> Path:
    path = folder / "rows.yaml"
    path.write_text(
        f"output: {output}\nsources:\n  - name: bench\n    task: retrieval\n    path: {data}\n"
        "    columns: {query: q, positive: p}\n    licence: CC-BY-SA-4.0\n"
        "stages:\n  - stage: normalize\n  - stage: langid\n  - stage: exact_dedup\n    key: [query, positive]\n"
        "shards:\n  rows_per_shard: 250000\n",
        encoding="utf-8",
    )
    return path


def timed_run(manifest: Path) -> tuple[float, int]:
    from pipeline.api import load_manifest, run

    start = time.perf_counter()
    result = run(load_manifest(manifest), quiet=True, log=lambda m: None)
    return time.perf_counter() - start, sum(s["rows"] for s in result.shards)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    server = start_s3()
    samples = ROOT / "manifests" / "samples"
    upload(samples, f"s3://{BUCKET}/samples")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows_file = tmp_path / "rows.parquet"
        pq.write_table(make_rows(args.data, args.rows), rows_file, row_group_size=50_000)
        upload(rows_file, f"s3://{BUCKET}/rows.parquet")
        os.environ["ML_EMBED_DATA_CACHE"] = str(tmp_path / "cache")
        cases = {
            "stage-1 samples": {
                "local": lambda d, r: stage1_manifest(d, str(samples), str(d / "run")),
                "s3": lambda d, r: stage1_manifest(d, f"s3://{BUCKET}/samples", f"s3://{BUCKET}/runs/stage1-{r}"),
            },
            f"{args.rows:,} rows": {
                "local": lambda d, r: rows_manifest(d, str(rows_file), str(d / "run")),
                "s3": lambda d, r: rows_manifest(d, f"s3://{BUCKET}/rows.parquet", f"s3://{BUCKET}/runs/rows-{r}"),
            },
        }
        for r in range(args.repeats):
            for case, where in cases.items():
                kept = {}
                for store, make in where.items():
                    folder = tmp_path / f"{case[:5]}-{store}-{r}"
                    folder.mkdir()
                    seconds, kept[store] = timed_run(make(folder, r))
                    times.setdefault((case, store), []).append(seconds)
                    print(f"repeat {r}: {case}, {store}: {seconds:.1f} s ({kept[store]:,} rows)", flush=True)
                assert kept["local"] == kept["s3"], kept
    server.stop()  # type: ignore[attr-defined]

    print(f"\nmedians of {args.repeats} (whole runs: ingest, stages, ledger, shards, statistics, card):")
    for case in cases:
        local, s3 = (statistics.median(times[(case, store)]) for store in ("local", "s3"))
        print(
            f"  {case:>16}: local disk {local:6.1f} s, S3 on loopback {s3:6.1f} s, "
            f"ratio S3 / local {s3 / local:.2f}x (+{s3 - local:.1f} s)"
        )


if __name__ == "__main__":
    main()
