"""Text embeddings from a local model directory, for dense retrieval (hard-negative mining).

Any folder that `sentence-transformers` loads: its own format (`modules.json`), or a plain
`transformers` model (encoder or decoder) with its tokenizer, which it wraps with mean pooling;
`python -m train export` writes such a folder. Nothing is ever downloaded (offline mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "modules.json").is_file() or (p / "config.json").is_file()


def load_encoder(path: str, device: str | None = None, max_seq_length: int | None = None) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def encode(model: Any, texts: list[str], prompt: str = "", batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors, one row per text; each distinct text is encoded once."""
    if not texts:
        return np.zeros((0, dimension(model) or 0), np.float32)
    distinct, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    vectors = model.encode([prompt + t for t in distinct.tolist()], batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vectors[inverse], dtype=np.float32)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dimension(model: Any) -> int:
    # sentence-transformers 6 renamed the method; older releases only have the old name.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get() or 0)
