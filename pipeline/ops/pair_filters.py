"""Checks of training pairs that general text filters do not make, column-wise over Arrow batches.

Each check takes a batch of records and returns, per row, the reason it fails (null: it passes) and
a detail naming the field; the `filter` stage (`pipeline/stages/filter.py`) drops the rows that fail.

- `non_text`: a field that is only a URL, only a number, or only markup.
- `same_text`: the positive equal to the query, or contained in it (case and spaces aside), in tasks
  where a pair of equal texts teaches nothing (not STS: an identical pair scores 5 there).
- `min_length`: a field shorter than its minimum, in words as `pipeline/ops/words.py` counts them.
- `length_ratio`: bitext whose two sides differ in length more than translations do: characters,
  against the ratio that language pair's translations have (FLORES, `length_ratios.tsv`).
- `languages_differ`: query and positive in different languages (both sure) where the task says they share one.
- `script_mismatch`: a text that does not contain its language's script, or whose letters are mostly
  of another (a declared language the text is not in, or a transliteration).
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from langid.labels import is_language, script_of
from langid.scripts import script_present, script_share
from pipeline.ops.arrow import HSPACE, SPACE_OR_NEWLINE_TO_COLLAPSE, replace_regex
from pipeline.ops.words import word_counts

RATIOS = Path(__file__).resolve().parents[1] / "stages" / "data" / "length_ratios.tsv"
_URL = r"^\s*(?:(?:https?|ftp)://|www\.)\S+\s*$"
_NUMBER = r"^[^\p{L}]*\p{N}[^\p{L}]*$"  # a digit, and no letter at all
_TAG = r"<[^>]*>|&#?\w+;"

Result = tuple[pa.Array, pa.Array]  # reason per row (null: passes), detail per row


def _first(reasons: list[tuple[np.ndarray, str, str]], n: int) -> Result:
    """Per row, the first failing (mask, reason, detail) of a list, in order."""
    reason: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    for mask, why, what in reversed(reasons):
        for r in np.flatnonzero(mask):
            reason[r], detail[r] = why, what
    return pa.array(reason, pa.string()), pa.array(detail, pa.string())


def _present(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.is_valid(column).to_numpy(zero_copy_only=False)


def non_text(batch: pa.Table, fields: list[str]) -> Result:
    checks = []
    for field in fields:
        text = pc.fill_null(batch.column(field), "")
        has = _present(batch.column(field))
        url = pc.match_substring_regex(text, _URL).to_numpy(zero_copy_only=False)
        number = pc.match_substring_regex(text, _NUMBER).to_numpy(zero_copy_only=False)
        tagged = pc.match_substring_regex(text, "<[A-Za-z/!][^>]*>").to_numpy(zero_copy_only=False)
        bare = pc.match_substring_regex(pc.replace_substring_regex(text, _TAG, ""), r"\p{L}").to_numpy(
            zero_copy_only=False
        )
        checks += [
            (has & url, "url", f"{field} is a URL"),
            (has & number, "number", f"{field} is a number"),
            (has & tagged & ~bare, "markup", f"{field} is markup"),
        ]
    return _first(checks, batch.num_rows)


def _folded(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    text = pc.fill_null(text, "")
    return pc.utf8_lower(
        pc.utf8_trim_whitespace(replace_regex(text, f"(?:{HSPACE}|\\n)+", " ", SPACE_OR_NEWLINE_TO_COLLAPSE))
    )


def _of_tasks(batch: pa.Table, tasks: list[str]) -> np.ndarray:
    return pc.is_in(batch.column("task"), pa.array(tasks, pa.string())).to_numpy(zero_copy_only=False)


def same_text(batch: pa.Table, contained: bool, tasks: list[str]) -> Result:
    query, positive = _folded(batch.column("query")), _folded(batch.column("positive"))
    has = (
        _of_tasks(batch, tasks)
        & _present(batch.column("positive"))
        & (pc.utf8_length(positive).to_numpy(zero_copy_only=False) > 0)
    )
    equal = pc.equal(query, positive).to_numpy(zero_copy_only=False)
    inside = np.zeros(batch.num_rows, bool)
    if contained:
        q, p = query.to_pylist(), positive.to_pylist()
        inside = np.array([bool(b) and b in a for a, b in zip(q, p)], bool)
    return _first(
        [
            (has & equal, "positive_is_query", "positive equals the query"),
            (has & inside & ~equal, "positive_in_query", "positive is part of the query"),
        ],
        batch.num_rows,
    )


def min_length(batch: pa.Table, minimum: dict[str, dict[str, int]]) -> Result:
    """`minimum`: task -> field -> fewest words (the task `*` for every task)."""
    tasks = batch.column("task").to_numpy(zero_copy_only=False)
    checks = []
    fields = sorted({f for per_task in minimum.values() for f in per_task})
    for field in fields:
        words = word_counts(batch.column(field), batch.column(f"{field}_lang"))
        least = np.array([minimum.get(t, minimum.get("*", {})).get(field, 0) for t in tasks])
        checks.append(
            (_present(batch.column(field)) & (words < least), "too_short", f"{field} shorter than its minimum")
        )
    return _first(checks, batch.num_rows)


@lru_cache(maxsize=1)
def expected_ratios() -> dict[str, float]:
    """Characters of a language's text per character of the same English text (FLORES medians),
    by label and, for languages not listed, by script (`*_Arab`)."""
    with RATIOS.open(encoding="utf-8") as f:
        return {r["language"]: float(r["chars_per_english_char"]) for r in csv.DictReader(f, delimiter="\t")}


def _expected(labels: list[str | None]) -> np.ndarray:
    table = expected_ratios()
    return np.array([table.get(label or "", table.get(f"*_{script_of(label or '')}", 1.0)) for label in labels])


def length_ratio(batch: pa.Table, tasks: list[str], max_ratio: float) -> Result:
    applies = _of_tasks(batch, tasks)
    query = pc.utf8_length(pc.fill_null(batch.column("query"), "")).to_numpy(zero_copy_only=False).astype(float)
    positive = pc.utf8_length(pc.fill_null(batch.column("positive"), "")).to_numpy(zero_copy_only=False).astype(float)
    expected = _expected(batch.column("positive_lang").to_pylist()) / _expected(batch.column("query_lang").to_pylist())
    ratio = np.maximum(positive, 1) / np.maximum(query, 1) / expected
    off = applies & _present(batch.column("positive")) & ((ratio > max_ratio) | (ratio < 1 / max_ratio))
    return _first([(off, "length_ratio", "the two sides' lengths differ more than translations do")], batch.num_rows)


def languages_differ(batch: pa.Table, tasks: list[str], min_confidence: float) -> Result:
    """Two languages (not two scripts of one: `cmn_Hans`, `cmn_Hant`), each tagged with at least
    `min_confidence`: short texts of close languages (Russian, Bulgarian) are often told apart wrongly."""
    applies = _of_tasks(batch, tasks)
    query, positive = batch.column("query_lang").to_pylist(), batch.column("positive_lang").to_pylist()
    differ = np.array(
        [is_language(q) and is_language(p) and q.split("_")[0] != p.split("_")[0] for q, p in zip(query, positive)],
        bool,
    )
    sure = [
        pc.fill_null(batch.column(f"{f}_lang_conf"), 0.0).to_numpy(zero_copy_only=False) >= min_confidence
        for f in ("query", "positive")
    ]
    return _first(
        [(applies & differ & sure[0] & sure[1], "languages_differ", "query and positive in different languages")],
        batch.num_rows,
    )


def script_mismatch(batch: pa.Table, fields: list[str], min_share: float) -> Result:
    """A text without its label's script, or whose letters are mostly of another (a few Latin words,
    names or acronyms, in a text of another script are common; the other way round, it is not the
    labelled language)."""
    checks = []
    for field in fields:
        labels = batch.column(f"{field}_lang").combine_chunks()
        scripts = pa.array(
            [script_of(label) if is_language(label) else None for label in labels.to_pylist()], pa.string()
        )
        known = pc.is_valid(scripts).to_numpy(zero_copy_only=False) & _present(batch.column(field))
        texts = pc.fill_null(batch.column(field).combine_chunks(), "")
        if known.any():
            scripts = pc.fill_null(scripts, "Latn")
            wrong = ~script_present(texts, scripts) | (script_share(texts, scripts) < min_share)
        else:
            wrong = np.zeros(batch.num_rows, bool)
        checks.append((known & wrong, "script_mismatch", f"{field} is not in its language's script"))
    return _first(checks, batch.num_rows)
