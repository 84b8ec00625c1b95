"""The stage-1 step list at growing sizes: a cost curve.

For each size, `bench/generate_corpus.py` writes a bitext input (SIB-200 sentences, 204 languages
Zipf-weighted, 8% exact and 4% near copies with their ground truth), and `python -m pipeline run`
runs normalize, langid, exact_dedup and near_dedup on it (both fields), with every core. Measured,
per step and for the whole run: wall time, rows per second per core, peak memory of all processes
in two measures above their level before the run: memory in use (the machine's MemTotal -
MemAvailable: most page cache is not counted, Ray's shared memory once) and anonymous memory (the
machine's AnonPages + Shmem: what processes hold, Ray's object store included; memory in use also
counts kernel memory outside any process, such as what near_dedup's many scratch files cost), CPU
busy (all cores), the run's scratch (`work/`) and Ray's spill folder at their largest, and the
near-duplicate precision and recall against the ground truth; then the growth exponent of time and
memory between consecutive sizes (1 = linear).

    python bench/scale.py [--sizes 300000,1000000,3000000,10000000] [--ray] [--work DIR] [--json out.json]

`--ray` runs every step on the embedded Ray (`ray.in_process_rows: 0`) instead of the in-process
worker pool; `--cluster` on a two-node Ray cluster on loopback (`ray start`, a head and a worker node
of one CPU each, as the tests' cluster), every step there. Generated inputs are kept in `--work`
(reused by size and seed); runs are removed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate_corpus import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROW_LOCAL = "01-normalize+02-langid"


def meminfo() -> tuple[int, int]:
    """(memory in use, anonymous and shared memory) of the machine, in bytes."""
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) << 10, (info["AnonPages"] + info["Shmem"]) << 10


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Sampler(threading.Thread):
    """Samples memory in use, CPU busy, the run's scratch and Ray's spill folder while a run goes on."""

    def __init__(self, run: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.run_dir, self.interval = run, interval
        self.samples: list[dict[str, float]] = []
        self.baseline = meminfo()
        self.stop = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent(percpu=False)
        last_disk, scratch, spill = 0.0, 0, 0
        while not self.stop.wait(self.interval):
            now = time.monotonic()
            if now - last_disk > 3:  # folder sizes: every few seconds
                scratch = folder_bytes(self.run_dir / "work")
                spill = (
                    sum(folder_bytes(p) for p in Path("/tmp/ray").glob("session_*/ray_spilled_objects"))
                    if Path("/tmp/ray").exists()
                    else 0
                )
                last_disk = now
            used, anonymous = meminfo()
            self.samples.append(
                {
                    "t": now,
                    "used": used - self.baseline[0],
                    "anonymous": anonymous - self.baseline[1],
                    "cpu": psutil.cpu_percent(),
                    "scratch": scratch,
                    "spill": spill,
                }
            )


def quiet_down(timeout: float = 120) -> None:
    """Wait for an earlier run's embedded Ray to be gone: the memory baseline is taken next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        p.info["name"] in ("raylet", "gcs_server") for p in psutil.process_iter(["name"])
    ):
        time.sleep(1)


