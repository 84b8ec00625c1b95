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
    """{index: label} for the texts of an Arrow string column that a script rule decides: the first
    rule of the table whose script has its share of the text's letters. One vectorised pass finds
    the texts with any rule script at all; those are counted together, as arrays of code points
    (each distinct character is classified once: a regex count per text and rule cost 30 us a
    sentence, more than the model's prediction of it)."""
    rules = script_rules()
    any_rule = "[" + "".join(rf"\p{{{r.script}}}" for r in rules) + "]"
    hits = np.flatnonzero(pc.fill_null(pc.match_substring_regex(texts, any_rule), False).to_numpy(zero_copy_only=False))
    if not len(hits):
        return {}
    candidates = texts.take(pa.array(hits, pa.int64()))
    points = np.frombuffer("".join(candidates.to_pylist()).encode("utf-32-le"), dtype=np.uint32)
    owner = np.repeat(np.arange(len(hits)), pc.utf8_length(candidates).to_numpy(zero_copy_only=False))
    seen, at = np.unique(points, return_inverse=True)
    rule_of = np.full(len(seen), len(rules), dtype=np.int64)  # len(rules): no rule's script
    letter = np.zeros(len(seen), dtype=bool)
    for j, point in enumerate(seen.tolist()):
        rule_of[j], letter[j] = _classify(point)
    letters = np.bincount(owner, weights=letter[at], minlength=len(hits))
    found = np.bincount(owner * (len(rules) + 1) + rule_of[at], minlength=len(hits) * (len(rules) + 1)).reshape(
        len(hits), -1
    )[:, :-1]
    shares = np.array([r.min_share for r in rules])
    passes = (found > 0) & (found >= shares * letters[:, None])
    first = passes.argmax(axis=1)
    return {i: rules[k].label for i, k, ok in zip(hits.tolist(), first.tolist(), passes.any(axis=1).tolist()) if ok}


@lru_cache(maxsize=None)
def _classify(point: int) -> tuple[int, bool]:
    """(index of the rule whose script the character is written in, or the number of rules for
    none; whether it is a letter). Unicode scripts are disjoint, so one rule at most."""
    ch = chr(point)
    rules = script_rules()
    return next((k for k, rule in enumerate(rules) if rule.pattern.match(ch)), len(rules)), bool(_LETTER.match(ch))
