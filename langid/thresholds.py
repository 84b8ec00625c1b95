"""Confidence thresholds per predicted label and text length, and their calibration on dev fragments.

A model is less sure of a 2-word query than of a paragraph even when it is right, so one threshold
per label either calls short texts `und` or lets long texts' errors through. A table gives one
threshold per label and length bucket (`langid/fragments.py`); it lives beside the model file as
`<model>.thresholds.tsv`, with either a `threshold` column (every length) or one column per bucket.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from langid.distinct import map_distinct
from langid.fragments import BUCKET_NAMES
from langid.labels import UNDETERMINED

GRID = np.round(np.arange(0.0, 1.0, 0.05), 2)


def table_path(model_file: Path) -> Path:
    """Where a model's threshold table lives: `lid.176.ftz` -> `lid.176.thresholds.tsv`."""
    return model_file.with_suffix(".thresholds.tsv")


def read_thresholds(path: Path) -> dict[str, np.ndarray]:
    """label -> threshold per length bucket; empty when there is no table."""
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    out = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        values = [row["threshold"]] * len(BUCKET_NAMES) if "threshold" in row else [row[b] for b in BUCKET_NAMES]
        out[row["label"]] = np.array([float(v) for v in values], dtype=np.float32)
    return out


class Thresholds:
    """Per text, the confidence its label needs: the manifest's override for the label, else the
    model's table at the text's length bucket but at least `default`, else `default`. The floor
    matters for tables calibrated on language-balanced dev data (short200's is 0 for most labels on
    sentences: there 90% of a label's predictions are right at any confidence), where a real source's
    texts are in a few languages and a rare label's weak prediction is mostly wrong."""

    def __init__(self, table: dict[str, np.ndarray], default: float, overrides: dict[str, float] | None = None):
        self.table = {
            **{label: np.maximum(row, default) for label, row in table.items()},
            **{label: np.full(len(BUCKET_NAMES), v, dtype=np.float32) for label, v in (overrides or {}).items()},
        }
        self.default = default
        # Whether any label's threshold depends on length (else texts need no length bucket).
        self.by_length = any((row != row[0]).any() for row in self.table.values())
        # The table as one matrix (label x bucket), its last row the default: one lookup per text.
        self._row = {label: i for i, label in enumerate(self.table)}
        self._matrix = np.vstack([*self.table.values(), np.full(len(BUCKET_NAMES), default, dtype=np.float32)])

    def __call__(self, labels: list[str] | np.ndarray, buckets: np.ndarray) -> np.ndarray:
        rows = map_distinct(labels, lambda label: self._row.get(label, -1), pa.int64()).to_numpy(zero_copy_only=False)
        return self._matrix[rows, buckets]


def calibrate(
    gold: list[str],
    predicted: list[str],
    confidence: np.ndarray,
    buckets: np.ndarray,
    precision: float = 0.9,
    min_n: int = 20,
) -> dict[str, np.ndarray]:
    """Per predicted label and bucket, the lowest threshold (0.05 steps) above which the label's
    predictions are at least `precision` right; where no threshold reaches it, the one that
    maximises the label's F1 in that bucket (texts below it count as misses). With fewer than
    `min_n` predictions in a bucket, the nearest longer bucket's value is used."""
    by: dict[tuple[str, int], list[int]] = defaultdict(list)
    gold_n: dict[tuple[str, int], int] = defaultdict(int)
    for i, (g, p, b) in enumerate(zip(gold, predicted, buckets.tolist())):
        by[p, b].append(i)
        gold_n[g, b] += 1
    out: dict[str, np.ndarray] = {}
    for label in sorted({p for p, _ in by} - {UNDETERMINED}):
        row = np.full(len(BUCKET_NAMES), np.nan, dtype=np.float32)
        for b in range(len(BUCKET_NAMES)):
            idx = by.get((label, b), [])
            if len(idx) < min_n:
                continue
            conf = confidence[idx]
            right = np.array([gold[i] == label for i in idx])
            kept = conf[None, :] >= GRID[:, None]  # threshold x prediction
            tp = (kept & right).sum(axis=1)
            prec = tp / np.maximum(kept.sum(axis=1), 1)
            reaching = np.flatnonzero(prec >= precision)
            if len(reaching):
                row[b] = GRID[reaching[0]]
            else:
                f1 = 2 * tp / (kept.sum(axis=1) + max(gold_n[label, b], 1))
                row[b] = GRID[int(np.argmax(f1))]
        for b in range(len(BUCKET_NAMES) - 2, -1, -1):  # fill gaps from longer texts
            if np.isnan(row[b]):
                row[b] = row[b + 1]
        if not np.isnan(row).all():
            out[label] = np.nan_to_num(row, nan=float(np.nanmax(row)))
    return out


def write_thresholds(table: dict[str, np.ndarray], path: Path, header: str) -> None:
    """The table as TSV, with `header` as its leading comment (how it was made)."""
    lines = [f"# {line}" for line in header.splitlines()] + ["\t".join(("label", *BUCKET_NAMES))]
    lines += ["\t".join((label, *(f"{v:.2f}" for v in row))) for label, row in sorted(table.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
