"""`fit`: the training loop. AdamW, warm-up + cosine, clipping, autocast, accumulation, optional
GradCache, DDP under torchrun (gloo on CPU, nccl on GPU), safetensors checkpoints, exact resume.

The step never waits for the host: batches are tokenized ahead in a thread (`train.feed`), losses
stay on the device until a logging step reads them, and nothing else copies a value back
(`tests/test_train.py` counts such reads)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from train import checkpoint
from train.config import TrainConfig
from train.data import Batches
from train.feed import Micro, feed, micro_batches
from train.flops import FlopCounter, gpu_peak
from train.losses import InfoNCE, Layers, Matryoshka, Pairing, gather_keys
from train.model import Embedder, default_dims, default_layers, default_ranks, layer_stack
from train.pieces import Piece, Side, Tokenize


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


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generators dropout draws from (the CPU's, and the GPU's when training there)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.rank, self.world, self.device = setup_distributed()
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if config.batch_size % (self.world * config.grad_accum):
            raise ValueError(
                f"batch_size {config.batch_size} must divide by world size x grad_accum = "
                f"{self.world * config.grad_accum}"
            )
        # bad shards or weights fail before any model is built
        self.data = Batches(config.data, config.batch_size, config.seed)
        torch.manual_seed(config.seed)
        self.model, self.tokenizer = checkpoint.build_model(config, self.out, self.rank)
        self.model.to(self.device).train()  # from_pretrained leaves models in eval mode: dropout would be off
        if config.model.gradient_checkpointing:
            backbone = self.model.backbone
            # transformers 5.x's name; the older one is deprecated there
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable({"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        gpu = self.device.type == "cuda"
        # On a CPU the same cores tokenize and train: a feed thread would only compete with the
        # step's compute threads, and small pieces cost little there (no kernel launches to amortise).
        self.prefetch = config.data.prefetch if config.data.prefetch is not None else (4 if gpu else 0)
        # The feed thread tokenizes with its own copy: a Rust tokenizer's padding and truncation
        # settings are state, and evaluation uses the model's tokenizer after training.
        self.tokenize = Tokenize(
            copy.deepcopy(self.tokenizer),
            config.data.max_length,
            config.data.piece_tokens or (16384 if gpu else 1024),
            self.model.include_prompt,
            multiple=8 if gpu else 1,
        )
        self.grid = Grid(config, self.model)
        self.loss = Layers(
            Matryoshka(InfoNCE(config.temperature, config.symmetric), self.grid.dims, config.matryoshka.dim_weights),
            dict(zip(self.grid.layers, config.matryoshka.layer_weights or [])),
        )
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        # Fused AdamW: one kernel for all parameters, and no per-parameter step counter read on the host.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=config.lr,
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.steps, config.warmup))
        self.step = checkpoint.resume(self.out, self.model, self.optimizer, self.scheduler, config)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else None
        module = self.ddp or self.model
        self.forward = torch.compile(module, dynamic=True) if config.compile else module
        self.flops = FlopCounter(layer_stack(self.model.backbone), self.model.width, self.model.num_layers)
        _, self.peak = gpu_peak(self.device)
        self.tokens_seen, self.padded_seen, self.flops_done = 0, 0, 0.0  # since the last `fit` began

    def _forward(self, piece: Piece, layers: list[int]) -> dict[int, torch.Tensor]:
        return self.forward(layers=layers, **piece.to(self.device))

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around all the pieces of a pass: autocast casts each weight once per
        context, so one context per pass casts it once, not once per piece (on an H200 a step made
        ~840 such casts, each a kernel launch forward and back, for 4 pieces)."""
        return autocast(self.device, self.config.precision)

    def _embed(self, side: Side, layers: list[int]) -> dict[int, torch.Tensor]:
        """The side's embeddings in its texts' order, piece by piece."""
        if not side.pieces:
            return {layer: torch.zeros(0, self.model.width, device=self.device) for layer in layers}
        outs = [self._forward(piece, layers) for piece in side.pieces]
        restore = side.restore.to(self.device, non_blocking=True)
        return {layer: torch.cat([o[layer] for o in outs])[restore] for layer in layers}

    def _micro_loss(self, micro: Micro, layers: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch (backpropagated here under GradCache, by the caller otherwise)."""
        keys = micro.keys.to(self.device, non_blocking=True)
        pairing = Pairing(micro.owner.to(self.device, non_blocking=True), micro.batch.in_batch, keys, gather_keys(keys))
        sides = (micro.queries, micro.positives, micro.negatives)
        # queries, positives and negatives each in their own pieces (queries are short)
        if not self.config.grad_cache_chunk:
            with self._autocast():
                embedded = [self._embed(side, layers) for side in sides]
            return self.loss(*embedded, pairing)
        # GradCache (Gao et al. 2021): embed without a graph, take the loss's gradient with respect to
        # the embeddings, then embed piece by piece again with a graph and push that gradient through.
        states, reps = [], []
        with torch.no_grad(), self._autocast():
            for side in sides:
                outs = []
                for piece in side.pieces:
                    states.append(rng_state(self.device))
                    outs.append(self._forward(piece, layers))
                reps.append(
                    {
                        k: (
                            torch.cat([o[k] for o in outs]).float()
                            if outs
                            else torch.zeros(0, self.model.width, device=self.device)
                        ).requires_grad_()
                        for k in layers
                    }
                )
        ordered = [
            {k: r[k][side.restore.to(self.device, non_blocking=True)] for k in layers} for r, side in zip(reps, sides)
        ]
        loss, parts = self.loss(*ordered, pairing)
        loss.backward()
        count, n = sum(len(side.pieces) for side in sides), 0
        for r, side in zip(reps, sides):
            start = 0
            for piece in side.pieces:
                set_rng_state(states[n], self.device)
                with self._autocast():  # per piece, as before: one context over the loop is untested on a GPU
                    again = self._forward(piece, layers)
                sync = contextlib.nullcontext() if self.ddp is None or n == count - 1 else self.ddp.no_sync()
                with sync:
                    torch.autograd.backward(
                        [again[k].float() for k in layers], [r[k].grad[start : start + piece.rows] for k in layers]
                    )
                start, n = start + piece.rows, n + 1
        return loss.detach(), parts

    def train_step(self, micros: list[Micro]) -> dict[str, Any]:
        """One optimizer step on this rank's micro-batches. Returns what a log entry needs, as
        tensors on the device (reading them waits for the GPU: only logging steps do)."""
        c = self.config
        mel_rank, layers = self.grid.for_step(self.step)
        self.model.set_rank(mel_rank)
        total = torch.zeros((), device=self.device)
        for m, micro in enumerate(micros):
            last = m == len(micros) - 1
            sync = (
                self.ddp.no_sync()
                if self.ddp is not None and not last and not c.grad_cache_chunk
                else contextlib.nullcontext()
            )
            with sync:
                loss, parts = self._micro_loss(micro, layers)
                if not c.grad_cache_chunk:  # GradCache has already pushed its gradients through
                    (loss / c.grad_accum).backward()
            total += loss.detach() / c.grad_accum
            sides = (micro.queries, micro.positives, micro.negatives)
            self.tokens_seen += micro.tokens
            self.padded_seen += sum(s.padded for s in sides)
            self.flops_done += sum(self.flops.training(s.tokens, s.squares, mel_rank) for s in sides)
        if c.grad_cache_chunk and c.grad_accum > 1:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad /= c.grad_accum
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        batch = micros[-1].batch
        return {
            "loss": total,
            "grad_norm": norm,
            "parts": parts,
            "mel_rank": mel_rank,
            "layers": layers,
            "source": batch.source,
            "task": batch.task,
        }

    def _log_entry(self, done: dict[str, Any], steps: int, elapsed: float) -> dict[str, Any]:
        """A logging step's entry: the values read back from the device, and the throughput so far."""
        total = done["loss"]
        if self.world > 1:  # log the global batch's loss, as one process would
            dist.all_reduce(total)
            total = total / self.world
        entry = {
            "step": self.step,
            "loss": float(total),
            "source": done["source"],
            "task": done["task"],
            "mel_rank": done["mel_rank"],
            "layers": done["layers"],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(done["grad_norm"]),
            "tokens_per_s": self.tokens_seen * self.world / elapsed,
            "samples_per_s": steps * self.config.batch_size / elapsed,
            "padding": round(1 - self.tokens_seen / max(self.padded_seen, 1), 4),
            "tflops_per_s": self.flops_done * self.world / elapsed / 1e12,
            **{k: float(v) for k, v in done["parts"].items()},
        }
        if self.peak:
            entry["mfu"] = self.flops_done / elapsed / self.peak
        return entry

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train to `config.steps` (or stop, checkpointed, at step `until`: e.g. a job's time slot)."""
        c = self.config
        stop = min(until or c.steps, c.steps)
        log_path = self.out / "log.jsonl"
        history: list[dict[str, Any]] = []
        bar = tqdm(total=c.steps, initial=self.step, desc="training", disable=self.rank != 0, unit="step")
        data = feed(
            micro_batches(
                self.data,
                self.tokenize,
                self.step,
                self.rank,
                self.world,
                c.grad_accum,
                c.grad_cache_chunk,
                pin=self.device.type == "cuda",
            ),
            self.prefetch,
        )
        first = self.step
        self.tokens_seen, self.padded_seen, self.flops_done, started = 0, 0, 0.0, time.perf_counter()
        try:
            while self.step < stop:
                done = self.train_step(next(data))
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == stop:
                    entry = self._log_entry(done, self.step - first, time.perf_counter() - started)
                    history.append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.3f}", source=entry["source"])
                    if self.rank == 0:
                        with log_path.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(entry) + "\n")
                if self.rank == 0 and (self.step % c.save_every == 0 or self.step == stop):
                    checkpoint.save(
                        self.out, self.step, self.model, self.tokenizer, self.optimizer, self.scheduler, self.grid, c
                    )
        finally:
            data.close()
        bar.close()
        if self.world > 1:
            dist.barrier()
        return history
