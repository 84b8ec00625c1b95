"""Token ids as ML-Embed's release makes them: the user's tokenizer (a local folder, loaded as the
release loads it, with `transformers.AutoTokenizer`), each text cut to `max_length - 1` tokens and
ended with the tokenizer's EOS token.

The release's collate function replaces the last id of a sequence that does not end in EOS with EOS,
and pools the hidden state there: ids without EOS silently lose their last token, and a tokenizer
without an EOS token cannot be used at all (a clear error here, before anything is written).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.export.run import ExportError


class EosTokenizer:
    """texts -> lists of token ids ending in EOS."""

    def __init__(self, path: str | None, max_length: int):
        if not path:
            raise ExportError(
                "the ml-embed layout holds token ids: give --tokenizer DIR (the folder of the model you will train)"
            )
        folder = Path(path)
        if not folder.exists():
            raise ExportError(f"tokenizer {path}: no such folder")
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ExportError(
                'the ml-embed layout tokenizes with transformers: pip install "ml-embed-data[embed]"'
            ) from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ExportError(f"tokenizer {path}: cannot be loaded ({exc})") from exc
        self.eos = self.tokenizer.eos_token_id
        if self.eos is None:
            raise ExportError(
                f"tokenizer {path} has no EOS token: ML-Embed's release pools the last token and ends every "
                "sequence with EOS; give a tokenizer with `eos_token` set (tokenizer_config.json)"
            )
        if max_length < 2:
            raise ExportError(f"--max-length {max_length}: a sequence needs room for a token and EOS")
        self.max_length = max_length
        pad = self.tokenizer.pad_token_id
        self.warning = (
            None
            if pad is not None and pad != self.eos
            else (
                f"tokenizer {path}: its pad token {'is its EOS token' if pad is not None else 'is not set'}; "
                "the release masks padding by pad_token_id, which would hide the EOS position it pools"
            )
        )

    def __call__(self, texts: list[str]) -> pa.Array:
        # the Rust tokenizer the fast one wraps: the same ids, without Python's per-call work
        if self.tokenizer.is_fast:
            backend = self.tokenizer.backend_tokenizer
            backend.enable_truncation(self.max_length - 1)
            ids = [e.ids for e in backend.encode_batch_fast(texts)]
        else:
            ids = self.tokenizer(texts, max_length=self.max_length - 1, truncation=True)["input_ids"]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids)) + 1
        ends = np.cumsum(lengths)
        values = np.full(int(ends[-1]) if len(ends) else 0, self.eos, np.int32)
        body = np.ones(len(values), bool)
        body[ends - 1] = False  # the last place of every sequence keeps EOS
        values[body] = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(body.sum()))
        offsets = np.concatenate([[0], ends]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
