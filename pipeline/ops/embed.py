"""Text embeddings from a local model directory, for dense retrieval (hard-negative mining).

Any folder that `sentence-transformers` loads: its own format (`modules.json`), or a plain
`transformers` model (encoder or decoder) with its tokenizer, which it wraps with mean pooling;
`python -m train export` writes such a folder. Nothing is ever downloaded (offline mode).

`Embedder` embeds each distinct text once: texts are keyed by a content hash (`core.passages.passage_id`,
the passage table's `doc_id`), tokenized once and sorted by token length so a batch pads little, run in
bfloat16 on a GPU, and kept in a cache folder in chunks, so a run that is killed and run again reads back
what it already embedded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.passages import passage_id
from pipeline.ops.files import write_atomic

CHUNK_TEXTS = 4096  # texts per cache file: the unit of resume while embedding


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "modules.json").is_file() or (p / "config.json").is_file()


def load_encoder(path: str, device: str | None = None, max_seq_length: int | None = None) -> Any:
    """The model on `device`, in bfloat16 on a GPU (half the memory traffic, tensor cores)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.eval()
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if str(model.device).startswith("cuda"):
        import torch

        model.to(torch.bfloat16)
    return model


class Embedder:
    """Unit vectors of texts, each distinct text (with its prompt) embedded once, in batches of
    similar token length; chunks of finished vectors are kept in `cache` (a folder) when given.
    `load` returns the model; it is called on first need (a resumed step with nothing left to
    embed or mine never loads it)."""

    def __init__(
        self,
        load: Callable[[], Any],
        batch_size: int = 64,
        cache: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self._load = load
        self._model: Any = None
        self.batch_size = batch_size
        self.cache = cache
        self.progress = progress

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def __call__(self, texts: list[str], prompt: str = "") -> np.ndarray:
        ids = [passage_id(prompt + t) for t in texts]
        first: dict[str, str] = {}
        for i, t in zip(ids, texts):
            first.setdefault(i, prompt + t)
        if not first:
            return np.zeros((0, dimension(self.model)), np.float32)
        order, tokens = self._by_length(first)
        if getattr(self.model, "default_prompt_name", None):
            tokens = {}  # a prompt the model adds itself (and may leave out of its pooling): its own `encode`
        embed, inputs = (self._forward, tokens) if tokens else (self._encode, first)
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(order), CHUNK_TEXTS):
            chunk = order[start : start + CHUNK_TEXTS]
            vectors.update(zip(chunk, self._chunk(chunk, [inputs[i] for i in chunk], embed)))
        return np.stack([vectors[i] for i in ids]).astype(np.float32, copy=False)

    def _by_length(self, texts: dict[str, str]) -> tuple[list[str], dict[str, list[int]]]:
        """Ids sorted by token count (then id), and each text's token ids: batches of neighbours pad
        little, the order (so the cache's chunks) is the same in every run over the same texts, and
        no text is tokenized twice. A model without a tokenizer is sorted by characters."""
        tokenizer = getattr(self.model, "tokenizer", None)
        keys = list(texts)
        if tokenizer is None:
            return [k for _, k in sorted((len(texts[k]), k) for k in keys)], {}
        limit = getattr(self.model, "max_seq_length", None) or 512
        encoded = tokenizer([texts[k] for k in keys], add_special_tokens=True, truncation=True, max_length=limit)
        tokens = dict(zip(keys, encoded["input_ids"]))
        return [k for _, k in sorted((len(tokens[k]), k) for k in keys)], tokens

    def _chunk(self, ids: list[str], inputs: list, embed: Callable[[list], np.ndarray]) -> np.ndarray:
        """The vectors of one chunk of texts (token ids for `_forward`, texts for `_encode`), from the
        cache when an earlier run embedded it."""
        path = self.cache / f"{passage_id(''.join(ids))}.npy" if self.cache else None
        if path and path.exists():
            return np.load(path, allow_pickle=False)
        out = np.concatenate([embed(inputs[a : a + self.batch_size]) for a in range(0, len(inputs), self.batch_size)])
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)

            def save(tmp: Path) -> None:
                with tmp.open("wb") as f:  # a file object: np.save would append ".npy" to the name
                    np.save(f, out, allow_pickle=False)

            write_atomic(path, save)
        return out

    def _forward(self, tokens: list[list[int]]) -> np.ndarray:
        """One batch of token ids through the model's modules (the transformer, its pooling, ...).
        Padded here rather than by sentence-transformers' `encode`, which would tokenize the texts a
        second time and re-sort them by characters (across scripts, not tokens); on a GPU the
        tokenizer, not the model, would then set the pace."""
        import torch

        model, tokenizer = self.model, self.model.tokenizer
        width = max(map(len, tokens))
        ids = np.full((len(tokens), width), tokenizer.pad_token_id or 0, np.int64)
        mask = np.zeros((len(tokens), width), np.int64)
        left = getattr(tokenizer, "padding_side", "right") == "left"
        for row, x in enumerate(tokens):
            span = slice(width - len(x), width) if left else slice(0, len(x))
            ids[row, span], mask[row, span] = x, 1
        features = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
            features["token_type_ids"] = np.zeros_like(ids)
        features = {k: torch.from_numpy(v).to(model.device, non_blocking=True) for k, v in features.items()}
        with torch.inference_mode():
            vectors = model(features)["sentence_embedding"].float()
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1).cpu().numpy()
        if self.progress:
            self.progress(len(tokens))
        return vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        """A model without a tokenizer (or with its own default prompt): its `encode`, one batch of
        neighbours per call."""
        vectors = self.model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        if self.progress:
            self.progress(len(texts))
        return np.asarray(vectors, dtype=np.float32)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dimension(model: Any) -> int:
    # sentence-transformers 6 renamed the method; older releases only have the old name.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get() or 0)