def run_size(
    rows: int, work: Path, ray: bool, seed: int, address: str | None = None, without: tuple[str, ...] = ()
) -> dict:
    data = work / f"input-{rows}-{seed}"
    if not (data / "truth.parquet").exists():
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {rows:,} rows ...", flush=True)
        generate(data, rows, max(2, -(-rows // 250_000)), 0.08, 0.04, 1.0, seed, ROOT.parent / "shared" / "data")
    manifest = yaml.safe_load((data / "manifest.yaml").read_text())
    run = work / f"run-{rows}"
    shutil.rmtree(run, ignore_errors=True)
    manifest["output"] = str(run)
    manifest["stats"] = {"enabled": False}
    manifest["stages"] = [s for s in manifest["stages"] if s["stage"] not in without]
    if ray:
        manifest["ray"] = {"in_process_rows": 0}
    path = data / "scale.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    if address is None:  # (a cluster's own processes stay: they are in the baseline)
        quiet_down()
    sampler = Sampler(run)
    sampler.start()
    started = time.monotonic()
    steps: list[tuple[str, float]] = []
    cluster = ["--ray-address", address] if address else []
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--quiet", *cluster],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    for line in process.stdout:  # type: ignore[union-attr]
        output.append(line)
        found = re.search(r"> (running (\S+)|writing shards)", line)
        if found:
            steps.append((found.group(2) or "shards", time.monotonic()))
    process.wait()
    total = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"run of {rows:,} rows failed:\n{''.join(output[-40:])}")
    bounds = steps + [("end", started + total)]
    # a step's input: the checkpoint before it (the source files for ingest, the last one for shards)
    sizes = {p.name: folder_bytes(p) for p in (run / "stages").iterdir()}
    inputs = [folder_bytes(data) - (data / "truth.parquet").stat().st_size] + [sizes.get(n, 0) for n, _ in steps[:-1]]
    cores = len(os.sched_getaffinity(0))
    ledger = pl.read_parquet(run / "ledger.parquet")
    result: dict = {"rows": rows, "seconds": total, "steps": {}}
    for (name, begin), (_, end), input_bytes in zip(bounds, bounds[1:], inputs):
        window = [s for s in sampler.samples if begin <= s["t"] <= end] or [
            {"used": 0, "anonymous": 0, "cpu": 0, "scratch": 0, "spill": 0}
        ]
        rows_in = int(ledger.filter(step=name.split("+")[0], kind="in")["rows"].sum()) if name != "shards" else 0
        result["steps"][name] = {
            "seconds": end - begin,
            "rows_in": rows_in,
            "rows_per_s_per_core": rows_in / (end - begin) / cores if rows_in else None,
            "peak_memory_gb": max(s["used"] for s in window) / 2**30,
            "peak_anonymous_gb": max(s["anonymous"] for s in window) / 2**30,
            "cpu_busy": sum(s["cpu"] for s in window) / len(window) / 100,
            "scratch_gb": max(s["scratch"] for s in window) / 2**30,
            "spill_gb": max(s["spill"] for s in window) / 2**30,
            "input_gb": input_bytes / 2**30,
        }
    result["peak_memory_gb"] = max((s["used"] for s in sampler.samples), default=0) / 2**30
    result["peak_anonymous_gb"] = max((s["anonymous"] for s in sampler.samples), default=0) / 2**30
    result["scratch_gb"] = max((s["scratch"] for s in sampler.samples), default=0) / 2**30
    result["spill_gb"] = max((s["spill"] for s in sampler.samples), default=0) / 2**30
    near = [n for n in result["steps"] if n.endswith("near_dedup")][0]
    result["near_dedup_input_gb"] = (
        folder_bytes(run / "stages" / [p.name for p in (run / "stages").iterdir() if p.name.endswith("exact_dedup")][0])
        / 2**30
    )
    result["near_dedup_core_hours_per_million"] = result["steps"][near]["seconds"] * cores / 3600 / (rows / 1e6)
    result["near_duplicates"] = near_duplicate_scores(run, data)
    shutil.rmtree(run, ignore_errors=True)
    return result


def near_duplicate_scores(run: Path, data: Path) -> dict[str, float]:
    """Precision and recall of near_dedup's drops against the generator's groups: among the rows
    that reached near_dedup, a group of m rows should lose m - 1 of them; a drop is right when the
    row it names as kept is of its group."""
    truth = pl.read_parquet(data / "truth.parquet").select(pl.format("{}:{}", "file", "line").alias("where"), "group")
    folder = next(p for p in (run / "stages").iterdir() if p.name.endswith("near_dedup"))
    marker = json.loads((folder / "_SUCCESS.json").read_text())
    rows = (
        pl.read_parquet(
            [folder / marker["attempt"] / f for f in marker["files"] if not f.startswith("_")],
            columns=["id", "origin", "_drop", "_detail"],
        )
        .with_columns(pl.col("origin").str.extract(r"([^/]+:\d+)$").alias("where"))
        .join(truth, on="where")
    )
    ids = rows.select("id", pl.col("group").alias("kept_group")).unique("id")
    dropped = (
        rows.filter(pl.col("_drop") == "near_duplicate")
        .with_columns(pl.col("_detail").str.extract(r"near duplicate of (\w+)").alias("kept"))
        .join(ids, left_on="kept", right_on="id", how="left")
    )
    right = int((dropped["group"] == dropped["kept_group"]).sum())
    should = int(rows.group_by("group").len().select((pl.col("len") - 1).sum()).item())
    return {
        "dropped": dropped.height,
        "right": right,
        "should_drop": should,
        "precision": right / dropped.height if dropped.height else 1.0,
        "recall": right / should if should else 1.0,
    }


def growth(results: list[dict]) -> list[dict]:
    out = []
    for a, b in zip(results, results[1:]):
        scale = math.log(b["rows"] / a["rows"])
        out.append(
            {
                "from": a["rows"],
                "to": b["rows"],
                "time_ratio": b["seconds"] / a["seconds"],
                "time_exponent": math.log(b["seconds"] / a["seconds"]) / scale,
                "memory_ratio": b["peak_memory_gb"] / a["peak_memory_gb"],
                "memory_exponent": math.log(b["peak_memory_gb"] / a["peak_memory_gb"]) / scale,
                "anonymous_ratio": b["peak_anonymous_gb"] / a["peak_anonymous_gb"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="300000,1000000,3000000,10000000")
    parser.add_argument("--ray", action="store_true", help="every step on the embedded Ray")
    parser.add_argument("--cluster", action="store_true", help="every step on a two-node Ray cluster on loopback")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--without", default="", help="stages left out, e.g. langid (the others' figures, sooner)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    address = start_loopback_cluster() if args.cluster else None
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            without = tuple(w for w in args.without.split(",") if w)
            results.append(run_size(size, args.work, args.ray, args.seed, address, without))
            report(results, args.json)
    finally:
        if address:
            subprocess.run(
                [str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=120
            )
    for g in growth(results):
        print(
            f"{g['from']:,} -> {g['to']:,} rows: time x{g['time_ratio']:.2f} (exponent {g['time_exponent']:.2f}), "
            f"memory in use x{g['memory_ratio']:.2f} (exponent {g['memory_exponent']:.2f}), "
            f"anonymous memory x{g['anonymous_ratio']:.2f}"
        )


def start_loopback_cluster() -> str:
    """A head and a worker node on 127.0.0.1, one CPU each; their address."""
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    address = "127.0.0.1:6391"
    start = [ray, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run(
        [*start, "--head", "--port=6391", "--include-dashboard=false"],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    subprocess.run([*start, f"--address={address}"], check=True, env=env, capture_output=True, timeout=120)
    return address


def report(results: list[dict], json_path: str | None) -> None:
    """Print the last size's figures; write all of them so far to `json_path`."""
    result = results[-1]
    print(
        f"\n{result['rows']:,} rows: {result['seconds']:.0f} s, peak memory in use {result['peak_memory_gb']:.2f} GB "
        f"(anonymous {result['peak_anonymous_gb']:.2f} GB), scratch "
        f"{result['scratch_gb']:.2f} GB (near_dedup input {result['near_dedup_input_gb']:.2f} GB), "
        f"spill {result['spill_gb']:.2f} GB, "
        f"near_dedup {result['near_dedup_core_hours_per_million']:.3f} core-hours per million rows, "
        f"near duplicates {result['near_duplicates']}"
    )
    for name, step in result["steps"].items():
        rate = f"{step['rows_per_s_per_core']:,.0f} rows/s/core" if step["rows_per_s_per_core"] else ""
        print(
            f"  {name:28s} {step['seconds']:8.1f} s {rate:>20s}  memory {step['peak_memory_gb']:.2f} GB "
            f"(anonymous {step['peak_anonymous_gb']:.2f})  "
            f"CPU busy {step['cpu_busy']:.0%}"
            f"  scratch {step['scratch_gb']:.2f} GB (input {step['input_gb']:.2f} GB)"
        )
    if json_path:
        Path(json_path).write_text(json.dumps({"results": results, "growth": growth(results)}, indent=2))


if __name__ == "__main__":
    main()
