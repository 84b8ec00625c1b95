"""How long a text is, in a unit that means the same in every script.

Where a script separates words with spaces (Latin, Cyrillic, Arabic, Devanagari...), a word is a run
of letters, digits and marks, counted column-wise in Arrow. Where it does not (Thai, Lao, Khmer,
Myanmar, Tibetan, Chinese, Japanese), that rule would see one giant word, so the text is cut into
words by the tokenizer datatrove assigns to its language (pythainlp, KhmerNLTK, spaCy's Japanese...,
`datatrove.utils.word_tokenizers`; Chinese needs `jieba`, in the `word-tokenizers` extra), where it is
installed and works offline; a language without one counts its characters.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ops.minhash import UNSPACED, tokens

# Our label's script -> datatrove's (its tokenizer table names Chinese `cmn_Hani`, `zho_Hani`).
_DATATROVE_SCRIPT = {"Hans": "Hani", "Hant": "Hani"}
# Our labels for languages its table knows under their macrolanguage's code.
_DATATROVE_CODE = {"pes": "fas", "prs": "fas", "tgl": "fil", "zsm": "msa", "cmn": "zho"}


@lru_cache(maxsize=512)
def word_tokenizer(label: str | None) -> Any | None:
    """datatrove's word tokenizer for a label (`tha_Thai`), if it has one that loads and works here."""
    if not label or "_" not in label:
        return None
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    _quiet_tokenizer_logs()
    language, _, script = label.partition("_")
    codes = [f"{language}_{_DATATROVE_SCRIPT.get(script, script)}", language]
    if language in _DATATROVE_CODE:
        codes.append(_DATATROVE_CODE[language])
    for code in codes:
        try:
            tokenizer = load_word_tokenizer(code)
            tokenizer.word_tokenize("ok")  # a missing library or model fails here, not mid-batch
            return tokenizer
        except Exception:  # noqa: BLE001 (no assignment, a missing package, a model that is not on disk)
            continue
    return None


@lru_cache(maxsize=1)
def multilingual_tokenizer() -> Any:
    """datatrove's tokenizer for languages it has no rules for (spaCy's `xx`: spaces and punctuation),
    right for any script written with spaces."""
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    return SpaCyTokenizer("xx")


# Loggers of word-tokenizer packages that announce at INFO/DEBUG, on stderr, each model they load
# (jieba's dictionary, khmer-nltk's CRF model): noise in a run. They set their own levels when
# imported, so a filter on the logger (which stays) keeps only their warnings.
_CHATTY_LOGGERS = ("jieba", "khmer-nltk")


@lru_cache(maxsize=1)
def _quiet_tokenizer_logs() -> None:
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)


def unspaced(texts: pa.Array) -> np.ndarray:
    """Per text, whether most of its characters are of a script written without spaces."""
    texts = pc.fill_null(texts, "")
    letters = np.maximum(pc.utf8_length(texts).to_numpy(zero_copy_only=False), 1)
    return pc.count_substring_regex(texts, f"[{UNSPACED}]").to_numpy(zero_copy_only=False) * 2 > letters


def word_counts(texts: pa.Array, labels: pa.Array) -> np.ndarray:
    """Words per text (see the module docstring); `labels` are the texts' languages (`tha_Thai`)."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    split, _ = tokens(texts, "words")
    counts = pc.fill_null(pc.list_value_length(split), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    by_script = unspaced(texts)
    if by_script.any():
        chars, _ = tokens(texts.filter(pa.array(by_script)), "chars")
        counts[by_script] = pc.fill_null(pc.list_value_length(chars), 0).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(by_script)
        label_list = labels.to_pylist() if labels is not None else [None] * len(texts)
        for label in {label_list[r] for r in rows}:
            tokenizer = word_tokenizer(label)
            if tokenizer is not None:
                mine = [r for r in rows if label_list[r] == label]
                counts[mine] = [len(tokenizer.word_tokenize(t)) for t in texts.take(pa.array(mine)).to_pylist()]
    return counts
