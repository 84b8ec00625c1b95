"""Pipeline overhead: normalise + langid + exact dedup through the Ray pipeline versus one plain
Python process doing the same work with the same fastText model, on the same rows, in one run.

    python bench/pipeline_overhead.py --rows 1000000 [--repeats 3] [--in-process-rows N]

Rows are real SIB-200 sentences (205 languages, ../shared/data) paired as query -> next sentence;
to reach --rows, pairs repeat with a numbered suffix, and 5% are exact copies (dedup has work).
Prints rows/s of both, their ratio, the pipeline's fixed start-up cost (a 10-row run), and medians.
`--in-process-rows` sets the manifest's `ray.in_process_rows` (0: every step on Ray; default: the
manifest's default), to measure either way of running a step.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import statistics
import sys
import tarfile
import tempfile
import time
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langid.tagger import DEFAULT_FALLBACK, LanguageTagger  # noqa: E402
from pipeline.api import load_manifest, run  # noqa: E402

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SPACE = re.compile(r"[^\S\n]+")


def make_rows(data: Path, n: int) -> pa.Table:
    sentences: list[str] = []
    with tarfile.open(data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        for member in tar.getmembers():
            if member.name.endswith("/train.tsv"):
                f = io.TextIOWrapper(tar.extractfile(member), "utf-8")
                sentences += [r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    queries, positives = [], []
    for i in range(n):
        j = i % (len(sentences) - 1)
        if i % 20 == 19:  # an exact copy of an earlier pair
            queries.append(queries[i - 7])
            positives.append(positives[i - 7])
            continue
        lap = i // (len(sentences) - 1)
        suffix = f" ({lap})" if lap else ""
        queries.append(sentences[j] + suffix)
        positives.append(sentences[j + 1])
    return pa.table({"q": queries, "p": positives})


def plain_python(path: Path) -> tuple[float, int]:
    """What a user would write without a pipeline: one process, same model, same rules."""
    start = time.perf_counter()
    table = pq.read_table(path)
    tagger = LanguageTagger(fallback=DEFAULT_FALLBACK)  # the stage's defaults

    def norm(t: str) -> str:
        t = _SPACE.sub(" ", _CONTROL.sub("", unicodedata.normalize("NFC", t)))
        return t.strip()

    queries = [norm(t) for t in table["q"].to_pylist()]
    positives = [norm(t) for t in table["p"].to_pylist()]
    kept, seen = 0, set()
    for a in range(0, len(queries), 8192):
        q, p = queries[a : a + 8192], positives[a : a + 8192]
        tagger.predict(q + p)
        for qq, pp in zip(q, p):
            key = (qq.casefold(), pp.casefold())
            if qq and pp and key not in seen:
                seen.add(key)
                kept += 1
    return time.perf_counter() - start, kept


def pipeline_run(folder: Path, data_path: Path, in_process_rows: int | None) -> tuple[float, float, int]:
    """(wall seconds of the whole run, seconds of the three stages, rows kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "bench.yaml"
    manifest_path.write_text(
        f"output: run\nsources:\n  - name: bench\n    task: retrieval\n    path: {data_path}\n"
        "    columns: {query: q, positive: p}\n    licence: CC-BY-SA-4.0\n"
        "stages:\n  - stage: normalize\n  - stage: langid\n  - stage: exact_dedup\n    key: [query, positive]\n"
        "shards:\n  rows_per_shard: 250000\n"
        + (f"ray:\n  in_process_rows: {in_process_rows}\n" if in_process_rows is not None else "")
    )
    start = time.perf_counter()
    result = run(load_manifest(manifest_path), quiet=True, log=lambda m: None)
    wall = time.perf_counter() - start
    stage_seconds = sum(s.seconds or 0.0 for s in result.steps[1:])
    return wall, stage_seconds, sum(s["rows"] for s in result.shards)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--in-process-rows", type=int, help="ray.in_process_rows of the manifest (0: every step on Ray)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_path = tmp_path / "rows.parquet"
        pq.write_table(make_rows(args.data, args.rows), data_path, row_group_size=50_000)
        tiny = tmp_path / "tiny.parquet"
        pq.write_table(make_rows(args.data, 10), tiny)

        startup = []
        plain, walls, stages = [], [], []
        for r in range(args.repeats):
            t_plain, kept_plain = plain_python(data_path)
            wall, stage_s, kept_pipe = pipeline_run(tmp_path / f"p{r}", data_path, args.in_process_rows)
            t_tiny, _, _ = pipeline_run(tmp_path / f"t{r}", tiny, args.in_process_rows)
            assert kept_plain == kept_pipe, (kept_plain, kept_pipe)
            plain.append(t_plain)
            walls.append(wall)
            stages.append(stage_s)
            startup.append(t_tiny)
            print(
                f"repeat {r}: plain {t_plain:.1f}s, pipeline stages {stage_s:.1f}s (whole run {wall:.1f}s), "
                f"10-row run {t_tiny:.1f}s, rows kept {kept_pipe:,}",
                flush=True,
            )

    n = args.rows
    mp, ms, mw, mt = (statistics.median(x) for x in (plain, stages, walls, startup))
    print(f"\n{n:,} rows, median of {args.repeats}:")
    print(f"  plain Python process (normalise + langid + dedup): {n / mp:,.0f} rows/s ({mp:.1f} s)")
    print(f"  pipeline, the same three stages:                   {n / ms:,.0f} rows/s ({ms:.1f} s)")
    print(f"  ratio pipeline / plain (stages):                   {mp / ms:.2f}x")
    print(
        f"  pipeline whole run (ingest, stages, ledger, shards): {n / mw:,.0f} rows/s ({mw:.1f} s); "
        f"ratio {mp / mw:.2f}x"
    )
    print(
        f"  fixed cost of a run (a 10-row run, everything included; Ray start and stop when it runs on Ray): {mt:.1f} s"
    )


if __name__ == "__main__":
    main()
