"""The embedding model: any local `transformers` encoder or decoder, with its token embedding
factorised for MEL, pooled outputs taken after chosen layers for MLL, and cut after training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FactorizedEmbedding(nn.Module):
    """Token embedding U (v x r) @ V (r x d), used at a rank r' <= r set before each forward.

    Gather-then-project: the rows of U for the batch's tokens, first r' columns, times the first r'
    rows of V; the v x d matrix is never rebuilt during training (bench/mel.py measures both). The
    gather is `F.embedding`, whose backward sums the rows' gradients with a sort-based kernel; plain
    indexing (`u[ids]`) would backpropagate through `index_put` with accumulation, several times
    slower on a GPU."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(v)
        self.rank = u.shape[1]

    @classmethod
    def from_embedding(cls, weight: torch.Tensor, rank: int) -> FactorizedEmbedding:
        """Truncated SVD of an existing embedding, singular values split evenly between the factors,
        so the leading ranks start out carrying the most."""
        u, s, vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        root = s[:rank].sqrt()
        return cls((u[:, :rank] * root).contiguous(), (root[:, None] * vt[:rank]).contiguous())

    @property
    def full_rank(self) -> int:
        return self.u.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.u[:, : self.rank]) @ self.v[: self.rank]

    def merged(self, rank: int) -> torch.Tensor:
        """The v x d embedding at rank `rank` (for export)."""
        return self.u[:, :rank] @ self.v[:rank]


def layer_stack(backbone: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers (`encoder.layer` in BERT/XLM-R, `layers` in Llama/Qwen, `h` in GPT-2)."""
    n = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(backbone).__name__}: no list of {n} layers found")


def final_norm(backbone: nn.Module) -> nn.Module | None:
    """The norm a pre-norm model applies after its last layer (None for post-norm encoders like BERT)."""
    for owner in (backbone, getattr(backbone, "decoder", None)):
        for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    return None


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, pool_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLS, last real token (right padding), or mean over `pool_mask` (default: every real token)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
    m = (mask if pool_mask is None else pool_mask).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def is_causal(backbone: nn.Module) -> bool:
    """Whether the backbone's attention is causal (a decoder: Llama, Qwen, GPT-2), read from its
    attention modules' own `is_causal` flag (BERT's is False unless it is configured as a decoder)."""
    return any(getattr(m, "is_causal", False) is True for m in backbone.modules())


class Embedder(nn.Module):
    """Backbone + pooling; `forward` returns one pooled embedding per requested layer."""

    def __init__(self, backbone: nn.Module, pooling: str, mel_rank: int | None, include_prompt: bool = True):
        super().__init__()
        self.include_prompt = include_prompt  # mean pooling over the instruction's tokens too
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT's pooler is not used for embeddings (and DDP wants every parameter used)
        self.backbone = backbone
        self.pooling = pooling
        self.num_layers = backbone.config.num_hidden_layers
        self.norm = final_norm(backbone)
        self.causal = is_causal(backbone)
        if mel_rank:
            backbone.set_input_embeddings(
                FactorizedEmbedding.from_embedding(backbone.get_input_embeddings().weight, mel_rank)
            )

    @property
    def mel(self) -> FactorizedEmbedding | None:
        emb = self.backbone.get_input_embeddings()
        return emb if isinstance(emb, FactorizedEmbedding) else None

    @property
    def width(self) -> int:
        return self.backbone.config.hidden_size

    def set_rank(self, rank: int | None) -> None:
        if self.mel is not None:
            self.mel.rank = rank or self.mel.full_rank

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        layers: list[int],
        pool_mask: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        out = self.backbone(
            input_ids=input_ids, attention_mask=self._backbone_mask(attention_mask), output_hidden_states=True
        )
        pooled = {}
        for layer in layers:
            if layer == self.num_layers:
                hidden = out.last_hidden_state
            else:  # what a model cut to `layer` layers outputs: its final norm, if it has one, on that layer
                hidden = out.hidden_states[layer]
                hidden = self.norm(hidden) if self.norm is not None else hidden
            pooled[layer] = pool(hidden, attention_mask, self.pooling, pool_mask)
        return pooled

    def _backbone_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The padding mask as the 4D mask an encoder's attention takes, built on the device.

        Given a 2D mask, transformers first asks whether it has any padding at all (`mask.all()`,
        to skip the mask), which copies a value to the host and stalls the GPU at every forward; a
        4D mask is used as it is. Decoders and other attention kernels get the 2D mask."""
        kind = getattr(self.backbone.config, "_attn_implementation", None)
        if self.causal or kind not in ("sdpa", "eager"):
            return mask
        keep = mask[:, None, None, :].bool()  # (batch, 1, 1, keys): broadcast over heads and queries
        if kind == "sdpa":
            return keep
        # eager: added to the scores
        return torch.zeros(keep.shape, device=mask.device).masked_fill(~keep, torch.finfo(torch.float32).min)


def default_dims(width: int) -> list[int]:
    return sorted({2**k for k in range(3, int(math.log2(width)) + 1)} | {width})


def default_layers(n: int) -> list[int]:
    return sorted({2**k for k in range(int(math.log2(n)) + 1)} | {n})


def default_ranks(r: int) -> list[int]:
    ranks = {2**k for k in range(6, int(math.log2(r)) + 1) if 2**k < r} or {max(1, r // 4), max(1, r // 2)}
    return sorted(ranks | {r})


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
