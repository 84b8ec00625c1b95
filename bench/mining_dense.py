"""Dense hard-negative mining: this pipeline's `mine_negatives` stage against sentence-transformers'
`mine_hard_negatives`, on the same corpus, model and settings, in one run.

Corpus: the shipped XQuAD-R sample (`manifests/samples/xquad_r`), 8 languages x 1,190 questions over 240
paragraphs; each language is mined against its own paragraphs (one source per language here, so both
sides use the same pools). Model: a MiniLM-L6-sized BERT (6 layers, 384 wide, 12 heads) with a
byte-level BPE vocabulary trained on the corpus, untrained and pass-through (`train/small_model.py`:
it ranks lexically, so the filters see realistic score distributions, and costs what a trained
model of its size costs; nothing is downloaded). Settings on both sides: ranks 5-100, drop candidates above 95% of the
positive's score (ST: relative_margin 0.05), up to 24 negatives, best first, batch 64.
Ours runs through the runner on an embedded Ray (actor pool for the embedding, sharded search);
its step time and whole-run time are both reported.

    python bench/mining_dense.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples" / "xquad_r"
LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "zh")
SETTINGS = {"skip_top": 5, "max_rank": 100, "ratio": 0.95, "negatives": 24, "batch": 64}


def load(langs: tuple[str, ...] = LANGS) -> dict[str, list[dict]]:
    return {
        lang: [json.loads(line) for line in gzip.open(SAMPLES / f"{lang}.jsonl.gz", "rt", encoding="utf-8")]
        for lang in langs
    }


def small_model(folder: Path, layers: int = 6, hidden: int = 384) -> Path:
    """The MiniLM-L6-sized pass-through model (see the module's docstring), built offline. Its
    layers pass their input through, so fewer `layers` give a retriever of the same kind (its
    random token vectors differ), faster."""
    from train.small_model import build_small_model

    texts = [r[k] for rows in load().values() for r in rows for k in ("question", "context")]
    return build_small_model(
        texts,
        folder,
        vocab_size=30000,
        hidden=hidden,
        layers=layers,
        heads=max(1, hidden // 32),
        max_length=512,
        pass_through=True,
    )


def sentence_transformers_run(model_dir: Path, data: dict[str, list[dict]]) -> tuple[float, int]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(str(model_dir), device="cpu")
    started, negatives = time.perf_counter(), 0
    for rows in data.values():
        ds = Dataset.from_list(rows)
        out = mine_hard_negatives(
            ds,
            model,
            anchor_column_name="question",
            positive_column_name="context",
            range_min=SETTINGS["skip_top"],
            range_max=SETTINGS["max_rank"],
            relative_margin=1 - SETTINGS["ratio"],
            num_negatives=SETTINGS["negatives"],
            sampling_strategy="top",
            batch_size=SETTINGS["batch"],
            output_format="n-tuple",
            verbose=False,
        )
        negatives += sum(1 for r in out for k, v in r.items() if k.startswith("negative") and v)
    return time.perf_counter() - started, negatives


def our_run(model_dir: Path, folder: Path, run_dir: Path, langs: tuple[str, ...]) -> tuple[float, float, int]:
    import polars as pl

    from pipeline.api import load_manifest, run

    sources = [
        {
            "name": f"xquad_{lang}",
            "task": "retrieval",
            "path": str(SAMPLES / f"{lang}.jsonl.gz"),
            "columns": {"query": "question", "positive": "context"},
            "licence": "CC-BY-SA-4.0",
        }
        for lang in langs
    ]
    stages = [
        {
            "stage": "mine_negatives",
            "retriever": "dense",
            "model": str(model_dir),
            "per_language": False,
            "skip_top": SETTINGS["skip_top"],
            "max_rank": SETTINGS["max_rank"],
            "max_score_ratio": SETTINGS["ratio"],
            "num_negatives": SETTINGS["negatives"],
            "embed_batch_size": SETTINGS["batch"],
        }
    ]
    path = folder / "manifest.json"
    path.write_text(json.dumps({"output": str(run_dir), "sources": sources, "stages": stages}))
    started = time.perf_counter()
    result = run(load_manifest(str(path)), quiet=True, log=lambda m: None)
    whole = time.perf_counter() - started
    step = next(s.seconds for s in result.steps if s.name.endswith("mine_negatives"))
    negatives = int(
        pl.scan_parquet(str(run_dir / "shards" / "**" / "*.parquet"))
        .select(pl.col("negative_ids").list.len().sum())
        .collect()
        .item()
    )
    return step, whole, negatives


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--languages", default=",".join(LANGS), help="a subset, e.g. en,zh (on a busy machine)")
    parser.add_argument("--layers", type=int, default=6, help="the model's layers (its width: --hidden)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    langs = tuple(args.languages.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = load(langs)
        model_dir = small_model(folder / "model", args.layers, args.hidden)
        queries = sum(len(r) for r in data.values())
        st, ours, whole = [], [], []
        for i in range(args.repeats):
            t, st_negs = sentence_transformers_run(model_dir, data)
            st.append(t)
            step, w, our_negs = our_run(model_dir, folder, folder / f"run{i}", langs)
            ours.append(step)
            whole.append(w)
            print(
                f"repeat {i + 1}: sentence-transformers {t:.1f} s ({st_negs:,} negatives), ours step {step:.1f} s, "
                f"whole run {w:.1f} s ({our_negs:,} negatives)",
                flush=True,
            )
        st_m, ours_m, whole_m = statistics.median(st), statistics.median(ours), statistics.median(whole)
        print(f"\n{queries:,} queries, {os.cpu_count()} CPUs, medians of {args.repeats}:")
        print(f"  sentence-transformers mine_hard_negatives: {st_m:.1f} s ({queries / st_m:,.0f} queries/s)")
        print(
            f"  mine_negatives step:                       {ours_m:.1f} s ({queries / ours_m:,.0f} queries/s)  "
            f"ratio {st_m / ours_m:.2f}x"
        )
        print(f"  whole pipeline run (ingest, mining, shards): {whole_m:.1f} s  ratio {st_m / whole_m:.2f}x")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "queries": queries,
                        "model": f"BERT {args.layers} x {args.hidden} (pass-through)",
                        "repeats": args.repeats,
                        "sentence_transformers_seconds": st_m,
                        "mine_negatives_step_seconds": ours_m,
                        "whole_run_seconds": whole_m,
                        "ratio_step": round(st_m / ours_m, 2),
                        "ratio_whole_run": round(st_m / whole_m, 2),
                    },
                    indent=1,
                )
            )


if __name__ == "__main__":
    main()
