"""fastText language tagging of lists of texts, with labels in the project's scheme.

How texts are prepared (fastText reads one line per prediction and averages n-gram vectors):
- line breaks become spaces, so a multi-line text is one input;
- a text with no letter at all (numbers, punctuation, emoji, empty) is `und` with confidence 0,
  since a model's guess there is noise;
- a text longer than `max_chars` is predicted on three windows of `max_chars / 3` characters taken
  from its start, middle and end, joined: the cost stays bounded and a long document's boilerplate
  header or footer does not decide its language alone;
- with `detect_code`, texts that look like source code get `code:<lang>` (langid/code.py) instead of
  whatever natural language the model would have guessed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import regex

from langid.code import CodeDetector
from langid.labels import UNDETERMINED, LabelMapper

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

    def predict(self, texts: list[str | None]) -> tuple[list[str], np.ndarray]:
        """Label and confidence per text (`und`, 0.0 where there is nothing to identify)."""
        labels = [UNDETERMINED] * len(texts)
        confidence = np.zeros(len(texts), dtype=np.float32)
        if self.code is not None:
            for i, (label, conf) in self.code(texts).items():
                labels[i], confidence[i] = label, conf
        todo, lines = [], []
        for i, text in enumerate(texts):
            line = prepare(text, self.max_chars) if labels[i] == UNDETERMINED else None
            if line is not None:
                todo.append(i)
                lines.append(line)
        if not lines:
            return labels, confidence
        raw, probs = self.model.predict(lines, k=1)
        for i, line, raw_labels, p in zip(todo, lines, raw, probs):
            labels[i] = self.map_label(raw_labels[0], line)
            confidence[i] = min(float(p[0]), 1.0)
        return labels, confidence
