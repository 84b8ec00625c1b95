"""`python -m pipeline dedup-eval`: precision, recall and F1 of near-duplicate detection per script,
on labelled pairs (the UDHR-based calibration set, or a file of pairs).

A pair is predicted duplicate exactly as the near-dup stage decides it: the two MinHash signatures
share at least one LSH band (bands x rows chosen for the threshold) and agree on at least
`threshold` of their hashes (the estimated Jaccard similarity of their shingle sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.dedup_calibration import Pair, build, script_of
from pipeline.minhash import Shingling, band_keys, choose_bands, signatures

DEFAULT_THRESHOLD = 0.5  # estimated Jaccard of the default shingles; chosen with this command (README)


@dataclass(frozen=True)
class NearDupParams:
    shingling: Shingling = Shingling()
    threshold: float = DEFAULT_THRESHOLD
    num_perm: int = 128
    seed: int = 1


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from Parquet or JSONL with columns a, b, duplicate (bool) and optionally kind, script."""
    import polars as pl

    path = Path(path)
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    rows = frame.to_dicts()
    return [Pair(r["a"], r["b"], bool(r["duplicate"]), r.get("kind") or "pair", r.get("script") or script_of(r["a"])) for r in rows]


def predict(pairs: list[Pair], params: NearDupParams) -> np.ndarray:
    a = signatures(pa.array([p.a for p in pairs]), params.num_perm, params.seed, params.shingling)
    b = signatures(pa.array([p.b for p in pairs]), params.num_perm, params.seed, params.shingling)
    bands, rows = choose_bands(params.threshold, params.num_perm)
    candidate = (band_keys(a, bands, rows) == band_keys(b, bands, rows)).any(axis=1)
    return candidate & ((a == b).mean(axis=1) >= params.threshold)


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
        out[name] = {"pairs": len(idx), "duplicates": int(truth.sum()), "precision": precision, "recall": recall, "f1": f1}
    return out


def run(data_dir: str | None, pairs_file: str | None, params: NearDupParams) -> tuple[dict, dict]:
    pairs = read_pairs(pairs_file) if pairs_file else build(data_dir)
    predicted = predict(pairs, params)
    return scores(pairs, predicted, "script"), scores(pairs, predicted, "kind")
