"""Statistics of a large run: how long they take next to the run, and the memory they hold, against
the obvious baseline (polars reading every shard into one DataFrame, then grouping).

Input: `--records` documents of SIB-200 sentences in 205 languages with 5% edited copies (the
near-dup bench's corpus), run through normalize -> langid -> exact_dedup -> near_dedup. Timed: the
whole run, its statistics step (streaming pass over the shards: sums and histograms per batch,
`pipeline/reporting/stats.py`) and the dashboard; the baseline computes records, characters and script-aware
words per language from the shards loaded whole (fewer figures than ours). Memory: the largest
process of the run while it computes statistics, and the baseline's peak, both as resident minus
shared pages, sampled every 0.2 s.

    pip install -e ".[bench]"
    python bench/stats.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.near_dedup import PHASES, build_corpus, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES.update({"running 01-normalize": "normalize", "running 02-langid": "langid", "statistics and dashboard": "stats"})

BASELINE = r"""
import sys, time, polars as pl
from pipeline.reporting.stats import WORD_PATTERN
started = time.perf_counter()
df = pl.read_parquet(sys.argv[1] + "/shards/**/*.parquet")
out = df.group_by("query_lang").agg(pl.len(), pl.col("query").str.len_chars().sum().alias("chars"),
                                     pl.col("query").str.count_matches(WORD_PATTERN).sum().alias("words"),
                                     pl.col("query_lang_conf").quantile(0.5))
print("SECONDS", time.perf_counter() - started, out.height)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="baseline and statistics repeats (the run itself once)")
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    work = Path(args.work)
    corpus = build_corpus(args.records, work)
    folder = work / f"stats-{args.records}"
    manifest = {
        "output": str(folder / "run"),
        "sources": [
            {
                "name": "sib",
                "task": "clustering",
                "format": "parquet",
                "path": str(corpus / "*.parquet"),
                "columns": {"query": "text", "label": "language"},
                "licence": "CC-BY-SA-4.0",
            }
        ],
        "stages": [
            {"stage": "normalize"},
            {"stage": "langid"},
            {"stage": "exact_dedup", "key": ["query"]},
            {"stage": "near_dedup", "fields": ["query"]},
        ],
        "ray": {"num_cpus": 2},
    }
    shutil.rmtree(folder, ignore_errors=True)  # a fresh run: its time is what the statistics are compared with
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    run_seconds, memory, _ = run_measured(
        [sys.executable, "-m", "pipeline", "run", str(folder / "manifest.yaml"), "--quiet"], cwd=ROOT
    )
    run = folder / "run"
    ours, dash, base, base_mem = [], [], [], []
    for _ in range(args.repeats):
        seconds, stats_mem, _ = run_measured(
            [sys.executable, "-m", "pipeline", "stats", str(run), "--recompute", "--top", "1"], cwd=ROOT
        )
        ours.append((seconds, stats_mem))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pipeline", "dashboard", str(run)], cwd=ROOT, check=True, capture_output=True
        )
        dash.append(time.perf_counter() - started)
        seconds, peak, _ = run_measured([sys.executable, "-c", BASELINE, str(run)], cwd=ROOT)
        base.append(seconds)
        base_mem.append(peak)
    meta = json.loads((run / "stats" / "meta.json").read_text())
    ours_s = statistics.median(s for s, _ in ours)
    result = {
        "records": args.records,
        "shard_rows": meta["rows"],
        "run_seconds": round(run_seconds, 1),
        "stats_seconds_in_run": meta["seconds"],
        "stats_seconds_cli": [round(s, 1) for s, _ in ours],
        "dashboard_seconds": [round(s, 1) for s in dash],
        "baseline_seconds": [round(s, 1) for s in base],
        "stats_share_of_run": round(meta["seconds"] / run_seconds, 3),
        "ratio_baseline_over_ours": round(statistics.median(base) / ours_s, 2),
        "memory_stats_in_run": memory.get("stats"),
        "memory_stats_cli_largest_mb": [max(p["largest_process_mb"] for p in m.values()) for _, m in ours],
        "memory_baseline_largest_mb": [max(p["largest_process_mb"] for p in m.values()) for m in base_mem],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
