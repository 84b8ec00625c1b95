"""Likely false negatives among BM25-mined negatives on XQuAD-R, with and without positive-aware
filtering, and the mining stage's throughput.

XQuAD-R (`../shared/data/xquad-r-dev.tar.xz`): 1,190 questions over 240 Wikipedia paragraphs per
language (ar de el en es hi ru zh). Each question's pool is the paragraphs of its language; a mined
negative that contains the question's gold answer string is counted as a likely false negative.
Filtered = the stage's defaults (skip the top 5, drop candidates above 95% of the positive's score
and near duplicates of the positive); unfiltered = the same BM25 ranking with only the positive and
other known positives of the query removed. One process, one core.

    python bench/mining_false_negatives.py
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from pipeline.engine.stage import RunContext  # noqa: E402
from pipeline.stages.mine_negatives import MineNegatives, MineNegativesConfig  # noqa: E402
from sources.record import WORK_SCHEMA  # noqa: E402

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad-r-dev.tar.xz"
LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "zh")
UNFILTERED = {"skip_top": 0, "max_score_ratio": None, "near_dup_threshold": 1.0}


def rows(tar: tarfile.TarFile, lang: str) -> list[dict]:
    data = json.load(tar.extractfile(f"xquad-r/{lang}.json"))  # type: ignore[arg-type]
    return [{"query": qa["question"], "positive": p["context"], "answer": qa["answers"][0]["text"]}
            for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]


def mine(items: list[dict], **config) -> tuple[list[dict], float]:
    table = pa.Table.from_pylist([{"id": str(i), "source": "xquad", "task": "retrieval", "query": r["query"], "positive": r["positive"],
                                   "licence": "CC-BY-SA-4.0", "origin": f"q:{i}"} for i, r in enumerate(items)], schema=WORK_SCHEMA)
    stage = MineNegatives(MineNegativesConfig(stage="mine_negatives", **config), RunContext(Path("."), ("xquad",)))
    started = time.perf_counter()
    out = stage(table).to_pylist()
    return out, time.perf_counter() - started


def false_negative_share(items: list[dict], mined: list[dict], top: int) -> float:
    pairs = [(r["answer"], n) for r, m in zip(items, mined) for n in (m["negatives"] or [])[:top]]
    return sum(a in n for a, n in pairs) / max(len(pairs), 1)


def main() -> None:
    print("lang  queries  FN top-1: unfiltered -> filtered   FN top-7   FN all 24   negatives/query   queries/s")
    totals = {"q": 0, "s": 0.0}
    with tarfile.open(XQUAD, "r:xz") as tar:
        for lang in LANGS:
            items = rows(tar, lang)
            filtered, seconds = mine(items)
            unfiltered, _ = mine(items, **UNFILTERED)
            shares = [(false_negative_share(items, unfiltered, k), false_negative_share(items, filtered, k)) for k in (1, 7, 24)]
            per_query = sum(len(m["negatives"] or []) for m in filtered) / len(items)
            totals["q"] += len(items)
            totals["s"] += seconds
            print(f"{lang:4}  {len(items):7}  {shares[0][0]:.3f} -> {shares[0][1]:.3f}              "
                  f"{shares[1][0]:.3f} -> {shares[1][1]:.3f}   {shares[2][0]:.3f} -> {shares[2][1]:.3f}   {per_query:5.1f}   {len(items) / seconds:9.0f}")
    print(f"all   {totals['q']:7}  mining throughput {totals['q'] / totals['s']:.0f} queries/s (one core, pools of 240 paragraphs)")


if __name__ == "__main__":
    main()
