"""`pipeline/stages/data/length_ratios.tsv`: how long a language's text is against the same English
text, in characters (the median over SIB-200's train sentences, which FLORES gives in every language
as translations of one English set), per language and per script. The `length_ratio` pair filter
compares a bitext row's two sides against this, so a translation into a language written with
fewer, denser characters (Chinese) or more (Tamil) is not taken for a mismatch.

    python -m pipeline.tools.length_ratios ../shared/data/sib200-train-dev.tar.xz
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from langid.corpora import sib200
from langid.labels import canonical, script_of
from pipeline.ops.pair_filters import RATIOS


def ratios(archive: str) -> dict[str, float]:
    data = sib200(archive, "train")
    by_language: dict[str, list[str]] = {}
    for text, label in zip(data.texts, data.labels):
        by_language.setdefault(canonical(label), []).append(text)  # the same order in every language: parallel
    english = by_language["eng_Latn"]
    table = {
        label: statistics.median(len(t) / max(len(e), 1) for t, e in zip(texts, english))
        for label, texts in by_language.items()
    }
    scripts: dict[str, list[float]] = {}
    for label, ratio in table.items():
        scripts.setdefault(f"*_{script_of(label)}", []).append(ratio)
    return {**dict(sorted(table.items())), **{s: statistics.median(v) for s, v in sorted(scripts.items())}}


def main(archive: str, out: Path = RATIOS) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["language\tchars_per_english_char"] + [f"{label}\t{ratio:.3f}" for label, ratio in ratios(archive).items()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
