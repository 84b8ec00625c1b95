"""Texts to token tensors with little padding: a list of texts (one side of a batch: its queries, its
positives or its negatives) is tokenized once, sorted by length and cut into pieces, each padded only
to its own longest text; the model embeds piece by piece and `Side.restore` puts the embeddings back
in the texts' order.

A batch padded to its longest text spends a third or more of its tokens on padding (37% measured on
the stage-1 shards at batch 256); sorted pieces cut most of it without changing any embedding, since
a padded position never reaches a real token's output. Pieces also bound memory (`piece_tokens`),
and GradCache embeds exactly these pieces (`max_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Piece:
    """Rows of one side that are embedded together, padded (on the right) to the longest of them."""

    input_ids: torch.Tensor  # (rows, length)
    attention_mask: torch.Tensor
    pool_mask: torch.Tensor | None  # the attention mask without the prompt's tokens (None: pool over all)

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The model's keyword arguments on `device` (asynchronous from pinned memory)."""
        out = {
            "input_ids": self.input_ids.to(device, non_blocking=True),
            "attention_mask": self.attention_mask.to(device, non_blocking=True),
        }
        if self.pool_mask is not None:
            out["pool_mask"] = self.pool_mask.to(device, non_blocking=True)
        return out

    def pin(self) -> Piece:
        return Piece(
            self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(),
            None if self.pool_mask is None else self.pool_mask.pin_memory(),
        )

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Side:
    """One side's pieces, in length order; row i of the texts is row `restore[i]` of the pieces' rows."""

    pieces: list[Piece]
    restore: torch.Tensor
    tokens: int  # real (non-padding) tokens
    squares: int  # the sum of the texts' squared lengths (attention's FLOPs)

    @property
    def padded(self) -> int:
        return sum(p.input_ids.numel() for p in self.pieces)

    def pin(self) -> Side:
        return Side([p.pin() for p in self.pieces], self.restore.pin_memory(), self.tokens, self.squares)


class Tokenize:
    """A tokenizer with the settings of a run: truncation length, piece size, and the prompt lengths
    it has counted (a prompt's tokens are counted once, as sentence-transformers counts them)."""

    def __init__(
        self, tokenizer: Any, max_length: int, piece_tokens: int, include_prompt: bool = True, multiple: int = 1
    ):
        self.tokenizer, self.max_length, self.piece_tokens = tokenizer, max_length, piece_tokens
        # multiple: pad lengths to a multiple (GPU tensor cores)
        self.include_prompt, self.multiple = include_prompt, multiple
        self.prompt_lengths: dict[str, int] = {}

    def prompt_length(self, prompt: str) -> int:
        """Tokens of `prompt` before the text: its tokens with special tokens, minus one (the end
        token), as sentence-transformers counts a prompt, so an exported model pools alike."""
        if prompt not in self.prompt_lengths:
            self.prompt_lengths[prompt] = len(self.tokenizer(prompt)["input_ids"]) - 1
        return self.prompt_lengths[prompt]

    def __call__(self, texts: list[str], prompts: list[str] | None = None, max_rows: int | None = None) -> Side:
        """`texts` (each already starting with its prompt, if any) as length-sorted pieces of at most
        `piece_tokens` padded tokens and `max_rows` rows."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        skip = np.zeros(len(texts), dtype=np.int64)  # prompt tokens left out of pooling
        if prompts is not None and not self.include_prompt:
            skip = np.array([self.prompt_length(p) if p else 0 for p in prompts], dtype=np.int64)
        pieces, start = [], 0
        while start < len(order):
            # texts are truncated to max_length
            longest = min(-(-int(lengths[order[start]]) // self.multiple) * self.multiple, self.max_length)
            rows = max(1, min(self.piece_tokens // longest, max_rows or len(order), len(order) - start))
            pieces.append(
                self._piece([ids[i] for i in order[start : start + rows]], skip[order[start : start + rows]], longest)
            )
            start += rows
        restore = np.empty(len(order), dtype=np.int64)
        restore[order] = np.arange(len(order))
        return Side(pieces, torch.from_numpy(restore), int(lengths.sum()), int((lengths**2).sum()))

    def _piece(self, ids: list[list[int]], skip: np.ndarray, length: int) -> Piece:
        input_ids = np.full((len(ids), length), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        pool = None
        if skip.any():
            pool = mask.copy()
            pool[np.arange(length)[None, :] < skip[:, None]] = 0
        return Piece(
            torch.from_numpy(input_ids), torch.from_numpy(mask), None if pool is None else torch.from_numpy(pool)
        )
