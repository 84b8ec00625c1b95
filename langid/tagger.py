"""fastText language tagging of batches of texts, with labels in the project's scheme."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from langid.labels import UNDETERMINED, LabelMapper, load_table

BUNDLED_MODEL = "lid176"


def model_path(model: str) -> Path:
    """`lid176` names the bundled lid.176.ftz; anything else is a path to a fastText model."""
    if model == BUNDLED_MODEL:
        return Path(str(resources.files("langid").joinpath("models", "lid.176.ftz")))
    return Path(model)


class LanguageTagger:
    """Loads a fastText model once and tags lists of texts with (label, confidence)."""

    def __init__(self, model: str = BUNDLED_MODEL):
        import fasttext

        fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load_model warning
        self.model = fasttext.load_model(str(model_path(model)))
        self.map_label = LabelMapper(load_table())

    def predict(self, texts: list[str | None]) -> tuple[list[str], np.ndarray]:
        """Label and confidence per text; None or blank texts get `und` with confidence 0."""
        labels = [UNDETERMINED] * len(texts)
        confidence = np.zeros(len(texts), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t and not t.isspace()]
        if not todo:
            return labels, confidence
        # fastText reads one line per prediction: lines are joined so a multi-line text is one input.
        flat = [texts[i].replace("\n", " ").replace("\r", " ") for i in todo]
        raw, probs = self.model.predict(flat, k=1)
        for i, text, raw_labels, p in zip(todo, flat, raw, probs):
            labels[i] = self.map_label(raw_labels[0], text)
            confidence[i] = min(float(p[0]), 1.0)
        return labels, confidence
