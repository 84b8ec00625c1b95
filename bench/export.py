"""Exports of a large run: time, rows per second and peak memory per layout, against the obvious
baseline (polars loading every shard and the passage table, joining the negatives' texts in memory,
writing one flat file per source: what the export did before it streamed).

Input: a finished run folder made here (`--rows` rows in 4 sources, 24 negatives each by id, every
positive a passage of the table): real SIB-200 sentences in 205 languages, a query of one sentence
and a positive of three, so the texts and the passage table have the sizes of a stage-2 run.
Memory, sampled every 0.1 s: the export process tree's peak resident set (file pages it mapped
included), its peak anonymous memory (`RssAnon + RssShmem`: what it holds that the kernel cannot
drop and read again from a file), and the machine's memory in use (MemTotal - MemAvailable, which
counts no page cache) above what it was before.

    pip install -e ".[dev,bench]"
    python bench/export.py [--rows 1000000] [--layouts flat,sentence-transformers,flagembedding,ml-embed]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.passages import CORPUS_SCHEMA, passage_id  # noqa: E402
from core.record import SCHEMA  # noqa: E402
from pipeline.engine.checkpoint import write_marker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = 4
FILE_ROWS = 100_000

BASELINE = r"""
import sys, polars as pl
run, out = sys.argv[1], sys.argv[2]
shards = pl.read_parquet(run + "/shards/**/*.parquet")
corpus = pl.read_parquet(run + "/corpus/*.parquet").select("doc_id", "text")
negatives = (shards.select("id", pl.col("negative_ids")).explode("negative_ids")
             .with_columns(pl.int_range(pl.len()).over("id").alias("k"))
             .join(corpus, left_on="negative_ids", right_on="doc_id").pivot("k", index="id", values="text"))
wide = shards.select("id", "source", "query", pl.col("positive").alias("passage")).join(negatives, on="id")
wide = wide.rename({str(k): f"negative_{k + 1}" for k in range(24)})
for (source,), part in wide.partition_by("source", as_dict=True).items():
    part.drop("source").write_parquet(f"{out}/{source}.parquet")
"""


def sentences(data: Path) -> list[str]:
    with tarfile.open(data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        texts = []
        for member in tar.getmembers():
            if member.name.endswith(".tsv"):
                lines = tar.extractfile(member).read().decode("utf-8").splitlines()[1:]  # type: ignore[union-attr]
                texts += [line.split("\t")[2] for line in lines if line.count("\t") >= 2]
    return texts


def build_run(folder: Path, rows: int, data: Path, seed: int = 0) -> None:
    """A finished run: shards of `rows` rows (4 sources), a passage table of their positives."""
    rng = random.Random(seed)
    pool = sentences(data)
    positives = [" ".join(rng.choices(pool, k=3)) for _ in range(rows)]
    ids = [passage_id(t) for t in positives]
    order = sorted(range(rows), key=ids.__getitem__)
    (folder / "corpus").mkdir(parents=True)
    corpus = []
    for i, start in enumerate(range(0, rows, FILE_ROWS)):
        chunk = order[start : start + FILE_ROWS]
        name = f"part-{i:05d}-bench.parquet"
        table = pa.table(
            {
                "doc_id": [ids[j] for j in chunk],
                "text": [positives[j] for j in chunk],
                "language": ["und"] * len(chunk),
                "source": ["src"] * len(chunk),
            },
            schema=CORPUS_SCHEMA,
        )
        pq.write_table(table, folder / "corpus" / name)
        corpus.append({"path": name, "rows": len(chunk)})
    shards = []
    for start in range(0, rows, FILE_ROWS):
        source = f"src{start // FILE_ROWS % SOURCES}"
        count = min(FILE_ROWS, rows - start)
        batch = {
            "id": [f"{start + r:032x}" for r in range(count)],
            "source": [source] * count,
            "task": ["retrieval"] * count,
            "instruction": ["Given a question, retrieve passages that answer the question"] * count,
            "query": [rng.choice(pool) for _ in range(count)],
            "positive": positives[start : start + count],
            "positive_id": ids[start : start + count],
            "negative_ids": [[ids[rng.randrange(rows)] for _ in range(24)] for _ in range(count)],
            "licence": ["CC-BY-SA-4.0"] * count,
            "origin": [f"bench:{start + r}" for r in range(count)],
            "query_lang": ["und"] * count,
        }
        path = f"{source}/part-{start // FILE_ROWS:05d}-bench.parquet"
        (folder / "shards" / source).mkdir(parents=True, exist_ok=True)
        batch |= {f.name: pa.nulls(count, f.type) for f in SCHEMA if f.name not in batch}
        pq.write_table(pa.Table.from_pydict(batch, schema=SCHEMA), folder / "shards" / path)
        shards.append({"path": path, "rows": count, "source": source})
    write_marker(folder / "shards", {"fingerprint": "bench", "shards": shards, "corpus": corpus})


def used() -> int:
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) << 10


def anonymous(pid: int) -> int:
    """A process's resident memory that is not a file's pages (`RssAnon + RssShmem`), in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return sum(int(fields.get(k, "0").split()[0]) for k in ("RssAnon", "RssShmem")) << 10  # none: a zombie


