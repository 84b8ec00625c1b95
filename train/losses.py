"""Losses that wrap each other: InfoNCE, inside MRL (nested dims), inside MLL (several layers).

Each returns its value and its parts for the log, as tensors on the device: turning them into Python
numbers would wait for the GPU at every step, so the loop reads them only when it logs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.model import normalize


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `x` from every rank, keeping gradients for this rank's part; and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * x.shape[0]


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """`keys` of every rank, concatenated in rank order (no gradients: they are integers)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys)
    return torch.cat(parts)


@dataclass
class Pairing:
    """Who is whose in a batch: each hard negative's query (`owner`), whether the queries score
    against every positive of the batch (`in_batch`), and a key per query's positive: this rank's
    (`keys`) and every rank's (`all_keys`); equal keys mean the same text, never a negative."""

    owner: torch.Tensor
    in_batch: bool
    keys: torch.Tensor
    all_keys: torch.Tensor


class InfoNCE:
    """Query vs its positive, the batch's other positives (all ranks) when `in_batch`, and its own
    hard negatives; cross-entropy over temperature-scaled cosine similarities. `symmetric` adds the
    other direction for in-batch tasks, each positive vs every query (averaged with the first)."""

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        self.temperature, self.symmetric = temperature, symmetric

    def __call__(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, pairing: Pairing) -> torch.Tensor:
        q, p, n = normalize(q), normalize(p), normalize(n)
        if pairing.in_batch:
            everyone, offset = gather(p)
            target = torch.arange(q.shape[0], device=q.device) + offset
            same = pairing.keys[:, None] == pairing.all_keys[None, :]  # another copy of the query's own positive
            same[torch.arange(q.shape[0], device=q.device), target] = False
            pos = (q @ everyone.T).masked_fill(same, float("-inf"))
        else:
            pos = (q * p).sum(-1, keepdim=True)
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        logits = pos
        if n.shape[0]:
            own = pairing.owner[None, :] == torch.arange(q.shape[0], device=q.device)[:, None]
            logits = torch.cat([pos, (q @ n.T).masked_fill(~own, float("-inf"))], dim=1)
        loss = F.cross_entropy(logits / self.temperature, target)
        # queries sharing the positive are all right answers: `same` masks them too
        if pairing.in_batch and self.symmetric:
            back = (p @ gather(q)[0].T).masked_fill(same, float("-inf"))
            loss = (loss + F.cross_entropy(back / self.temperature, target)) / 2
        return loss


def mrl_weights(dims: list[int]) -> list[float]:
    """ML-Embed's default: the n-th largest dim weighs 1 / (n * sqrt(d / dim))."""
    d = max(dims)
    order = sorted(dims, reverse=True)
    return [1.0 / ((order.index(dim) + 1) * math.sqrt(d / dim)) for dim in dims]


class Matryoshka:
    """MRL: the inner loss on each nested prefix of the embedding (each normalised on its own), weighted."""

    def __init__(self, inner: InfoNCE, dims: list[int], weights: list[float] | None = None):
        self.inner, self.dims = inner, dims
        self.weights = weights or mrl_weights(dims)

    def __call__(
        self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, pairing: Pairing
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {d: self.inner(q[:, :d], p[:, :d], n[:, :d], pairing) for d in self.dims}
        total = sum(w * parts[d] for d, w in zip(self.dims, self.weights)) / sum(self.weights)
        return total, {f"dim{d}": v.detach() for d, v in parts.items()}


class Layers:
    """MLL: the inner loss on the pooled output of each chosen layer, weighted mean."""

    def __init__(self, inner: Matryoshka, weights: dict[int, float] | None = None):
        self.inner, self.weights = inner, weights or {}

    def __call__(
        self, q: dict[int, torch.Tensor], p: dict[int, torch.Tensor], n: dict[int, torch.Tensor], pairing: Pairing
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, weight, log = 0.0, 0.0, {}
        for layer in q:
            loss, parts = self.inner(q[layer], p[layer], n[layer], pairing)
            w = self.weights.get(layer, 1.0)
            total, weight = total + w * loss, weight + w
            log[f"layer{layer}"] = loss.detach()
            if layer == max(q):
                log.update(parts)
        return total / weight, log
