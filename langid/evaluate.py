"""Accuracy, macro-F1, per-language precision/recall and confusions of a tagger on labelled text.

Gold and predicted labels both go through `canonical` (so FLORES' `zho_Hans` and lid.176's `zh`
meet as `cmn_Hans`). A gold label without a script (UDHR's file names) is compared on the language
only, and a prediction is counted at the granularity of the gold labels on both sides: `bos_Latn`
said of a Croatian (`hrv`) text is a miss for `hrv` and a false `bos` where `bos` is a gold label,
so a script-less label's precision is as honest as a scripted one's. Figures are given over every
text and over the texts whose language the model covers, since a model cannot be right about a
language it has no label for. They are also given per length bucket (words: 1, 2, 3-5, 6-15, 16+;
see `langid/fragments.py` for words in unspaced scripts), since a model that is right on sentences
can still fail on queries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import compress

import pyarrow as pa

from langid.corpora import Labelled
from langid.fragments import BUCKET_NAMES, bucket_index, bucket_indices
from langid.labels import CODE_PREFIX, canonical, language_of
from langid.prior import COUNTED_FROM, CorpusPrior, revise
from langid.tagger import LanguageTagger


def _as_gold(gold: str, predicted: str, classes: set[str]) -> str:
    """The prediction at the granularity of the gold labels: the gold label itself where it names
    the same language (a script-less gold), else the gold class it falls in (itself, or its
    language where only the script-less label is gold), else itself."""
    if "_" not in gold and language_of(predicted) == gold:
        return gold
    if predicted in classes:
        return predicted
    language = language_of(predicted)
    return language if language in classes else predicted


@dataclass
class Report:
    n: int
    accuracy: float
    macro_f1: float
    covered_n: int
    covered_accuracy: float
    covered_macro_f1: float
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)
    # bucket -> {n, accuracy, macro_f1, covered_n, covered_accuracy, covered_macro_f1}
    buckets: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.__dict__, "confusions": [{"gold": g, "predicted": p, "count": c} for g, p, c in self.confusions]}


def score(gold: list[str], predicted: list[str], covered: set[str]) -> Report:
    """The report for parallel lists of gold and predicted labels (both canonicalised here)."""
    gold = [canonical(g) for g in gold]
    predicted = [canonical(p) for p in predicted]
    covered_langs = {language_of(c) for c in covered}
    is_covered = [(g in covered) if "_" in g else (g in covered_langs) for g in gold]
    classes = set(gold)
    as_gold = [_as_gold(g, p, classes) for g, p in zip(gold, predicted)]

    def f1_table(idx: list[int]) -> tuple[float, float, dict[str, dict[str, float]]]:
        tp, gold_n, pred_n = Counter(), Counter(), Counter()
        for i in idx:
            gold_n[gold[i]] += 1
            pred_n[as_gold[i]] += 1
            tp[gold[i]] += as_gold[i] == gold[i]
        table = {}
        for lang in sorted(gold_n):
            p = tp[lang] / pred_n[lang] if pred_n[lang] else 0.0
            r = tp[lang] / gold_n[lang]
            table[lang] = {"n": gold_n[lang], "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
        acc = sum(tp.values()) / len(idx) if idx else 0.0
        macro = sum(v["f1"] for v in table.values()) / len(table) if table else 0.0
        return acc, macro, table

    everything = list(range(len(gold)))
    covered_idx = [i for i in everything if is_covered[i]]
    acc, macro, table = f1_table(everything)
    c_acc, c_macro, _ = f1_table(covered_idx)
    for lang in table:
        table[lang]["covered"] = float(lang in covered or lang in covered_langs)
    confusions = Counter((gold[i], predicted[i]) for i in covered_idx if as_gold[i] != gold[i])
    return Report(
        n=len(gold),
        accuracy=acc,
        macro_f1=macro,
        covered_n=len(covered_idx),
        covered_accuracy=c_acc,
        covered_macro_f1=c_macro,
        per_language=table,
        confusions=[(g, p, c) for (g, p), c in confusions.most_common(25)],
        not_covered=sorted({g for g, c in zip(gold, is_covered) if not c}),
    )


def score_by_bucket(texts: list[str], gold: list[str], predicted: list[str], covered: set[str]) -> Report:
    """`score` over everything, plus the same figures per length bucket of the texts."""
    report = score(gold, predicted, covered)
    buckets = bucket_indices(pa.array(texts, pa.string()))
    for b, name in enumerate(BUCKET_NAMES):
        idx = [i for i in range(len(texts)) if buckets[i] == b]
        if idx:
            part = score([gold[i] for i in idx], [predicted[i] for i in idx], covered)
            report.buckets[name] = {
                k: getattr(part, k)
                for k in ("n", "accuracy", "macro_f1", "covered_n", "covered_accuracy", "covered_macro_f1")
            }
    return report


def evaluate(
    tagger: LanguageTagger, data: Labelled, batch: int = 4096, prior: float | None = None, prior_longest: int = 3
) -> tuple[Report, list[str]]:
    """Tag `data` with `tagger` (no confidence threshold) and score it, overall and per length
    bucket; also returns the predictions. With `prior` (its `max_odds`), texts of at most the
    `prior_longest` bucket are revised with the set's own language distribution (the sure labels of
    its texts of `COUNTED_FROM` words or more) as the prior, as the `langid_prior` stage does per
    source (`langid/prior.py`)."""
    predicted: list[str] = []
    decided: list[str] = []  # `und` below the thresholds: what the stage hands `langid_prior`
    confidence: list[float] = []
    for start in range(0, len(data), batch):
        tags = tagger.tag(data.texts[start : start + batch])
        predicted += tags.labels
        decided += tags.decided()
        confidence += tags.confidence.tolist()
    gold = [g for g in data.labels]
    covered = tagger.covered_labels()
    if prior is not None:
        reliable = bucket_indices(pa.array(data.texts, pa.string())) >= bucket_index(COUNTED_FROM)
        corpus = CorpusPrior.counted(
            CorpusPrior.counts_of(compress(decided, reliable)), CorpusPrior.counts_of(decided), prior
        )
        for i, (label, _) in revise(
            tagger, data.texts, decided, confidence, [corpus] * len(data), prior_longest
        ).items():
            predicted[i] = label
    if any(g.startswith(CODE_PREFIX) for g in gold):
        covered |= {g for g in gold if g.startswith(CODE_PREFIX)}
    return score_by_bucket(data.texts, gold, predicted, covered), predicted
