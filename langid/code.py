"""Programming languages: `code:<lang>` from a declared name or file extension, and a light detector
for code inside natural-language sources (so a Python snippet is not tagged as English).

The detector is two passes. A vectorised pass (pyarrow's RE2 kernels over the whole batch) measures
how much of each text is code punctuation; prose almost never passes it, so the second, slower pass
(per-language marker regexes from `langid/data/code_languages.tsv`) runs on few texts. We write it
here because no maintained offline library does this: Pygments' `guess_lexer` is slow and calls
plain prose a programming language, and guesslang needs TensorFlow and a downloaded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.labels import CODE_PREFIX, read_table

# Characters that carry code's structure; in prose they are rare (a bracket or two per sentence).
_CODE_PUNCT = r"[{}()\[\];=<>$#@*/\\|&_:]"
# A line that ends like a statement or block in most C-like and scripting languages.
_CODE_LINE_END = r"(?m)[;{}):,]\s*$"
MIN_CHARS = 20  # below this a text is too short to call it code


@dataclass(frozen=True)
class CodeLanguage:
    name: str
    extensions: tuple[str, ...]
    aliases: tuple[str, ...]
    markers: tuple[regex.Pattern, ...]


@lru_cache(maxsize=None)
def code_languages() -> tuple[CodeLanguage, ...]:
    def split(cell: str) -> tuple[str, ...]:
        return tuple(x for x in cell.split(",") if x)

    return tuple(
        CodeLanguage(
            r["name"],
            split(r["extensions"]),
            split(r["aliases"]),
            tuple(regex.compile(m, regex.MULTILINE) for m in r["markers"].split("|||")),
        )
        for r in read_table("code_languages.tsv")
    )


@lru_cache(maxsize=None)
def _by_name() -> dict[str, str]:
    names: dict[str, str] = {}
    for lang in code_languages():
        for key in (lang.name, *lang.aliases):
            names[key.lower()] = lang.name
    return names


@lru_cache(maxsize=None)
def _by_extension() -> dict[str, str]:
    return {ext: lang.name for lang in code_languages() for ext in lang.extensions}


def declared_code_label(declared: str) -> str | None:
    """`code:<lang>` for a declared language name (`Python`, `c++`, `code:go`) or a file name with a
    known extension (`src/main.rs`); None when it names no programming language we know."""
    value = declared.strip().removeprefix(CODE_PREFIX).lower()
    if value in _by_name():
        return CODE_PREFIX + _by_name()[value]
    suffix = PurePosixPath(value).suffix.removeprefix(".")
    if suffix in _by_extension():
        return CODE_PREFIX + _by_extension()[suffix]
    return None


def code_punctuation_share(texts: pa.Array) -> np.ndarray:
    """Per text: (code punctuation + statement-like line ends) / characters, vectorised; 0 for
    texts too short or with a single line."""
    length = pc.utf8_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    punct = pc.count_substring_regex(texts, _CODE_PUNCT).fill_null(0).to_numpy(zero_copy_only=False)
    ends = pc.count_substring_regex(texts, _CODE_LINE_END).fill_null(0).to_numpy(zero_copy_only=False)
    lines = pc.count_substring(texts, "\n").fill_null(0).to_numpy(zero_copy_only=False)
    share = (punct + 4.0 * ends) / np.maximum(length, 1.0)
    # Code is told by its lines (markers must hit two): a one-line text is never called code.
    share[(length < MIN_CHARS) | (lines < 1)] = 0.0
    return share


def guess_language(text: str) -> tuple[str | None, float]:
    """The programming language whose markers score best on `text` (lines hit, plus a bonus per
    distinct marker, so one distinctive construct outweighs a marker shared with other languages),
    and the share of the text's lines that any marker hit. None when no language hits two lines."""
    lines = max(1, text.count("\n") + 1)
    best, best_score, covered = None, 0, set()
    for lang in code_languages():
        hit_lines: set[int] = set()
        distinct = 0
        for marker in lang.markers:
            starts = [m.start() for m in marker.finditer(text)]
            distinct += bool(starts)
            hit_lines.update(text.count("\n", 0, s) for s in starts)
        covered |= hit_lines
        score = len(hit_lines) + 2 * distinct
        if len(hit_lines) >= 2 and score > best_score:
            best, best_score = lang.name, score
    return best, len(covered) / lines


class CodeDetector:
    """Finds the texts of a batch that are code and names their language.

    A text is code when language markers match at least `min_lines` of its lines and its
    code-punctuation share (see `code_punctuation_share`) is at least `min_punct`, or half of that
    when markers match most lines (Python and shell carry little punctuation).
    """

    def __init__(self, min_punct: float = 0.06, min_lines: float = 0.2):
        self.min_punct = min_punct
        self.min_lines = min_lines

    def __call__(self, texts: list[str | None] | pa.Array) -> dict[int, tuple[str, float]]:
        """{index: (`code:<lang>`, confidence)} for the texts judged to be code."""
        column = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
        multiline = np.flatnonzero(pc.fill_null(pc.match_substring(column, "\n"), False).to_numpy(zero_copy_only=False))
        if not len(multiline):
            return {}  # code is told by its lines: single-line batches cost one vectorised pass
        candidates = column.take(pa.array(multiline))
        share = code_punctuation_share(candidates)
        found: dict[int, tuple[str, float]] = {}
        for j in np.flatnonzero(share >= self.min_punct / 2):
            i = int(multiline[j])
            text = column[i].as_py()
            lang, covered = guess_language(text)
            if lang is not None and covered >= (self.min_lines if share[j] >= self.min_punct else 0.5):
                found[i] = (CODE_PREFIX + lang, min(1.0, covered))
        return found
