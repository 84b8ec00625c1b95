"""Language-tagging throughput: the `langid` stage against raw fastText `predict` on the same texts.

Baseline: `model.predict(texts, k=1)` on a Python list, the fastest way to call fastText from Python.
Measured in one run, the tagging work always on the same core (CPU 0): the raw baseline and the
in-process stage run pinned there; in Ray the actor pins itself there, while Ray's own processes
(scheduler, object store, the driver's executor) use the other core, as in a real run:
  raw       the baseline, texts already in a list
  stage     the langid stage called on Arrow batches (prepare, code detector, label mapping,
            thresholds, cross-lingual flag, Arrow columns out): what each Ray actor does per batch
  ray       the same stage inside Ray Data (one actor, batches from the object store)
  ray-fixed the same Ray Data map on 100 records: the fixed cost of a run (actor start, imports,
            model load), so the steady-state ratio (ray minus fixed) can be told from start-up
Prints docs/s for each and the ratios stage/raw and ray/raw (the goal is >= 0.8). The stage runs
with its defaults (script rules; with `--model short200`, lid176 as fallback where it is unsure) or
the `--fallback` given (lid176 with `--fallback short200`: better on short texts, a second model's
work); the raw baseline is the main model's `predict`. `--texts fragments` tags 1-5-word fragments cut from
the sentences instead (queries: where script rules and the fallback do most).

    python bench/langid_throughput.py --records 100000 --repeats 3 [--model short200]
        [--fallback short200|none] [--texts fragments]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from core.record import WORK_SCHEMA  # noqa: E402
from langid.corpora import sib200  # noqa: E402
from langid.fragments import cut  # noqa: E402
from langid.tagger import LanguageTagger  # noqa: E402
from pipeline.engine.plan import plan_steps  # noqa: E402
from pipeline.engine.stage import RunContext  # noqa: E402
from pipeline.stages import REGISTRY  # noqa: E402
from pipeline.stages.langid import LangTag, LangTagConfig  # noqa: E402

SIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "sib200-train-dev.tar.xz"
TAG_CPU = 0


def records(n: int, kind: str = "sentences") -> pa.Table:
    """`n` bitext-like records (query, positive) over SIB-200's 205 languages, repeated as needed:
    its sentences, or fragments of 1 to 5 words cut from them. Shuffled (seeded), so that a few
    thousand records hold every language, not the first few in label order."""
    data = sib200(SIB, "train")
    texts = data.texts if kind == "sentences" else cut(data).texts
    random.Random(0).shuffle(texts)
    rows = {name: [] for name in WORK_SCHEMA.names}
    for i in range(n):
        for name in rows:
            rows[name].append(None)
        rows["id"][i] = str(i)
        rows["source"][i] = "bench"
        rows["task"][i] = "bitext"
        rows["query"][i] = texts[i % len(texts)]
        rows["positive"][i] = texts[(i * 7919 + 13) % len(texts)]
        rows["origin"][i] = f"bench:{i}"
    return pa.Table.from_pydict(rows, schema=WORK_SCHEMA)


def bench_raw(table: pa.Table, model) -> float:
    texts = table.column("query").to_pylist() + table.column("positive").to_pylist()
    start = time.perf_counter()
    model.predict(texts, k=1)
    return time.perf_counter() - start


def bench_stage(table: pa.Table, stage: LangTag, batch_rows: int) -> float:
    start = time.perf_counter()
    for offset in range(0, table.num_rows, batch_rows):
        stage(table.slice(offset, batch_rows))
    return time.perf_counter() - start


class PinnedStageActor:
    """The runner's worker for a step of row-local stages, pinned to CPU 0 like the baseline."""

    def __init__(self, *args):
        from pipeline.engine.execute import GroupWorker

        os.sched_setaffinity(0, {TAG_CPU})
        self.actor = GroupWorker(*args)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.actor(batch)


def bench_ray(table: pa.Table, config: LangTagConfig, batch_rows: int) -> float:
    import ray.data

    ds = ray.data.from_arrow(table).repartition(max(1, table.num_rows // batch_rows)).materialize()
    start = time.perf_counter()
    ds.map_batches(
        PinnedStageActor,
        fn_constructor_args=(plan_steps([config], REGISTRY, "bench")[1], RunContext(Path("."), ("bench",))),
        batch_format="pyarrow",
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    ).materialize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--texts", choices=["sentences", "fragments"], default="sentences")
    parser.add_argument(
        "--model",
        default=LangTagConfig.model_fields["model"].default,
        help="the stage's model (and the raw baseline's)",
    )
    parser.add_argument(
        "--fallback",
        default=LangTagConfig.model_fields["fallback"].default,
        help="the stage's fallback model, `none` for none (the raw baseline stays the main model's predict)",
    )
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    all_cpus = os.sched_getaffinity(0)

    table = records(args.records, args.texts)
    docs = 2 * args.records
    config = LangTagConfig(
        stage="langid", model=args.model, fallback=None if args.fallback == "none" else args.fallback
    )
    stage = LangTag(config, RunContext(Path("."), ("bench",)))
    stage.setup()
    raw_model = LanguageTagger(args.model).model
    times = {"raw": [], "stage": [], "ray": [], "ray-fixed": []}
    # Raw and stage first, with no Ray process running beside them; then Ray.
    os.sched_setaffinity(0, {TAG_CPU})
    for r in range(args.repeats):
        times["raw"].append(bench_raw(table, raw_model))
        times["stage"].append(bench_stage(table, stage, args.batch_rows))
        print(
            f"repeat {r + 1}: raw {times['raw'][-1]:.2f} s, stage {times['stage'][-1]:.2f} s "
            f"(stage/raw {times['raw'][-1] / times['stage'][-1]:.2f})",
            flush=True,
        )
    os.sched_setaffinity(0, all_cpus)
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for r in range(args.repeats):
            times["ray"].append(bench_ray(table, config, args.batch_rows))
            times["ray-fixed"].append(bench_ray(table.slice(0, 100), config, args.batch_rows))
            print(
                f"repeat {r + 1}: ray {times['ray'][-1]:.2f} s, fixed cost {times['ray-fixed'][-1]:.2f} s "
                f"(ray/raw {times['raw'][r] / times['ray'][-1]:.2f})",
                flush=True,
            )

    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(
        f"\n{args.records:,} records = {docs:,} texts (SIB-200 {args.texts}, 205 languages), median of {args.repeats}:"
    )
    for k, s in med.items():
        rate = f"{docs / s:10,.0f} docs/s per core" if k != "ray-fixed" else "(100 records)"
        print(f"  {k:9s} {s:7.2f} s  {rate}")
    print(f"ratio stage/raw: {med['raw'] / med['stage']:.2f}")
    if "ray" in med:
        steady = statistics.median(r / (y - f) for r, y, f in zip(times["raw"], times["ray"], times["ray-fixed"]))
        print(f"ratio ray/raw:   {med['raw'] / med['ray']:.2f}  (one actor on one CPU; Ray moves the batches)")
        print(f"ratio ray/raw without the fixed start-up cost: {steady:.2f}")


if __name__ == "__main__":
    main()
