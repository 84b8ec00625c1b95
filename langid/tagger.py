"""fastText language tagging of lists of texts, with labels in the project's scheme.

How texts are prepared (fastText reads one line per prediction and averages n-gram vectors):
- line breaks become spaces, so a multi-line text is one input;
- a text with no letter at all (numbers, punctuation, emoji, empty) is `und` with confidence 0,
  since a model's guess there is noise;
- a text longer than `max_chars` is predicted on three windows of `max_chars / 3` characters taken
  from its start, middle and end, joined: the cost stays bounded and a long document's boilerplate
  header or footer does not decide its language alone;
- a predicted label whose script does not occur in the text at all becomes `und` (a model error,
  e.g. Mongolian-script text that lid.176 calls Chinese; Japanese needs kana in a text of 6+ Han
  characters, langid/scripts.py), except that a text Chinese by its script (6+ Han characters, no
  kana, no more other letters than Han) is Standard Chinese with confidence 1.0 wherever the model's
  label is impossible or not written in Han;
- with `detect_code`, texts that look like source code get `code:<lang>` (langid/code.py) instead of
  whatever natural language the model would have guessed;
- with `rules`, a text written in a script that names its language (Hangul, Thai, Greek...) gets it
  without the model (langid/script_rules.py);
- a regional variety (Najdi Arabic, Cantonese, Dari) keeps a text only with at least half of its
  group's probability and in a script it is written in, else the standard (Standard Arabic,
  Mandarin, Persian) takes it (langid/varieties.py; `prefer_standard`);
- with a `fallback` model, a text the main model is unsure of (below its length-aware threshold,
  langid/thresholds.py) takes the fallback's label when the fallback is sure of it and it is a
  language the main model does not know (lid.176 knows languages SIB-200 lacks, and a model says
  little about a language it never saw) or one of the main model's 3 best candidates (a second
  opinion among close languages: Modern Standard Arabic questions that the main model spreads over
  Arabic varieties), or wherever the main model's label was impossible (its script absent from the
  text). The fallback runs on the unsure texts, and on texts whose label it does not know and the
  main model gives less than `VOUCH_BELOW` (a label only one model knows, often a regional variety
  of a big language, needs more than a bare majority: XQuAD-R's Standard Arabic questions called
  Najdi Arabic at 0.5-0.7); those keep their label unless the fallback takes them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.code import CodeDetector
from langid.distinct import map_distinct
from langid.fragments import bucket_indices
from langid.labels import UNDETERMINED, LabelMapper, script_of
from langid.script_rules import rule_labels, script_rules
from langid.scripts import han_variant, mostly_han, script_present
from langid.thresholds import Thresholds, read_thresholds, table_path
from langid.varieties import CANDIDATES as VARIETY_CANDIDATES
from langid.varieties import StandardPreference

# Models shipped with the package, by the name a manifest uses.
BUNDLED_MODELS = {"lid176": "lid.176.ftz", "sib200": "sib200.ftz", "short200": "short200.ftz"}
# short200 with lid176 as fallback is the default: far better than lid176 on SIB-200 (205 languages) and
# on UDHR (out of domain) at every length, also over the languages lid176 knows; lid176 alone is better
# only on XQuAD-R's real questions in 8 big languages, a gap the `langid_prior` stage narrows (README).
DEFAULT_MODEL, DEFAULT_FALLBACK = "short200", "lid176"
FALLBACK_CANDIDATES = 3  # the fallback may pick among the main model's this many best labels
NEXT_CANDIDATES = 3  # labels after an impossible one that may take its text
JAPANESE = "jpn_Jpan"
HAN_SCRIPTS = ("Hans", "Hant", "Jpan", "Kore")  # label scripts written with Han characters
CHINESE = "cmn"  # the language of a text that is Chinese by its script (`_chinese`)
# Chosen on dev data (short200 + lid176), 0.5 / 0.7 / 0.9: XQuAD-R dev questions macro-F1 0.932 ->
# 0.954 / 0.959 / 0.960, SIB-200 dev 0.966 -> 0.964 / 0.962 / 0.955 (its varieties lose to their big
# language as the bar rises).
VOUCH_BELOW = 0.7
_LETTER = regex.compile(r"\p{L}")
WHITESPACE = regex.compile(r"\s+")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (as it was after it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def model_path(model: str) -> Path:
    """The file of a bundled model name (`lid176`, `sib200`, `short200`), or `model` itself as a path."""
    if model in BUNDLED_MODELS:
        return Path(str(resources.files("langid").joinpath("models", BUNDLED_MODELS[model])))
    return Path(model)


def load_fasttext(path: Path):
    import fasttext

    if not path.is_file():
        raise FileNotFoundError(f"fastText model not found: {path}")
    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load_model warning
    return fasttext.load_model(str(path))


def prepare(text: str | None, max_chars: int) -> str | None:
    """The single line the model sees for `text`, or None when there is nothing to identify."""
    if not text or not _LETTER.search(text):
        return None
    return _one_line(text, max_chars)


def _one_line(text: str, max_chars: int) -> str:
    """Long texts cut to three windows, line breaks joined."""
    if len(text) > max_chars:
        w = max_chars // 3
        mid = (len(text) - w) // 2
        text = " ".join((text[:w], text[mid : mid + w], text[-w:]))
    return WHITESPACE.sub(" ", text).strip() if "\n" in text or "\r" in text else text


@dataclass
class Tags:
    """What the tagger says per text: its best label (no threshold applied), the confidence, whether
    that confidence reaches the label's threshold at the text's length, and the length bucket (0 for
    every text when the model's thresholds do not depend on length)."""

    labels: list[str]
    confidence: np.ndarray
    sure: np.ndarray
    buckets: np.ndarray

    def decided(self) -> list[str]:
        """The labels with `und` where the tagger is not sure."""
        return np.where(self.sure, np.array(self.labels, dtype=object), UNDETERMINED).tolist()

    def slice(self, start: int, stop: int) -> Tags:
        """The tags of texts `start` to `stop` (a caller that tagged several lists in one call)."""
        return Tags(
            self.labels[start:stop], self.confidence[start:stop], self.sure[start:stop], self.buckets[start:stop]
        )


@dataclass
class _Distinct:
    """The distinct texts a batch needs the model for, and per distinct text: the line fastText read,
    its raw best labels (the variety check's and the fallback's candidates), the scheme label, the
    confidence, the length bucket and whether the label is sure. Work after the prediction is done
    per distinct text too (queries repeat: short ones often, within a batch too)."""

    texts: pa.Array
    lines: list[str]
    raw: list
    labels: np.ndarray
    conf: np.ndarray
    buckets: np.ndarray
    sure: np.ndarray


class LanguageTagger:
    """Loads a fastText model (and its threshold table) once and tags lists of texts."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        max_chars: int = 3000,
        detect_code: bool = True,
        rules: bool = True,
        fallback: str | None = None,
        min_confidence: float = 0.3,
        thresholds: dict[str, float] | None = None,
        prefer_standard: bool = True,
    ):
        path = model_path(model)
        self.model = load_fasttext(path)
        self.map_label = LabelMapper()
        self.max_chars = max_chars
        self.code = CodeDetector() if detect_code else None
        self.rules = rules
        self.thresholds = Thresholds(read_thresholds(table_path(path)), min_confidence, thresholds)
        same = fallback is not None and model_path(fallback).resolve() == path.resolve()
        self.fallback = (
            None
            if fallback is None or same
            else LanguageTagger(fallback, max_chars, False, False, None, min_confidence, thresholds, prefer_standard)
        )
        self.standard = StandardPreference(self.model.get_labels(), self.map_label) if prefer_standard else None
        # Labels the main prediction asks for. With a fallback, whose candidates are needed for every
        # text it is consulted on (a quarter of short texts), the variety check's come from the same
        # list, so no text is predicted twice (a longer list costs fastText little). Alone, a model
        # asks for one, and the few texts whose best label is a variety are asked again.
        self.candidates_asked = (
            max(FALLBACK_CANDIDATES, VARIETY_CANDIDATES if self.standard else 1) if self.fallback else 1
        )
        # Labels below half the uniform probability are left out of those lists: no rule acts on them,
        # and fastText then skips the logarithm it takes of every label for its top-k heap (fragments:
        # 5 labels asked for in 10% less time). The best label always reaches 1 / labels.
        self.min_probability = 0.5 / len(self.model.get_labels())
        # Every scheme label the model can produce (all scripts of multi-script labels).
        self.model_labels = {
            self.map_label.label(lang, s)
            for lang, scripts in map(self.map_label.plan, self.model.get_labels())
            for s in scripts
        }

    def covered_labels(self) -> set[str]:
        """Every scheme label this tagger can produce: its model's, its script rules' and its fallback's."""
        rules = {r.label for r in script_rules()} if self.rules else set()
        return self.model_labels | rules | (self.fallback.covered_labels() if self.fallback else set())

    def predict(self, texts: list[str | None] | pa.Array) -> tuple[list[str], np.ndarray]:
        """Label and confidence per text, no threshold applied (`und`, 0.0 where there is nothing to
        identify). Takes a list or an Arrow string array (a batch column)."""
        tags = self.tag(texts)
        return tags.labels, tags.confidence

    def tag(self, texts: list[str | None] | pa.Array) -> Tags:
        """`Tags` of each text (see the module docstring for what decides them). Python's cyclic
        garbage collector is paused meanwhile: fastText's binding returns a list per text, and the
        collector rescanned the batch's growing lists every 700 of them (9% of the stage's time on
        fragments); tagging makes no reference cycles, so nothing is left for it to find."""
        with _collector_paused():
            return self._tag(texts)

    def _tag(self, texts: list[str | None] | pa.Array) -> Tags:
        column = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(column)
        labels = np.full(n, UNDETERMINED, dtype=object)
        confidence = np.zeros(n, dtype=np.float32)
        decided = np.zeros(n, dtype=bool)  # by code detection or a script rule: no threshold
        if self.code is not None:
            for i, (label, conf) in self.code(column).items():
                labels[i], confidence[i], decided[i] = label, conf, True
        if self.rules:
            for i, label in rule_labels(column).items():
                if not decided[i]:
                    labels[i], confidence[i], decided[i] = label, 1.0, True
        # Which texts need the model, decided column-wise: a letter to identify, no decision yet.
        has_letter = pc.fill_null(pc.match_substring_regex(column, r"\pL"), False).to_numpy(zero_copy_only=False)
        todo = np.flatnonzero(has_letter & ~decided)
        # Length buckets cost a few passes over the texts: only for a length-aware threshold table.
        buckets = bucket_indices(column) if self.by_length else np.zeros(n, dtype=np.int64)
        sure = decided | ~has_letter
        if len(todo):
            encoded = column.take(pa.array(todo, pa.int64())).dictionary_encode()
            inverse = encoded.indices.to_numpy(zero_copy_only=False)
            line_buckets = np.empty(len(encoded.dictionary), dtype=np.int64)
            line_buckets[inverse] = buckets[todo]
            distinct = self._predict(encoded.dictionary, self._lines(encoded.dictionary), line_buckets)
            if self.fallback is not None:
                self._fall_back(distinct)
            labels[todo], confidence[todo], sure[todo] = (
                distinct.labels[inverse],
                distinct.conf[inverse],
                distinct.sure[inverse],
            )
        return Tags(labels.tolist(), confidence, sure, buckets)

    @property
    def by_length(self) -> bool:
        """Whether this tagger's thresholds, or its fallback's, depend on a text's length."""
        return self.thresholds.by_length or (self.fallback is not None and self.fallback.by_length)

    def _predict(self, unique: pa.Array, lines: list[str], buckets: np.ndarray) -> _Distinct:
        """The model's labels of distinct texts (`lines`: what fastText reads for each; `buckets`: their
        length buckets), with its `candidates_asked` best labels per text (the fallback's and the
        variety check's candidates; without a fallback the texts whose best label is a variety are
        asked again for the variety check's); fastText's prediction is the bulk of the stage's time."""
        # fastText's own `predict` only checks each line and appends the newline `_lines` appended.
        raw, probs = self.model.f.multilinePredict(lines, self.candidates_asked, self.min_probability, "strict")
        firsts = [r[0] for r in raw]
        if self.standard is not None:
            rows = self.standard.variety_rows(firsts) if self.candidates_asked < VARIETY_CANDIDATES else []
            if rows:
                wider = self.model.f.multilinePredict(
                    [lines[i] for i in rows], VARIETY_CANDIDATES, self.min_probability, "strict"
                )
                for i, labels, ps in zip(rows, *wider):
                    raw[i], probs[i] = labels, ps
            self.standard.apply(raw, probs, firsts)
        labels = self.map_label.many(firsts, lines)
        conf = np.minimum(np.fromiter((p[0] for p in probs), dtype=np.float64, count=len(lines)), 1.0)
        # A label whose script does not occur in the text is a model error (Mongolian script called
        # Chinese, Cyrillic mojibake called English): `und`, confidence kept for inspection. A text
        # called Japanese that cannot be (Chinese without kana, mostly) takes the model's next
        # possible label instead (most other impossible labels are lid176's English for scripts it
        # does not know, where no next label is possible either). A text that is Chinese by its
        # script takes Standard Chinese where the model's label is impossible or not written in Han.
        scripts = map_distinct(labels, script_of)
        impossible = ~script_present(unique, scripts)
        chinese = self._chinese(unique, scripts, impossible)
        not_japanese = np.flatnonzero(impossible & (labels == JAPANESE) & ~chinese)
        labels[impossible] = UNDETERMINED
        if chinese.any():
            rows = np.flatnonzero(chinese)
            labels[rows] = [
                self.map_label.label(CHINESE, han_variant(unique[i].as_py(), "Hans")) for i in rows.tolist()
            ]
            conf[rows] = 1.0
        if len(not_japanese):
            self._next_possible(unique, lines, not_japanese, labels, conf)
        if self.standard is not None:
            self.standard.written(labels)
        sure = (conf >= self.thresholds(labels, buckets)) & (labels != UNDETERMINED)
        return _Distinct(unique, lines, raw, labels, conf, buckets, sure)

    @staticmethod
    def _chinese(texts: pa.Array, scripts: pa.Array, impossible: np.ndarray) -> np.ndarray:
        """Which texts are Chinese by their script (`mostly_han`: 6+ Han characters, no kana, Han
        the majority of letters) although the model gave them a label impossible for them or not
        written in Han. Models see a Han run as one rare word and let a Latin word beside it
        decide (short200 called `密歇根州为什么组成了Merit网络` Maltese), or call such questions Japanese,
        English or Cebuano without Chinese among their 3 best labels (lid.176: 13 of XQuAD-R
        dev's 1,190 were left `und`)."""
        out = np.zeros(len(texts), dtype=bool)
        not_han = ~pc.fill_null(pc.is_in(scripts, pa.array(HAN_SCRIPTS)), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(impossible | not_han)
        if len(rows):
            out[rows] = mostly_han(texts.take(pa.array(rows, pa.int64())))
        return out

    def _next_possible(
        self, texts: pa.Array, lines: list[str], rows: np.ndarray, labels: np.ndarray, conf: np.ndarray
    ) -> None:
        """Gives each of `rows` (texts whose best label is impossible) the model's best label among
        its next `NEXT_CANDIDATES` whose script occurs in the text; the others stay `und`."""
        some = [lines[i] for i in rows.tolist()]
        raw, probs = self.model.f.multilinePredict(some, NEXT_CANDIDATES + 1, 0.0, "strict")
        owner, candidates = self._mapped([cands[1:] for cands in raw], some)
        ok = script_present(texts.take(pa.array(rows[owner], pa.int64())), map_distinct(candidates, script_of)) & (
            candidates != UNDETERMINED
        )
        first, at = np.unique(owner[ok], return_index=True)  # each row's first possible candidate
        chosen = np.flatnonzero(ok)[at]
        labels[rows[first]] = candidates[chosen]
        p = np.fromiter((pr for ps in probs for pr in ps[1:]), dtype=np.float64, count=len(owner))
        conf[rows[first]] = np.minimum(p[chosen], 1.0)

    def _mapped(self, raw: list[list[str]], lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every raw label of `raw` (one list per line of `lines`) in the scheme, flattened: the index of
        its line and its label, mapped per distinct raw label (`LabelMapper.many`)."""
        owner = np.fromiter((j for j, labels in enumerate(raw) for _ in labels), dtype=np.int64)
        return owner, self.map_label.many([r for labels in raw for r in labels], [lines[j] for j in owner.tolist()])

    def _lines(self, texts: pa.Array) -> list[str]:
        """The line fastText reads for each text, newline-terminated as its `predict` would send it.
        Built column-wise: only texts that are too long or span lines are rewritten in Python (the
        per-text Python of fastText's wrapper was a tenth of the stage's time on short texts)."""
        special = pc.or_(pc.greater(pc.utf8_length(texts), self.max_chars), pc.match_substring_regex(texts, "[\r\n]"))
        lines = pc.binary_join_element_wise(texts, "\n", "").to_pylist()
        for i in np.flatnonzero(pc.fill_null(special, False).to_numpy(zero_copy_only=False)).tolist():
            lines[i] = _one_line(texts[i].as_py(), self.max_chars) + "\n"
        return lines

    def _fall_back(self, distinct: _Distinct) -> None:
        """The distinct texts the fallback is consulted on (the unsure ones, and those whose label it
        does not know held below `VOUCH_BELOW`) take its label where it is sure of it and it is new
        to the model, among the model's best candidates, or the model's label was impossible (see
        the module docstring); the others keep theirs. Decided column-wise: the model's candidates
        are mapped per distinct raw label (a per-text loop was a tenth of the stage's time on
        fragments)."""
        known = self.fallback.model_labels
        unknown = np.fromiter((label not in known for label in distinct.labels), dtype=bool, count=len(distinct.labels))
        ask = np.flatnonzero(~distinct.sure | ((distinct.conf < VOUCH_BELOW) & unknown))
        if not len(ask):
            return
        lines = [distinct.lines[u] for u in ask.tolist()]
        other = self.fallback._predict(distinct.texts.take(pa.array(ask, pa.int64())), lines, distinct.buckets[ask])
        theirs = other.labels
        new = np.fromiter((label not in self.model_labels for label in theirs), dtype=bool, count=len(theirs))
        owner, mapped = self._mapped([distinct.raw[u][:FALLBACK_CANDIDATES] for u in ask.tolist()], lines)
        # the fallback's label is one of the model's best
        among = np.bincount(owner, weights=mapped == theirs[owner], minlength=len(ask)) > 0
        take = other.sure & ((distinct.labels[ask] == UNDETERMINED) | new | among)
        rows = ask[take]
        distinct.labels[rows], distinct.conf[rows], distinct.sure[rows] = theirs[take], other.conf[take], True

    def candidates(self, texts: list[str], k: int = 5) -> list[dict[str, float]]:
        """The model's `k` best labels per text with their probabilities (for the pair-context rule
        and the prior), mapped per distinct raw label; where two raw labels map to one, the more
        probable stands."""
        lines = [_one_line(t, self.max_chars) + "\n" for t in texts]
        raw, probs = self.model.f.multilinePredict(lines, k, 0.0, "strict")
        owner, mapped = self._mapped(raw, lines)
        out: list[dict[str, float]] = [{} for _ in texts]
        for j, label, p in zip(owner.tolist(), mapped.tolist(), (p for ps in probs for p in ps)):
            out[j].setdefault(label, min(float(p), 1.0))
        return out