def measured(command: list[str]) -> dict[str, float]:
    """Wall time, the process tree's peak resident and anonymous memory, and the machine's peak
    memory in use above its level at the start."""
    before, started = used(), time.perf_counter()
    process = psutil.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_rss = peak_anon = peak_used = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in tree))
            peak_anon = max(peak_anon, sum(anonymous(p.pid) for p in tree))
        except (psutil.Error, OSError):
            pass
        peak_used = max(peak_used, used() - before)
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_gb": peak_rss / 2**30,
        "peak_anonymous_gb": peak_anon / 2**30,
        "peak_used_gb": peak_used / 2**30,
    }


def tokenizer(folder: Path) -> Path:
    """A small tokenizer with an EOS token, trained here (nothing is downloaded)."""
    from transformers import AutoTokenizer

    from train.small_model import build_small_model

    texts = sentences(Path(args.data))[:20_000]
    model = build_small_model(texts, folder / "model", vocab_size=8000, hidden=32, layers=1)
    tok = AutoTokenizer.from_pretrained(str(model))
    tok.eos_token = "[SEP]"
    tok.save_pretrained(folder / "tokenizer")
    return folder / "tokenizer"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        print(f"building a run of {args.rows:,} rows ...", flush=True)
        build_run(work / "run", args.rows, Path(args.data))
        results = {}
        (work / "baseline").mkdir()
        results["baseline (polars in memory, flat)"] = measured(
            [sys.executable, "-c", BASELINE, str(work / "run"), str(work / "baseline")]
        )
        for layout in args.layouts.split(","):
            extra = ["--tokenizer", str(tokenizer(work))] if layout == "ml-embed" else []
            results[layout] = measured(
                [
                    sys.executable,
                    "-m",
                    "pipeline",
                    "export",
                    str(work / "run"),
                    str(work / layout),
                    "--layout",
                    layout,
                    "--quiet",
                    *extra,
                ]
            )
            shutil.rmtree(work / layout)
        base = results["baseline (polars in memory, flat)"]["seconds"]
        print(
            f"\n{args.rows:,} rows, 24 negatives each; rows/s, seconds, "
            "peak memory (GB): process tree RSS / its anonymous memory / machine in use"
        )
        for name, r in results.items():
            print(
                f"{name:36s} {args.rows / r['seconds']:>9,.0f} rows/s {r['seconds']:7.1f} s  "
                f"x{base / r['seconds']:.2f} of baseline"
                f"  {r['peak_rss_gb']:.2f} / {r['peak_anonymous_gb']:.2f} / {r['peak_used_gb']:.2f} GB"
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--layouts", default="flat,sentence-transformers,flagembedding,ml-embed")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    main()
