"""`fit`: the training loop. AdamW, warm-up + cosine, clipping, autocast, accumulation, optional
GradCache, DDP under torchrun (gloo on CPU, nccl on GPU), safetensors checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from train import checkpoint
from train.config import TrainConfig
from train.data import Batch, Batches, rank_slice
from train.losses import InfoNCE, Layers, Matryoshka, Pairing, gather_keys
from train.model import (
    Embedder,
    default_dims,
    default_layers,
    default_ranks,
    prompt_mask,
)


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Grid:
    """The 3D Matryoshka settings resolved for a model: ranks (MEL), layers (MLL), dims (MRL)."""

    def __init__(self, config: TrainConfig, model: Embedder):
        m = config.matryoshka
        self.dims = m.dims or default_dims(model.width)
        self.layers = m.layers or default_layers(model.num_layers)
        self.ranks = (m.ranks or default_ranks(model.mel.full_rank)) if model.mel is not None else [None]
        self.rank_weights = np.array(m.rank_weights or [r or 1 for r in self.ranks], dtype=float)
        self.sample_layers = m.sample_layers
        self.seed = config.seed

    def for_step(self, step: int) -> tuple[int | None, list[int]]:
        """The MEL rank (by `rank_weights`: proportional to the rank by default) and the layers of a
        step; the same on every rank and after a resume, since it depends only on the seed and the step."""
        rng = np.random.default_rng([self.seed, step, 7])
        rank = None
        if self.ranks != [None]:
            rank = int(self.ranks[rng.choice(len(self.ranks), p=self.rank_weights / self.rank_weights.sum())])
        layers = self.layers
        if self.sample_layers and self.sample_layers < len(layers):
            others = [x for x in layers if x != max(layers)]
            layers = sorted(rng.choice(others, self.sample_layers - 1, replace=False).tolist() + [max(layers)])
        return rank, layers


def lr_lambda(steps: int, warmup: float):
    warm = max(1, int(steps * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return f


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.rank, self.world, self.device = setup_distributed()
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if config.batch_size % (self.world * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} must divide by world size x grad_accum = {self.world * config.grad_accum}")
        self.data = Batches(config.data, config.batch_size, config.seed)  # bad shards or weights fail before any model is built
        torch.manual_seed(config.seed)
        self.model, self.tokenizer = checkpoint.build_model(config, self.out, self.rank)
        self.model.to(self.device).train()  # from_pretrained leaves models in eval mode: dropout would be off
        self.prompt_lengths: dict[str, int] = {}
        self.grid = Grid(config, self.model)
        self.loss = Layers(Matryoshka(InfoNCE(config.temperature, config.symmetric), self.grid.dims, config.matryoshka.dim_weights),
                           dict(zip(self.grid.layers, config.matryoshka.layer_weights or [])))
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.steps, config.warmup))
        self.step = checkpoint.resume(self.out, self.model, self.optimizer, self.scheduler, config)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else None

    def _tokens(self, texts: list[str], prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.data.max_length, return_tensors="pt")
        self.tokens_seen += int(enc["attention_mask"].sum())
        out = {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}
        if not self.model.include_prompt and any(prompts):
            out["pool_mask"] = prompt_mask(self.tokenizer, prompts, out["attention_mask"], self.prompt_lengths)
        return out

    def _embed(self, texts: list[str], layers: list[int], prompts: list[str] | None = None) -> dict[int, torch.Tensor]:
        if not texts:
            return {layer: torch.zeros(0, self.model.width, device=self.device) for layer in layers}
        module = self.ddp or self.model
        with autocast(self.device, self.config.precision):
            return module(layers=layers, **self._tokens(texts, prompts or []))

    def _micro_loss(self, batch: Batch, layers: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch, backpropagated; GradCache when `grad_cache_chunk` is set."""
        texts = batch.queries + batch.positives + batch.negatives
        prompts = batch.prompts + [""] * (len(texts) - len(batch.queries))
        b = len(batch.queries)
        keys = torch.tensor(batch.keys, dtype=torch.long, device=self.device)
        pairing = Pairing(torch.tensor(batch.owner, dtype=torch.long, device=self.device), batch.in_batch, keys, gather_keys(keys))
        chunk = self.config.grad_cache_chunk

        def split(reps: dict[int, torch.Tensor]) -> tuple[dict, dict, dict]:
            return ({k: v[:b] for k, v in reps.items()}, {k: v[b:2 * b] for k, v in reps.items()}, {k: v[2 * b:] for k, v in reps.items()})

        if not chunk:  # queries, positives and negatives each padded to their own longest (queries are short)
            return self.loss(self._embed(batch.queries, layers, batch.prompts), self._embed(batch.positives, layers),
                             self._embed(batch.negatives, layers), pairing)
        # GradCache (Gao et al. 2021): embed without a graph, take the loss's gradient with respect to
        # the embeddings, then embed chunk by chunk again with a graph and push that gradient through.
        pieces, states = [], []
        with torch.no_grad():
            for i in range(0, len(texts), chunk):
                states.append(torch.get_rng_state())
                pieces.append(self._embed(texts[i:i + chunk], layers, prompts[i:i + chunk]))
        reps = {k: torch.cat([p[k] for p in pieces]).float().requires_grad_() for k in layers}
        loss, parts = self.loss(*split(reps), pairing)
        loss.backward()
        for n, i in enumerate(range(0, len(texts), chunk)):
            torch.set_rng_state(states[n])
            again = self._embed(texts[i:i + chunk], layers, prompts[i:i + chunk])
            sync = contextlib.nullcontext() if self.ddp is None or i + chunk >= len(texts) else self.ddp.no_sync()
            with sync:
                torch.autograd.backward([again[k].float() for k in layers], [reps[k].grad[i:i + chunk] for k in layers])
        return loss.detach(), parts

    def batches(self) -> Iterator[Batch]:
        data = iter(self.data)
        for _ in range(self.step):  # replay the order up to the resumed step
            next(data)
        yield from data

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train to `config.steps` (or stop, checkpointed, at step `until`: e.g. a job's time slot)."""
        c = self.config
        stop = min(until or c.steps, c.steps)
        log_path = self.out / "log.jsonl"
        history: list[dict[str, Any]] = []
        bar = tqdm(total=c.steps, initial=self.step, desc="training", disable=self.rank != 0, unit="step")
        data = self.batches()
        first = self.step
        self.tokens_seen, started = 0, time.perf_counter()
        while self.step < stop:
            batch = rank_slice(next(data), self.rank, self.world)
            mel_rank, layers = self.grid.for_step(self.step)
            self.model.set_rank(mel_rank)
            per = len(batch.queries) // c.grad_accum
            total, parts = 0.0, {}
            for m in range(c.grad_accum):
                micro = batch.slice(m * per, (m + 1) * per)
                sync = self.ddp.no_sync() if self.ddp is not None and m < c.grad_accum - 1 and not c.grad_cache_chunk else contextlib.nullcontext()
                with sync:
                    loss, parts = self._micro_loss(micro, layers)
                    if not c.grad_cache_chunk:  # GradCache has already pushed its gradients through
                        (loss / c.grad_accum).backward()
                total += float(loss.detach()) / c.grad_accum
            if c.grad_cache_chunk and c.grad_accum > 1:
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad /= c.grad_accum
            if self.world > 1:  # log the global batch's loss, as one process would
                reduced = torch.tensor(total, device=self.device)
                dist.all_reduce(reduced)
                total = float(reduced) / self.world
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", source=batch.source)
            if self.step % c.log_every == 0 or self.step == stop:
                elapsed = time.perf_counter() - started
                entry = {"step": self.step, "loss": total, "source": batch.source, "task": batch.task, "mel_rank": mel_rank, "layers": layers,
                         "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(norm), "tokens_per_s": self.tokens_seen * self.world / elapsed,
                         "samples_per_s": (self.step - first) * c.batch_size / elapsed, **parts}
                history.append(entry)
                if self.rank == 0:
                    with log_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(entry) + "\n")
            if self.rank == 0 and (self.step % c.save_every == 0 or self.step == stop):
                checkpoint.save(self.out, self.step, self.model, self.tokenizer, self.optimizer, self.scheduler, self.grid, c)
        bar.close()
        if self.world > 1:
            dist.barrier()
        return history
