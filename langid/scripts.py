"""Decide a text's script among a few candidates, for labels that do not say (Serbian, Chinese...)."""

from __future__ import annotations

import regex

# Unicode script property per ISO 15924 code; `regex` knows the Unicode tables, so we need no ranges.
_SCRIPT_PATTERNS = {
    "Latn": regex.compile(r"\p{Script=Latin}"),
    "Cyrl": regex.compile(r"\p{Script=Cyrillic}"),
    "Arab": regex.compile(r"\p{Script=Arabic}"),
    "Deva": regex.compile(r"\p{Script=Devanagari}"),
    "Guru": regex.compile(r"\p{Script=Gurmukhi}"),
    "Mong": regex.compile(r"\p{Script=Mongolian}"),
}

# Frequent characters whose simplified and traditional forms differ. Unicode gives both forms the
# script "Han", so the variant is told apart by which of these the text uses.
_SIMPLIFIED = set("们这国说时会来为个对学发过还没进经动问见长门马车东两开关书电话钱买卖让认识语读写汉产业实现种应该头岁给听觉儿")
_TRADITIONAL = set("們這國說時會來為個對學發過還沒進經動問見長門馬車東兩開關書電話錢買賣讓認識語讀寫漢產業實現種應該頭歲給聽覺兒")


def han_variant(text: str, default: str) -> str:
    """`Hans` or `Hant` by counting variant-specific characters; `default` when neither is seen."""
    simplified = sum(ch in _SIMPLIFIED for ch in text)
    traditional = sum(ch in _TRADITIONAL for ch in text)
    if simplified == traditional:
        return default
    return "Hans" if simplified > traditional else "Hant"


def dominant_script(text: str, candidates: tuple[str, ...]) -> str:
    """The candidate script with the most characters in `text`; the first candidate on a tie."""
    if set(candidates) <= {"Hans", "Hant"}:
        return han_variant(text, candidates[0])
    best, best_count = candidates[0], 0
    for script in candidates:
        pattern = _SCRIPT_PATTERNS.get(script)
        count = len(pattern.findall(text)) if pattern else 0
        if count > best_count:
            best, best_count = script, count
    return best
