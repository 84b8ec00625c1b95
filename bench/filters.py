"""The `filter` stage's default filters on clean and on broken rows, and its speed against datatrove.

1. Clean rows: SIB-200 dev (FLORES), every language: bitext (the English sentence -> the same sentence
   in the language) and monolingual retrieval (a sentence -> the next three, as a passage), language
   labels from the data. Printed: the languages where a filter drops more than `--max-rate` (1%) of
   the rows, and each filter's worst language. A default filter must stay under 1% everywhere.
2. Broken rows of five kinds, injected into copies of clean ones: a URL for a text, web boilerplate
   for a passage, bitext sides three or more times off in length, the query copied into the positive,
   and a positive in another script than its language. Printed: the share of each kind removed.
3. Speed: the stage (default filters: the pair filters and datatrove's C4QualityFilter on positives)
   against datatrove's own `LocalPipelineExecutor` running that C4QualityFilter on the same positives
   (Parquet in, nothing written out), same rows, 2 workers each; medians of `--repeats`.

    python bench/filters.py [--repeats 3] [--rows 40000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.record import WORK_SCHEMA  # noqa: E402
from langid.corpora import sib200  # noqa: E402
from langid.labels import canonical, script_of  # noqa: E402
from pipeline.engine.stage import RunContext  # noqa: E402
from pipeline.stages.filter import FilterConfig, QualityFilter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOILERPLATE = [
    "This website uses cookies to ensure you get the best experience on our website. Read our privacy policy.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "By continuing to browse you agree to our terms of use and the use of cookies.",
    '{"status": "ok", "items": [], "page": 1}',
    "Please enable JavaScript in your browser to view this page.\nCookie policy | Privacy policy | Terms of use",
]
URLS = ["https://www.example.com/news/2024/03/article-12345.html", "http://t.co/AbC123", "www.wikipedia.org/wiki/Main_Page"]


def clean_rows(data: Path) -> list[dict]:
    dev = sib200(data / "sib200-train-dev.tar.xz", "dev")
    by_language: dict[str, list[str]] = {}
    for text, label in zip(dev.texts, dev.labels):
        by_language.setdefault(canonical(label), []).append(text)
    english = by_language["eng_Latn"]
    rows = []
    for lang, texts in sorted(by_language.items()):
        for i, text in enumerate(texts):
            if lang != "eng_Latn":
                rows.append({"task": "bitext", "query": english[i], "positive": text, "query_lang": "eng_Latn", "positive_lang": lang})
            passage = " ".join(texts[(i + k) % len(texts)] for k in (1, 2, 3))
            rows.append({"task": "retrieval", "query": text, "positive": passage, "query_lang": lang, "positive_lang": lang})
    return rows


def broken_rows(clean: list[dict], per_kind: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    bitext = [r for r in clean if r["task"] == "bitext"]
    retrieval = [r for r in clean if r["task"] == "retrieval"]
    by_script: dict[str, list[dict]] = {}
    for r in bitext:
        by_script.setdefault(script_of(r["positive_lang"]), []).append(r)
    out = []
    for _ in range(per_kind):
        r = dict(rng.choice(retrieval))
        out.append({**r, "kind": "url", **({"query": rng.choice(URLS)} if rng.random() < 0.5 else {"positive": rng.choice(URLS)})})
        r = dict(rng.choice(retrieval))
        out.append({**r, "kind": "boilerplate", "positive": rng.choice(BOILERPLATE)})
        r = dict(rng.choice(bitext))
        words = r["positive"].split()
        short = " ".join(words[: max(1, len(words) // 4)]) if len(words) >= 4 else r["positive"][: max(1, len(r["positive"]) // 4)]
        long = " ".join(rng.choice(bitext)["positive"] for _ in range(3)) + " " + r["positive"]
        out.append({**r, "kind": "length_mismatch", "positive": short if rng.random() < 0.5 else long})
        r = dict(rng.choice(retrieval))
        out.append({**r, "kind": "query_copied", "positive": r["query"]})
        r = dict(rng.choice(bitext))
        other = rng.choice([s for s in by_script if s != script_of(r["positive_lang"])])
        out.append({**r, "kind": "wrong_script", "positive": rng.choice(by_script[other])["positive"]})
    return out


def table(rows: list[dict]) -> pa.Table:
    records = [{"id": f"{i:08x}", "source": "bench", "licence": "x", "origin": f"bench:{i}",
                **{k: v for k, v in r.items() if k != "kind"}} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(records, schema=WORK_SCHEMA)


def filtered(rows: list[dict]) -> pl.DataFrame:
    stage = QualityFilter(FilterConfig(stage="filter"), RunContext(Path("."), ("bench",)))
    stage.setup()
    batch = table(rows)
    out = pa.concat_tables([stage(batch.slice(s, 8192)) for s in range(0, batch.num_rows, 8192)])
    return pl.from_arrow(out.select(["query_lang", "positive_lang", "task", "_drop"])).with_columns(
        pl.Series("kind", [r.get("kind") for r in rows]), pl.col("_drop").str.split(":").list.get(1, null_on_oob=True).alias("filter"))


def our_speed(rows: list[dict], folder: Path) -> float:
    """The stage over the rows in 2 worker processes (as the pipeline runs a step), wall seconds."""
    from concurrent.futures import ProcessPoolExecutor

    half = len(rows) // 2
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(filtered, [rows[:half], rows[half:]]))
    return time.perf_counter() - started


def datatrove_speed(rows: list[dict], folder: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import C4QualityFilter
    from datatrove.pipeline.readers import ParquetReader

    data = folder / "docs"
    data.mkdir(exist_ok=True)
    for k in range(2):
        part = rows[k::2]
        pq.write_table(pa.table({"text": [r["positive"] for r in part], "id": [str(i) for i in range(len(part))]}), data / f"{k}.parquet")
    args = FilterConfig(stage="filter").filters[-1].args
    executor = LocalPipelineExecutor(pipeline=[ParquetReader(str(data)), C4QualityFilter(**args)], tasks=2, workers=2,
                                     logging_dir=str(folder / f"logs-{time.perf_counter_ns()}"))
    started = time.perf_counter()
    executor.run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--max-rate", type=float, default=0.01)
    parser.add_argument("--per-kind", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=40_000, help="rows timed (clean rows, repeated)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    clean = clean_rows(args.data)
    out = filtered(clean)
    by_lang = out.group_by("positive_lang").agg(pl.len().alias("rows"), pl.col("_drop").is_not_null().mean().alias("rate"))
    worst = by_lang.sort("rate", descending=True)
    print(f"clean SIB-200 dev rows: {out.height:,} in {by_lang.height} languages; dropped {out['_drop'].is_not_null().mean():.3%}; "
          f"languages over {args.max_rate:.0%}: {worst.filter(pl.col('rate') > args.max_rate).height}")
    per_filter = (out.filter(pl.col("filter").is_not_null()).group_by("filter", "positive_lang").len()
                  .join(by_lang, on="positive_lang").with_columns((pl.col("len") / pl.col("rows")).alias("rate"))
                  .sort("rate", descending=True).group_by("filter", maintain_order=True).first())
    print("each filter's worst language:\n" + str(per_filter.select("filter", "positive_lang", "len", "rows", "rate")))
    print(str(worst.head(5)))

    broken = broken_rows(clean, args.per_kind)
    caught = filtered(broken).group_by("kind").agg(pl.col("_drop").is_not_null().mean().alias("removed"), pl.len().alias("rows")).sort("kind")
    print("broken rows removed, by kind:\n" + str(caught))

    timed = (clean * (args.rows // len(clean) + 1))[: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        ours = [our_speed(timed, Path(tmp)) for _ in range(args.repeats)]
        theirs = [datatrove_speed(timed, Path(tmp)) for _ in range(args.repeats)]
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"speed, {len(timed):,} rows, 2 workers, medians of {args.repeats}: the stage (all default filters) {len(timed) / o:,.0f} rows/s, "
          f"datatrove's executor (C4QualityFilter alone) {len(timed) / t:,.0f} rows/s: ratio {t / o:.2f}x")


if __name__ == "__main__":
    main()
