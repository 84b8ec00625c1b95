"""End-to-end near-duplicate removal: our `near_dedup` step (`python -m pipeline run`, its rounds on
the run's worker processes) against datatrove's four MinHash stages (signatures, buckets, cluster,
filter), same input, same parameters, same cores, one run.

Input: documents of four SIB-200 sentences of one language (205 languages, FLORES-200 text), and an
edited copy (typos, an inserted sentence, reordering, boilerplate) of 5% of them, written to Parquet
(id, text, language), `--records` rows. Parameters on both sides: word 5-gram shingles, 112 hashes
as 14 bands x 8 rows, 32-bit hashes. datatrove gets a plain whitespace word tokenizer (its default
for most languages needs spaCy models); both read the same Parquet files (50k rows each), one task per file.

Timed: datatrove's four executors (2 workers each: stage 2 runs one task per band, stage 3 is one
process by design); ours, the `near_dedup` step of `python -m pipeline run` (reading its input and
writing its output included) and the whole run (with ingest and shards). Memory: the run's
process tree is sampled every 0.2 s: the largest single process (resident minus shared pages),
the whole tree, and shared memory (/dev/shm, Ray's object store when a step runs on Ray).

    pip install -e ".[bench]"
    python bench/near_dedup.py [--records 100000,1000000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from pipeline.tools.dedup_calibration import EDITS, edit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIB = ROOT.parent / "shared" / "data" / "sib200-train-dev.tar.xz"
ROWS_PER_FILE = 50_000  # fixed, so per-task memory compares across corpus sizes
PARAMS = {"n_grams": 5, "bands": 14, "rows": 8}


def sentences() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with tarfile.open(SIB, "r:xz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[3] in ("train.tsv", "dev.tsv"):
                f = io.TextIOWrapper(tar.extractfile(member), "utf-8")  # type: ignore[arg-type]
                out.setdefault(parts[2], []).extend(
                    r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                )
    return out


def build_corpus(records: int, folder: Path, seed: int = 0) -> Path:
    """Parquet files of `records` documents (cached)."""
    target = folder / f"corpus-{records}"
    if (target / "_done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rng = random.Random(seed)
    by_lang = sentences()
    langs = sorted(by_lang)
    texts, languages = [], []
    while len(texts) < records:
        lang = langs[len(texts) % len(langs)]
        doc = " ".join(rng.sample(by_lang[lang], 4))
        texts.append(doc)
        languages.append(lang)
        if rng.random() < 0.05 and len(texts) < records:
            texts.append(edit(doc, EDITS[len(texts) % len(EDITS)], rng, rng.choice(by_lang[lang])))
            languages.append(lang)
    order = list(range(records))
    rng.shuffle(order)
    table = pa.table(
        {
            "id": [f"doc-{i:08d}" for i in order],
            "text": [texts[i] for i in order],
            "language": [languages[i] for i in order],
        }
    )
    for k, start in enumerate(range(0, records, ROWS_PER_FILE)):
        pq.write_table(table.slice(start, ROWS_PER_FILE), target / f"part-{k:03d}.parquet")
    (target / "_done").touch()
    return target


class Peak:
    """Peak memory of a process tree, sampled in a thread, per phase of the run (set by the caller
    from the run's log lines): the largest process (and what it is), the tree, the object store."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.phase = "start"
        self.peaks: dict[str, dict] = {}
        self.shm_before = shutil.disk_usage("/dev/shm").used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            private: list[tuple[int, str]] = []
            for p in procs:
                try:
                    m = p.memory_info()
                    private.append((m.rss - m.shared, " ".join(p.cmdline())[:60]))
                except psutil.Error:
                    pass
            if private:
                peak = self.peaks.setdefault(
                    self.phase, {"largest_process_mb": 0.0, "largest": "", "tree_private_mb": 0.0, "shm_mb": 0.0}
                )
                biggest = max(private)
                if biggest[0] / 2**20 > peak["largest_process_mb"]:
                    peak["largest_process_mb"], peak["largest"] = biggest[0] / 2**20, biggest[1]
                peak["tree_private_mb"] = max(peak["tree_private_mb"], sum(m for m, _ in private) / 2**20)
                peak["shm_mb"] = max(peak["shm_mb"], (shutil.disk_usage("/dev/shm").used - self.shm_before) / 2**20)
            time.sleep(0.2)

    def stop(self) -> dict[str, dict]:
        self._stop.set()
        self._thread.join()
        return {k: {m: round(v, 1) if isinstance(v, float) else v for m, v in p.items()} for k, p in self.peaks.items()}


PHASES = {"running 00-ingest": "ingest", "running 01-near_dedup": "near_dedup", "writing shards": "shards"}


def run_measured(cmd: list[str], **kw) -> tuple[float, dict[str, dict], str]:
    """Run `cmd`, its memory sampled per phase (from the pipeline's log lines), its output returned."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    peak = Peak(proc.pid)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        peak.phase = next((name for marker, name in PHASES.items() if marker in line), peak.phase)
    proc.wait()
    seconds = time.perf_counter() - started
    memory = peak.stop()
    out = "".join(lines)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out[-3000:]}")
    return seconds, memory, out


def ours(corpus: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = {
        "output": str(work / "run"),
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
            {
                "stage": "near_dedup",
                "shingles": "words",
                "n_words": PARAMS["n_grams"],
                "num_perm": PARAMS["bands"] * PARAMS["rows"],
                "bands": PARAMS["bands"],
                "rows": PARAMS["rows"],
            }
        ],
        "ray": {"num_cpus": 2},
    }
    (work / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    seconds, memory, _ = run_measured(
        [sys.executable, "-m", "pipeline", "run", str(work / "manifest.yaml"), "--quiet"], cwd=ROOT
    )
    step = json.loads((work / "run" / "stages" / "01-near_dedup" / "_SUCCESS.json").read_text())
    ledger = pq.read_table(work / "run" / "ledger.parquet").to_pylist()
    removed = sum(r["rows"] for r in ledger if r["step"] == "01-near_dedup" and r["kind"] == "dropped")
    return {"seconds": step["seconds"], "run_seconds": seconds, "removed": removed, "memory": memory}


DATATROVE = r"""
import sys, time, json
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
import datatrove.utils.hashes.xxhash as dt_xxhash
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer
import xxhash

# datatrove 0.10 passes str to xxhash, which xxhash >= 3.8 refuses: encode first (what it meant).
dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)
dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)


