"""`python -m pipeline dedup-eval`: precision, recall and F1 of near-duplicate detection per script,
on labelled pairs (the UDHR-based calibration set, or a file of pairs).

A pair is predicted duplicate by the `near_dedup` stage's own decision with the same settings
(`NearDedupConfig.duplicates`): the two MinHash signatures share at least one LSH band and (with
`verify`, the default) their estimated Jaccard similarity reaches `threshold`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.stages.near_dedup import NearDedupConfig
from pipeline.tools.dedup_calibration import Pair, build, script_of


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from Parquet or JSONL with columns a, b, duplicate (bool) and optionally kind, script."""
    import polars as pl

    path = Path(path)
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    rows = frame.to_dicts()
    return [
        Pair(r["a"], r["b"], bool(r["duplicate"]), r.get("kind") or "pair", r.get("script") or script_of(r["a"]))
        for r in rows
    ]


def predict(pairs: list[Pair], config: NearDedupConfig) -> np.ndarray:
    a = config.signature([pa.array([p.a for p in pairs])])
    b = config.signature([pa.array([p.b for p in pairs])])
    return config.duplicates(a, b)


def scores(pairs: list[Pair], predicted: np.ndarray, key: str = "script") -> dict[str, dict[str, float]]:
    """Per value of `key` (script or kind), and `all`: n, precision, recall, F1."""
    groups: dict[str, list[int]] = {"all": list(range(len(pairs)))}
    for i, p in enumerate(pairs):
        groups.setdefault(getattr(p, key), []).append(i)
    out = {}
    for name, idx in groups.items():
        truth = np.array([pairs[i].duplicate for i in idx])
        pred = predicted[idx]
        tp = int((truth & pred).sum())
        precision = tp / pred.sum() if pred.sum() else 1.0
        recall = tp / truth.sum() if truth.sum() else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {
            "pairs": len(idx),
            "duplicates": int(truth.sum()),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    return out


def run(data_dir: str | None, pairs_file: str | None, config: NearDedupConfig) -> tuple[dict, dict]:
    pairs = read_pairs(pairs_file) if pairs_file else build(data_dir)
    predicted = predict(pairs, config)
    return scores(pairs, predicted, "script"), scores(pairs, predicted, "kind")
