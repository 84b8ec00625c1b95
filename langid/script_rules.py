"""Script rules ahead of the statistical model: a text written in a script that names its language
(Hangul, Thai, Greek...; the table is `langid/data/script_rules.tsv`) gets that language with
confidence 1.0. A model can only lose there, most on short texts: a single Hangul word has few
character n-grams the model has seen, but its script alone says Korean.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.labels import read_table

_LETTER = regex.compile(r"\p{L}")


@dataclass(frozen=True)
class ScriptRule:
    script: str  # Unicode script name, as `regex` and RE2 spell it
    label: str
    min_share: float  # of the text's letters
    pattern: regex.Pattern


@lru_cache(maxsize=None)
def script_rules() -> tuple[ScriptRule, ...]:
    return tuple(
        ScriptRule(r["script"], r["label"], float(r["min_share"]), regex.compile(rf"\p{{Script={r['script']}}}"))
        for r in read_table("script_rules.tsv")
    )


def rule_labels(texts: pa.Array) -> dict[int, str]:
    """{index: label} for the texts of an Arrow string column that a script rule decides. One
    vectorised pass finds the texts with any rule script at all; only those are counted in Python."""
    rules = script_rules()
    any_rule = "[" + "".join(rf"\p{{{r.script}}}" for r in rules) + "]"
    hits = pc.fill_null(pc.match_substring_regex(texts, any_rule), False).to_numpy(zero_copy_only=False)
    out: dict[int, str] = {}
    for i in np.flatnonzero(hits).tolist():
        text = texts[i].as_py()
        letters = len(_LETTER.findall(text))
        for rule in rules:
            found = len(rule.pattern.findall(text))
            if found and found >= rule.min_share * letters:
                out[i] = rule.label
                break
    return out
