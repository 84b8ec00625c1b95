"""fastText language tagging of lists of texts, with labels in the project's scheme.

How texts are prepared (fastText reads one line per prediction and averages n-gram vectors):
- line breaks become spaces, so a multi-line text is one input;
- a text with no letter at all (numbers, punctuation, emoji, empty) is `und` with confidence 0,
  since a model's guess there is noise;
- a text longer than `max_chars` is predicted on three windows of `max_chars / 3` characters taken
  from its start, middle and end, joined: the cost stays bounded and a long document's boilerplate
  header or footer does not decide its language alone;
- a predicted label whose script does not occur in the text at all becomes `und` (a model error,
  e.g. Mongolian-script text that lid.176 calls Chinese);
- with `detect_code`, texts that look like source code get `code:<lang>` (langid/code.py) instead of
  whatever natural language the model would have guessed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from langid.code import CodeDetector
from langid.labels import UNDETERMINED, LabelMapper
from langid.scripts import script_present

# Models shipped with the package, by the name a manifest uses.
BUNDLED_MODELS = {"lid176": "lid.176.ftz", "sib200": "sib200.ftz"}
_LETTER = regex.compile(r"\p{L}")
WHITESPACE = regex.compile(r"\s+")


def model_path(model: str) -> Path:
    """The file of a bundled model name (`lid176`, `sib200`), or `model` itself as a path."""
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


class LanguageTagger:
    """Loads a fastText model once and tags lists of texts with (label, confidence)."""

    def __init__(self, model: str = "lid176", max_chars: int = 3000, detect_code: bool = True):
        self.model = load_fasttext(model_path(model))
        self.map_label = LabelMapper()
        self.max_chars = max_chars
        self.code = CodeDetector() if detect_code else None

    def predict(self, texts: list[str | None] | pa.Array) -> tuple[list[str], np.ndarray]:
        """Label and confidence per text (`und`, 0.0 where there is nothing to identify). Takes a
        list or an Arrow string array (a batch column: no conversion needed for the checks)."""
        column = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
        texts = column.to_pylist() if not isinstance(texts, list) else texts
        labels = [UNDETERMINED] * len(texts)
        confidence = np.zeros(len(texts), dtype=np.float32)
        if self.code is not None:
            for i, (label, conf) in self.code(column).items():
                labels[i], confidence[i] = label, conf
        # Which texts need work, decided column-wise: a letter to identify, line breaks to join.
        has_letter = pc.fill_null(pc.match_substring_regex(column, r"\pL"), False).to_numpy(zero_copy_only=False)
        todo, lines = [], []
        for i in np.flatnonzero(has_letter).tolist():
            if labels[i] == UNDETERMINED:
                todo.append(i)
                lines.append(_one_line(texts[i], self.max_chars))
        if not lines:
            return labels, confidence
        raw, probs = self.model.predict(lines, k=1)
        plain = self.map_label.without_text  # labels that need no look at the text, computed once
        for i, line, raw_labels, p in zip(todo, lines, raw, probs):
            raw_label = raw_labels[0]
            labels[i] = plain.get(raw_label) or self.map_label(raw_label, line)
            confidence[i] = p[0] if p[0] < 1.0 else 1.0
        # A label whose script does not occur in the text is a model error (Mongolian script called
        # Chinese, Cyrillic mojibake called English): `und`, confidence kept for inspection.
        scripts = [labels[i].partition("_")[2] for i in todo]
        missing = ~script_present(column.take(pa.array(todo, pa.int64())), scripts)
        for j in np.flatnonzero(missing).tolist():
            labels[todo[j]] = UNDETERMINED
        return labels, confidence
