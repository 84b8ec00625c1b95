"""Words of a text, its length bucket, and fragments cut from labelled text (1, 2, 3-5 words...).

Short texts (queries, titles) are what language ID gets wrong, so training, threshold calibration and
evaluation all look at texts by length in words. "Word" needs a rule for scripts that do not put
spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan): there a whitespace token is cut
into units of a few user-perceived characters (grapheme clusters, so a Thai or Khmer vowel sign stays
with its consonant): 2 for Han and kana (a Chinese word is 1.5-2 characters on average), 3 for the
Southeast Asian scripts and Tibetan (a Thai word is 3-4 graphemes, a Tibetan syllable about 3). One
unit then counts as one word, for cutting fragments and for length buckets alike.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.corpora import Labelled

# Length buckets in words: (name, fewest words, most words).
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 0, 1),
    ("2", 2, 2),
    ("3-5", 3, 5),
    ("6-15", 6, 15),
    ("16+", 16, 1 << 30),
)
BUCKET_NAMES = tuple(name for name, _, _ in BUCKETS)
# Graphemes per word unit in scripts written without spaces between words.
_UNSPACED_UNIT = {"Han": 2, "Hiragana": 2, "Katakana": 2, "Thai": 3, "Lao": 3, "Khmer": 3, "Myanmar": 3, "Tibetan": 3}
_UNSPACED_CLASS = "[" + "".join(rf"\p{{{s}}}" for s in _UNSPACED_UNIT) + "]"
_UNSPACED = regex.compile(_UNSPACED_CLASS)
_SCRIPT_OF = [(regex.compile(rf"\p{{Script={s}}}"), n) for s, n in _UNSPACED_UNIT.items()]
_TOKEN = regex.compile(r"\S+")
_GRAPHEME = regex.compile(r"\X")
_EDGE_PUNCT = regex.compile(r"^[\p{P}\p{S}]+|[\p{P}\p{S}]+$")
# A text this long is in the longest bucket whatever its script (16 units of 3 graphemes < 200).
_SURELY_LONG = 200


def _unit_size(token: str) -> int:
    for pattern, size in _SCRIPT_OF:
        if pattern.search(token):
            return size
    return 1


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of `text`: whitespace tokens, and in unspaced scripts chunks of a
    few graphemes (see the module docstring)."""
    spans = []
    for token in _TOKEN.finditer(text):
        if not _UNSPACED.search(token.group()):
            spans.append(token.span())
            continue
        size = _unit_size(token.group())
        graphemes = [m.span() for m in _GRAPHEME.finditer(text, token.start(), token.end())]
        for i in range(0, len(graphemes), size):
            chunk = graphemes[i : i + size]
            spans.append((chunk[0][0], chunk[-1][1]))
    return spans


def word_count(text: str) -> int:
    """`len(word_spans(text))`, without building the spans (length buckets count every batch's
    unspaced texts)."""
    count = 0
    for token in _TOKEN.findall(text):
        count += -(-len(_GRAPHEME.findall(token)) // _unit_size(token)) if _UNSPACED.search(token) else 1
    return count


def bucket_of(words: int) -> str:
    for name, low, high in BUCKETS:
        if low <= words <= high:
            return name
    return BUCKETS[-1][0]


@lru_cache(maxsize=None)
def bucket_index(name: str) -> int:
    return BUCKET_NAMES.index(name)


def bucket_indices(texts: pa.Array) -> np.ndarray:
    """Length bucket (index into BUCKETS) per text of an Arrow string column: whitespace tokens
    counted vectorised (splitting the trimmed texts: 4x faster than counting a regex's matches);
    only short texts with unspaced scripts are cut in Python."""
    trimmed = pc.ascii_trim_whitespace(texts)
    tokens = pc.if_else(
        pc.equal(pc.binary_length(trimmed), 0), 0, pc.list_value_length(pc.ascii_split_whitespace(trimmed))
    )
    tokens = pc.fill_null(tokens, 0).to_numpy(zero_copy_only=False)
    out = np.searchsorted(np.array([high for _, _, high in BUCKETS]), tokens)
    unspaced = pc.fill_null(pc.match_substring_regex(texts, _UNSPACED_CLASS), False).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)
    out[unspaced & (lengths >= _SURELY_LONG)] = len(BUCKETS) - 1
    for i in np.flatnonzero(unspaced & (lengths < _SURELY_LONG)).tolist():
        out[i] = bucket_index(bucket_of(word_count(texts[i].as_py())))
    return out


def fragments(text: str, words: int, count: int, rng: random.Random) -> list[str]:
    """Up to `count` distinct fragments of `words` consecutive words from random places in `text`,
    with punctuation and symbols at their ends removed (a query rarely starts with a comma)."""
    spans = word_spans(text)
    starts = list(range(len(spans) - words + 1))
    rng.shuffle(starts)
    out: list[str] = []
    for s in starts:
        piece = _EDGE_PUNCT.sub("", text[spans[s][0] : spans[s + words - 1][1]])
        if piece and piece not in out and regex.search(r"\p{L}", piece):
            out.append(piece)
        if len(out) == count:
            break
    return out


# What `cut` makes by default: (words per fragment, fragments per text); 3-5 means one of 3, 4, 5.
DEFAULT_SIZES: tuple[tuple[int | tuple[int, int], int], ...] = ((1, 2), (2, 2), ((3, 5), 1))
# Fragments per dev text (choosing settings, calibrating thresholds, `eval --fragments`): more than
# for training, so that each label has enough texts per length bucket.
DEV_SIZES: tuple[tuple[int | tuple[int, int], int], ...] = ((1, 3), (2, 3), ((3, 5), 2))


def cut(
    data: Labelled, sizes: tuple[tuple[int | tuple[int, int], int], ...] = DEFAULT_SIZES, seed: int = 0
) -> Labelled:
    """Fragments of every text in `data`, labelled as their text: for each (words, per_text) in
    `sizes`, `per_text` fragments of that many words (a (low, high) pair: a random length in it).
    Seeded, so training and evaluation sets are reproducible."""
    rng = random.Random(seed)
    out = Labelled([], [])
    for text, label in zip(data.texts, data.labels):
        for words, per_text in sizes:
            n = rng.randint(*words) if isinstance(words, tuple) else words
            pieces = fragments(text, n, per_text, rng)
            out.extend(Labelled(pieces, [label] * len(pieces)))
    return out
