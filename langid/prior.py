"""A corpus's own language distribution as the prior for its short texts.

A short query is ambiguous between neighbouring languages (Spanish or Asturian, Hindi or Bhojpuri,
Standard Arabic or its varieties) that a model trained on language-balanced data cannot tell apart;
the corpus it comes from can: a source whose texts are Spanish asks Spanish questions. The prior is
each label's share of the source's sure labels, add-one smoothed (a language the source has not
shown keeps a chance), counted on its texts of `COUNTED_FROM` words or more where it has at least
`MIN_COUNTED` of them: the model reads those reliably, while its errors on short texts would vote
for themselves (short200 calls 68 of XQuAD-R dev's short Spanish questions Asturian). A text takes
the label that maximises the model's probability x the prior among its best candidates when that
label holds at least `share` of the candidates' weighted mass (Bayes' rule: the model was trained
with every language alike). The prior's odds between two labels are capped at
`max_odds`, so a text the model is surer of than that keeps its label however rare its language is
in the source. A balanced corpus gives a flat prior and changes little; no outside language
frequencies are needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.distinct import map_distinct
from langid.fragments import BUCKETS, bucket_indices
from langid.labels import CODE_PREFIX, UNDETERMINED, is_language, script_of
from langid.scripts import script_present
from langid.tagger import LanguageTagger

# The prior is counted on texts of this length bucket or longer, where a source has MIN_COUNTED of them
# (else on all its sure labels). Chosen on XQuAD-R dev questions and fragments (eval --prior, short200
# + lid176; macro-F1): every length 0.927, 3 words or more 0.939, 6 or more 0.941.
COUNTED_FROM = "6-15"
MIN_COUNTED = 100
CANDIDATES = 20  # the model's best labels that compete (5 left Spanish out behind Asturian, Lombard...)
# A text of more characters than this a word, at the longest bucket revised, is longer than that bucket
# (no language's words are that long on average): its words are not counted (a long passage's are costly).
CHARS_PER_WORD = 40
_LETTER = regex.compile(r"\pL")


def language_mask(labels: pa.Array) -> pa.Array:
    """`is_language`, column-wise (the labels of a batch)."""
    return pc.fill_null(
        pc.and_(pc.not_equal(labels, UNDETERMINED), pc.invert(pc.starts_with(labels, CODE_PREFIX))), False
    )


@dataclass(frozen=True)
class CorpusPrior:
    counts: Mapping[str, int]  # sure labels of the corpus (a source), `is_language` ones only
    max_odds: float = 100.0  # the most the prior may favour one label over another (>= 1)

    @classmethod
    def of(cls, labels: Iterable[str | None], max_odds: float = 100.0) -> CorpusPrior:
        return cls(cls.counts_of(labels), max_odds)

    @staticmethod
    def counts_of(labels: Iterable[str | None]) -> Counter:
        return Counter(label for label in labels if is_language(label))

    @classmethod
    def counted(cls, reliable: Mapping[str, int], every: Mapping[str, int], max_odds: float = 100.0) -> CorpusPrior:
        """The prior from the sure labels of a source's texts of `COUNTED_FROM` words or more
        (`reliable`), or from all of them (`every`) where fewer than `MIN_COUNTED` texts are that long."""
        return cls(reliable if sum(reliable.values()) >= MIN_COUNTED else every, max_odds)

    def __post_init__(self) -> None:
        if self.max_odds < 1:
            raise ValueError(f"max_odds must be at least 1, not {self.max_odds}")

    @cached_property
    def _floor(self) -> float:
        """Add-one smoothed counts below this are raised to it (the odds cap)."""
        return (max(self.counts.values(), default=0) + 1) / self.max_odds

    @cached_property
    def _weights(self) -> dict[str, float]:
        return {label: max(n + 1, self._floor) for label, n in self.counts.items()}

    def weight(self, label: str) -> float:
        """The label's prior, up to a constant factor (only ratios matter); a label that is not a
        language (`und`, code) or that the source has not shown has the floor."""
        return self._weights.get(label, self._floor)

    def settled(self, current: str | None, confidence: float) -> bool:
        """A text its tagger gave a language with at least max_odds/(1 + max_odds) confidence (99% at
        100; a script rule's 1.0) keeps it: the rule's promise that the prior never overturns a label
        the model is that sure of. For the model's own label this follows from the cap (the others
        hold at most 1/max_odds of its probability); for a fallback's or a group's label it is the
        rule. Most texts are settled, and need no second prediction."""
        return is_language(current) and (1.0 - confidence) * self.max_odds <= confidence

    def decide(
        self,
        candidates: Mapping[str, float],
        current: str,
        confidence: float,
        share: float = 0.5,
        impossible: float = 0.0,
    ) -> tuple[str, float] | None:
        """The label a text takes instead of `current` (and the model's probability of it), or None
        to keep `current`. `candidates` are the model's best labels with their probabilities;
        `current` (the tagger's label, perhaps from a fallback model or a script rule) competes with
        them at `confidence`. The new label needs `share` of the weighted mass, counting the model's
        probability outside the candidates' languages (other labels, `und`) at the floor, so one
        improbable candidate cannot win alone, except the `impossible` mass: that of labels known to
        be wrong (their script is not in the text). A tie keeps `current`."""
        if self.settled(current, confidence):
            return None
        options = {label: p for label, p in candidates.items() if is_language(label)}
        if is_language(current):
            options[current] = max(options.get(current, 0.0), confidence)
        weighted = {label: p * self.weight(label) for label, p in options.items()}
        rest = max(0.0, 1.0 - sum(options.values()) - impossible) * self._floor
        total = sum(weighted.values()) + rest
        if not weighted or not total:
            return None
        best = max(sorted(weighted), key=weighted.__getitem__)  # sorted: ties go the same way every run
        if best == current or weighted[best] <= weighted.get(current, 0.0) or weighted[best] < share * total:
            return None
        return best, options[best]


def revise(
    tagger: LanguageTagger,
    texts: Sequence[str | None],
    labels: Sequence[str | None],
    confidence: Sequence[float],
    priors: Sequence[CorpusPrior | None],
    longest: int,
    candidates: int = CANDIDATES,
    share: float = 0.5,
) -> dict[int, tuple[str, float]]:
    """The texts of at most `longest` (a length bucket's index) whose label the prior changes: index ->
    (label, the model's probability of it). Left alone: a text without a prior, without a letter (the
    tagger does not identify those either), tagged as code, or settled (`CorpusPrior.settled`). As in
    the tagger, a candidate whose script does not occur in the text is not a candidate, and its
    probability is set aside (a pure-Han question lid176 calls English is not English)."""
    too_long = CHARS_PER_WORD * BUCKETS[longest][2]
    rows = [
        i
        for i, (text, label, prior) in enumerate(zip(texts, labels, priors))
        if text
        and len(text) <= too_long
        and prior is not None
        and not (label or "").startswith(CODE_PREFIX)
        and not prior.settled(label, float(confidence[i]))
        and _LETTER.search(text)
    ]
    if rows:  # lengths only for the texts left: counting words is the costly part
        buckets = bucket_indices(pa.array([texts[i] for i in rows], pa.string()))
        rows = [i for i, bucket in zip(rows, buckets.tolist()) if bucket <= longest]
    best = tagger.candidates([texts[i] for i in rows], candidates) if rows else []  # type: ignore[misc]
    pairs = [(j, label) for j, options in enumerate(best) for label in options if is_language(label)]
    possible = (
        script_present(
            pa.array([texts[rows[j]] for j, _ in pairs], pa.string()),
            map_distinct([label for _, label in pairs], script_of),
        )
        if pairs
        else []
    )
    impossible = {pair for pair, ok in zip(pairs, possible) if not ok}
    changed = {}
    for j, (i, options) in enumerate(zip(rows, best)):
        wrong = sum(p for label, p in options.items() if (j, label) in impossible)
        options = {label: p for label, p in options.items() if (j, label) not in impossible}
        decision = priors[i].decide(options, labels[i] or UNDETERMINED, float(confidence[i]), share, wrong)  # type: ignore[union-attr]
        if decision is not None:
            changed[i] = decision
    return changed
