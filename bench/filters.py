"""The `filter` stage's default filters on clean and on broken rows, and its speed against datatrove.

1. Clean rows, tagged by the pipeline's own `langid` stage (as a run tags them): SIB-200 dev
   (FLORES), every language, as bitext (the English sentence -> the same sentence in the language)
   and monolingual retrieval (a sentence -> the next three, as a passage); and the STS benchmark's
   dev pairs (11 languages). Printed, per filter: its drop rate in each (task, language) it applies
   to, the worst one, and every one over `--max-rate` (1%). A default filter must stay under 1%.
2. Broken rows of five kinds, injected into copies of clean ones: a URL for a text, web boilerplate
   for a passage, bitext sides three or more times off in length, the query copied into the positive,
   and a positive in another script than the language its source declares. Printed: the share of
   each kind removed.
3. Speed, 2 workers each, medians of `--repeats`, on the same rows: the stage with `C4QualityFilter`
   alone (its default arguments in this stage) against datatrove's own `LocalPipelineExecutor`
   running that filter on the same positives (Parquet in, nothing written out): the like-for-like
   ratio; then the stage with every default filter, against the same datatrove run. Both sides'
   times include starting their 2 worker processes and reading Parquet.

    python bench/filters.py [--repeats 3] [--rows 40000]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
import statistics
import sys
import tarfile
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
from pipeline.stages.langid import LangTag, LangTagConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOILERPLATE = [
    "This website uses cookies to ensure you get the best experience on our website. Read our privacy policy.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "By continuing to browse you agree to our terms of use and the use of cookies.",
    '{"status": "ok", "items": [], "page": 1}',
    "Please enable JavaScript in your browser to view this page.\nCookie policy | Privacy policy | Terms of use",
]
URLS = [
    "https://www.example.com/news/2024/03/article-12345.html",
    "http://t.co/AbC123",
    "www.wikipedia.org/wiki/Main_Page",
]


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
                rows.append({"task": "bitext", "query": english[i], "positive": text, "language": lang})
            passage = " ".join(texts[(i + k) % len(texts)] for k in (1, 2, 3))
            rows.append({"task": "retrieval", "query": text, "positive": passage, "language": lang})
    with tarfile.open(data / "stsb-multi-mt.tar.xz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            found = re.search(r"stsb-(\w\w)-dev\.csv$", member.name)
            if found:
                for pair in csv.reader(io.TextIOWrapper(tar.extractfile(member), "utf-8")):  # type: ignore[arg-type]
                    rows.append({"task": "sts", "query": pair[0], "positive": pair[1], "language": found.group(1)})
    return rows


def tagged(rows: list[dict]) -> list[dict]:
    """The rows with the languages the pipeline's `langid` stage gives them (default settings); a
    row's `declared` positive language stays, as langid keeps a trusted source's."""
    stage = LangTag(LangTagConfig(stage="langid"), RunContext(Path("."), ("bench",)))
    stage.setup()
    batch = table(rows)
    out = pa.concat_tables([stage(batch.slice(s, 8192)) for s in range(0, batch.num_rows, 8192)])
    columns = ["query_lang", "positive_lang", "query_lang_conf", "positive_lang_conf"]
    tagged_rows = [{**r, **tags} for r, tags in zip(rows, out.select(columns).to_pylist())]
    return [
        {**r, "positive_lang": r["declared"], "positive_lang_conf": 1.0} if r.get("declared") else r
        for r in tagged_rows
    ]


def broken_rows(clean: list[dict], per_kind: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    bitext = [r for r in clean if r["task"] == "bitext"]
    retrieval = [r for r in clean if r["task"] == "retrieval"]
    by_script: dict[str, list[dict]] = {}
    for r in bitext:
        by_script.setdefault(script_of(r["language"]), []).append(r)
    out = []
    for _ in range(per_kind):
        r = dict(rng.choice(retrieval))
        out.append(
            {
                **r,
                "kind": "url",
                **({"query": rng.choice(URLS)} if rng.random() < 0.5 else {"positive": rng.choice(URLS)}),
            }
        )
        r = dict(rng.choice(retrieval))
        out.append({**r, "kind": "boilerplate", "positive": rng.choice(BOILERPLATE)})
        r = dict(rng.choice(bitext))
        words = r["positive"].split()
        short = (
            " ".join(words[: max(1, len(words) // 4)])
            if len(words) >= 4
            else r["positive"][: max(1, len(r["positive"]) // 4)]
        )
        long = " ".join(rng.choice(bitext)["positive"] for _ in range(3)) + " " + r["positive"]
        out.append({**r, "kind": "length_mismatch", "positive": short if rng.random() < 0.5 else long})
        r = dict(rng.choice(retrieval))
        out.append({**r, "kind": "query_copied", "positive": r["query"]})
        r = dict(rng.choice(bitext))
        other = rng.choice([s for s in by_script if s != script_of(r["language"])])
        # As from a source that declares its languages (`language_policy: trusted`): the label stays.
        out.append(
            {
                **r,
                "kind": "wrong_script",
                "positive": rng.choice(by_script[other])["positive"],
                "declared": r["language"],
            }
        )
    return out


def table(rows: list[dict]) -> pa.Table:
    records = [
        {
            "id": f"{i:08x}",
            "source": "bench",
            "licence": "x",
            "origin": f"bench:{i}",
            **{k: v for k, v in r.items() if k not in ("kind", "language", "declared")},
        }
        for i, r in enumerate(rows)
    ]
    return pa.Table.from_pylist(records, schema=WORK_SCHEMA)


def filtered(rows: list[dict], c4_only: bool = False) -> pl.DataFrame:
    config = FilterConfig(stage="filter")
    if c4_only:
        config = FilterConfig(stage="filter", filters=[config.filters[-1]])
    stage = QualityFilter(config, RunContext(Path("."), ("bench",)))
    stage.setup()
    batch = table(rows)
    out = pa.concat_tables([stage(batch.slice(s, 8192)) for s in range(0, batch.num_rows, 8192)])
    return pl.from_arrow(out.select(["query_lang", "positive_lang", "task", "_drop"])).with_columns(
        pl.Series("kind", [r.get("kind") for r in rows]),
        pl.Series("language", [r.get("language") for r in rows]),
        pl.col("_drop").str.split(":").list.get(1, null_on_oob=True).alias("filter"),
    )


def our_speed(files: list[Path], c4_only: bool) -> float:
    """The stage over the rows' Parquet files, one per worker process (as a run's step reads its
    input), wall seconds from starting the workers."""
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with ProcessPoolExecutor(len(files)) as pool:
        list(pool.map(_filter_file, files, [c4_only] * len(files)))
    return time.perf_counter() - started


def _filter_file(path: Path, c4_only: bool) -> None:
    config = FilterConfig(stage="filter")
    stage = QualityFilter(
        FilterConfig(stage="filter", filters=[config.filters[-1]]) if c4_only else config,
        RunContext(Path("."), ("bench",)),
    )
    stage.setup()
    for batch in pq.ParquetFile(path).iter_batches(8192):
        stage(pa.Table.from_batches([batch]))


def datatrove_speed(rows: list[dict], folder: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import C4QualityFilter
    from datatrove.pipeline.readers import ParquetReader

    data = folder / "docs"
    data.mkdir(exist_ok=True)
    for k in range(2):
        part = rows[k::2]
        pq.write_table(
            pa.table({"text": [r["positive"] for r in part], "id": [str(i) for i in range(len(part))]}),
            data / f"{k}.parquet",
        )
    args = FilterConfig(stage="filter").filters[-1].args
    executor = LocalPipelineExecutor(
        pipeline=[ParquetReader(str(data)), C4QualityFilter(**args)],
        tasks=2,
        workers=2,
        logging_dir=str(folder / f"logs-{time.perf_counter_ns()}"),
    )
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

    clean = tagged(clean_rows(args.data))
    out = filtered(clean)
    rows = out.group_by("task", "language").agg(pl.len().alias("rows"))
    drops = (
        out.filter(pl.col("filter").is_not_null()).group_by("filter", "task", "language").agg(pl.len().alias("dropped"))
    )
    rates = drops.join(rows, on=["task", "language"]).with_columns((pl.col("dropped") / pl.col("rows")).alias("rate"))
    print(
        f"clean rows: {out.height:,} ("
        f"{', '.join(f'{t} {n:,}' for t, n in out.group_by('task').len().sort('task').iter_rows())}), "
        f"languages: {rows['language'].n_unique()}; dropped {out['_drop'].is_not_null().mean():.3%}"
    )
    worst = rates.sort("rate", descending=True).group_by("filter", maintain_order=True).first().sort("filter")
    print(
        "each filter's worst (task, language) on clean rows:\n"
        + str(worst.select("filter", "task", "language", "dropped", "rows", "rate"))
    )
    over = rates.filter(pl.col("rate") > args.max_rate).sort("rate", descending=True)
    print(
        f"(task, language) over {args.max_rate:.0%} for some filter: {over.height}"
        + (f"\n{over}" if over.height else "")
    )

    broken = tagged(broken_rows(clean, args.per_kind))
    caught = (
        filtered(broken)
        .group_by("kind")
        .agg(pl.col("_drop").is_not_null().mean().alias("removed"), pl.len().alias("rows"))
        .sort("kind")
    )
    print("broken rows removed, by kind:\n" + str(caught))

    timed = (clean * (args.rows // len(clean) + 1))[: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"rows-{k}.parquet" for k in range(2)]
        for k, path in enumerate(files):
            pq.write_table(table(timed[k::2]), path)
        theirs = [datatrove_speed(timed, Path(tmp)) for _ in range(args.repeats)]
        c4 = [our_speed(files, True) for _ in range(args.repeats)]
        every = [our_speed(files, False) for _ in range(args.repeats)]
    t, o, e = statistics.median(theirs), statistics.median(c4), statistics.median(every)
    print(
        f"speed, {len(timed):,} rows, 2 workers, medians of {args.repeats}: "
        f"datatrove's executor (C4QualityFilter) {len(timed) / t:,.0f} rows/s; "
        f"the stage with C4QualityFilter alone {len(timed) / o:,.0f} rows/s: ratio {t / o:.2f}x; "
        f"with every default filter {len(timed) / e:,.0f} rows/s: {t / e:.2f}x"
    )


if __name__ == "__main__":
    main()