class Whitespace(WordTokenizer):
    def word_tokenize(self, text): return text.split()
    def sent_tokenize(self, text): return [text]
    def span_tokenize(self, text): return [(0, len(text))]


if __name__ == "__main__":
    corpus, work, files, n_grams, bands, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:7])
    config = MinhashConfig(n_grams=n_grams, num_buckets=bands, hashes_per_bucket=rows,
                           hash_config=HashConfig(precision=32))
    reader = lambda: ParquetReader(corpus, glob_pattern="*.parquet", text_key="text", id_key="id")
    stages = [
        ([reader(), MinhashDedupSignature(output_folder=f"{work}/signatures", config=config,
                                          language=Whitespace())], files),
        ([MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets",
                              config=config)], bands),
        ([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)], 1),
        ([reader(), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
                                       exclusion_writer=ParquetWriter(f"{work}/removed")),
          ParquetWriter(f"{work}/output")], files),
    ]
    seconds = []
    for k, (pipeline, tasks) in enumerate(stages):
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=2, logging_dir=f"{work}/logs/{k}").run()
        seconds.append(time.perf_counter() - started)
    print("SECONDS", json.dumps(seconds))
"""


def datatrove(corpus: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work / "datatrove_minhash.py"
    script.write_text(DATATROVE, encoding="utf-8")
    files = len(list(corpus.glob("*.parquet")))
    args = [str(corpus), str(work), str(files), str(PARAMS["n_grams"]), str(PARAMS["bands"]), str(PARAMS["rows"])]
    seconds, memory, out = run_measured([sys.executable, str(script), *args], cwd=work)
    stages = json.loads(out.split("SECONDS", 1)[1].strip().splitlines()[0])
    removed = pq.read_table(work / "removed").num_rows if (work / "removed").exists() else 0
    return {"seconds": sum(stages), "stages": stages, "run_seconds": seconds, "removed": removed, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="1000000", help="comma-separated corpus sizes")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default="/tmp/bench-near-dedup")
    parser.add_argument("--skip-datatrove", action="store_true", help="ours only (e.g. for memory growth)")
    args = parser.parse_args()
    work = Path(args.work)
    for records in (int(r) for r in args.records.split(",")):
        corpus = build_corpus(records, work)
        mb = sum(f.stat().st_size for f in corpus.glob("*.parquet")) / 1e6
        print(f"\n{records:,} documents ({mb:.0f} MB of Parquet), {os.cpu_count()} cores")
        results: dict[str, list[dict]] = {"ours": [], "datatrove": []}
        for rep in range(args.repeats):
            results["ours"].append(ours(corpus, work / "ours"))
            print(f"  ours      #{rep + 1}: {results['ours'][-1]}", flush=True)
            if not args.skip_datatrove:
                results["datatrove"].append(datatrove(corpus, work / "datatrove"))
                print(f"  datatrove #{rep + 1}: {results['datatrove'][-1]}", flush=True)
        median = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items() if v}
        print(
            f"  median near-dup seconds: ours {median['ours']:.1f} "
            f"(whole run {statistics.median(r['run_seconds'] for r in results['ours']):.1f})",
            end="",
        )
        if "datatrove" in median:
            print(
                f", datatrove {median['datatrove']:.1f}: ratio {median['datatrove'] / median['ours']:.2f}x "
                f"({median['datatrove'] / statistics.median(r['run_seconds'] for r in results['ours']):.2f}x "
                "against our whole run)"
            )
        else:
            print()


if __name__ == "__main__":
    main()
