"""Training throughput: this trainer against sentence-transformers' Matryoshka2dLoss (MRL + adaptive
layers over MultipleNegativesRankingLoss) and a bare loop (the floor: a transformers model, mean
pooling, InfoNCE at full width, fused AdamW, batches tokenized before timing), same model, batches,
steps and precision, in one run.

Model: an encoder built by train/small_model.py (`--hidden`, `--layers`, `--vocab`: byte-level BPE
trained on the shards), built once. Data: the very query/positive batches our trainer draws from a
run's shards (default runs/stage1), fed to every loop. On a GPU every loop runs under bf16 autocast;
on a CPU in fp32. Sentence-transformers runs as a plain loop over its loss module in train mode (no
HF Trainer, whose overhead would only slow it); its Matryoshka2dLoss samples one layer plus the last
per step, so ours is set to two layers per step (`sample_layers: 2`) and all dims, without and with
MEL. Printed per loop: samples/s, tokens/s (real tokens), model TFLOP/s and, on a GPU whose peak is
known, MFU; FLOPs are counted on real tokens (train/flops.py), the same count for every loop; the
median of `--repeats` runs, and the ratios against sentence-transformers.

    python bench/trainer_vs_st.py [--device cpu|cuda] [--batch 64] [--steps 30] [--repeats 3]
    # GPU, as in the issue: --device cuda --hidden 768 --layers 12 --vocab 32000 --batch 256 --steps 30 --warmup 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import TrainConfig  # noqa: E402
from train.data import Batch, Batches, shard_files  # noqa: E402
from train.flops import FlopCounter, gpu_peak  # noqa: E402
from train.model import layer_stack  # noqa: E402
from train.small_model import build_small_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 128


def texts(shards: str, n: int) -> list[str]:
    out: list[str] = []
    for f in shard_files([shards]):
        t = pq.read_table(f, columns=["query", "positive"])
        out += [x for col in ("query", "positive") for x in t[col].to_pylist() if x]
        if len(out) >= n:
            break
    return out[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


Step = Callable[[Batch], None]


def sentence_transformers_loop(model_dir: Path, dims: list[int], device: torch.device) -> Step:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device=str(device))
    model.max_seq_length = MAX_LENGTH
    model.train()  # as its trainer does (loading leaves eval mode)
    loss = Matryoshka2dLoss(
        model, MultipleNegativesRankingLoss(model, scale=20.0), matryoshka_dims=dims, n_layers_per_step=1
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(b: Batch) -> None:
        features = [model.preprocess(b.queries), model.preprocess(b.positives)]
        features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
        with autocast(device):
            value = loss(features, None)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_loop(model_dir: Path, batches: list[Batch], device: torch.device) -> Step:
    """The floor: no MRL, MLL or MEL, no instruction handling, everything tokenized and on the device before timing."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(model_dir).to(device).train()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ready = {
        id(b): [
            {
                k: v.to(device)
                for k, v in tokenizer(
                    side, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                ).items()
            }
            for side in (b.queries, b.positives)
        ]
        for b in batches
    }

    def embed(features: dict) -> torch.Tensor:
        hidden = model(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize(((hidden * mask).sum(1) / mask.sum(1)).float(), dim=-1)

    def step(b: Batch) -> None:
        q, p = ready[id(b)]
        with autocast(device):
            scores = embed(q) @ embed(p).T / 0.05
        F.cross_entropy(scores, torch.arange(len(b.queries), device=device)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def config(
    model_dir: Path, shards: str, batch: int, steps: int, dims: list[int], out: Path, data: dict, **over
) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "out": str(out),
            "data": {"shards": [shards], "max_length": MAX_LENGTH, "in_batch": ["retrieval", "bitext"], **data},
            "model": {"path": str(model_dir)},
            "batch_size": batch,
            "steps": steps,
            "log_every": 10**6,
            "save_every": 10**6,
            "lr": 1e-4,
            "matryoshka": {"dims": dims, "sample_layers": 2, **over.pop("matryoshka", {})},
            **over,
        }
    )


class Ours:
    """Our trainer, step by step (`Trainer.train_step`), fed as `fit` feeds it: ahead in a thread
    (`prefetch`), or inline when loops are interleaved (a feed thread would work in the others' time)."""

    def __init__(self, config: TrainConfig, prefetch: bool):
        from train.feed import feed, micro_batches
        from train.loop import Trainer

        self.trainer = Trainer(config)
        t = self.trainer
        self.data = feed(
            micro_batches(t.data, t.tokenize, 0, 0, 1, 1, config.grad_cache_chunk, pin=t.device.type == "cuda"),
            self.trainer.prefetch if prefetch else 0,
        )

    def __call__(self, _: Batch) -> None:  # draws the same batch itself (same seed)
        self.trainer.train_step(next(self.data))

    @property
    def padding(self) -> float:
        return 1 - self.trainer.tokens_seen / self.trainer.padded_seen


def timings(
    loops: dict[str, Step], batches: list[Batch], warmup: int, interleave: int, device: torch.device
) -> dict[str, float]:
    """Seconds of each loop's steps after `warmup`: each loop's steps in one stretch, or, with
    `interleave` k, in rounds of k steps of every loop in turn (a noisy machine's slow moments then
    fall on every loop alike)."""
    for step in loops.values():
        for b in batches[:warmup]:
            step(b)
    timed = batches[warmup:]
    chunk = interleave or len(timed)
    seconds = dict.fromkeys(loops, 0.0)
    for i in range(0, len(timed), chunk):
        for name, step in loops.items():
            sync(device)
            started = time.perf_counter()
            for b in timed[i : i + chunk]:
                step(b)
            sync(device)
            seconds[name] += time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default=str(ROOT / "runs" / "stage1"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--piece-tokens", type=int, help="our data.piece_tokens (default: the trainer's)")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    parser.add_argument(
        "--syncs", action="store_true", help="count our step's host syncs (CUDA's sync debug mode; none on a CPU)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="then profile this many steps of ours (MRL+MLL) with torch.profiler: top ops by device and host time",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="time the loops in turns of this many steps (a noisy machine); ours then tokenizes inline",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_small_model(
            texts(args.shards, 20_000),
            Path(tmp) / "model",
            vocab_size=args.vocab,
            hidden=args.hidden,
            layers=args.layers,
            heads=max(1, args.hidden // 64),
            max_length=512,
        )
        dims = sorted({args.hidden // 8, args.hidden // 4, args.hidden // 2, args.hidden})
        data = {"piece_tokens": args.piece_tokens} if args.piece_tokens else {}
        variants = {"ours_MRL_MLL": {"matryoshka": {"mel": False}}, "ours_MRL_MLL_MEL": {"matryoshka": {"mel": True}}}
        if args.compile:
            variants["ours_MRL_MLL_compiled"] = {"matryoshka": {"mel": False}, "compile": True}
        make = lambda name, v: config(
            model_dir,
            args.shards,
            args.batch,
            args.warmup + args.steps,
            dims,
            Path(tmp) / name,
            data,
            **json.loads(json.dumps(v)),
        )
        # The very batches our trainer draws (same seed), so every loop sees the same texts in the same order.
        first = make("probe", variants["ours_MRL_MLL"])
        stream = iter(Batches(first.data, args.batch, first.seed))
        batches = [next(stream) for _ in range(args.warmup + args.steps)]
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ids = [
            tokenizer(side, truncation=True, max_length=MAX_LENGTH)["input_ids"]
            for b in batches[args.warmup :]
            for side in (b.queries, b.positives)
        ]
        lengths = [len(x) for side in ids for x in side]
        padded = sum(len(side) * max(len(x) for x in side) for side in ids)
        backbone = AutoModel.from_pretrained(model_dir)
        flops = FlopCounter(layer_stack(backbone), args.hidden, args.layers).training(
            sum(lengths), sum(n * n for n in lengths)
        )
        name, peak = gpu_peak(device)
        seconds: dict[str, list[float]] = {}
        padding: list[float] = []
        for r in range(args.repeats):
            ours = {v: Ours(make(f"{v}-{r}", spec), prefetch=not args.interleave) for v, spec in variants.items()}
            loops = {
                "sentence_transformers_Matryoshka2dLoss": sentence_transformers_loop(model_dir, dims, device),
                "bare_loop": bare_loop(model_dir, batches, device),
                **ours,
            }
            for loop, took in timings(loops, batches, args.warmup, args.interleave, device).items():
                seconds.setdefault(loop, []).append(took)
            padding.append(ours["ours_MRL_MLL"].padding)
            for o in ours.values():
                o.data.close()
        samples = args.steps * args.batch
        result = {
            "device": name if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "peak_bf16_tflops": peak and peak / 1e12,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "model": f"BERT {args.layers} x {args.hidden}, vocab {args.vocab}",
            "batch": args.batch,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "interleaved_rounds_of": args.interleave or None,
            "padding_share": {
                "padded_to_longest": round(1 - sum(lengths) / padded, 4),
                "ours": round(statistics.median(padding), 4),
            },
        }
        for loop, times in seconds.items():
            s = statistics.median(times)
            result[loop] = {
                "samples_per_s": round(samples / s, 1),
                "tokens_per_s": round(sum(lengths) / s),
                "model_tflops_per_s": round(flops / s / 1e12, 3),
                "mfu": peak and round(flops / s / peak, 4),
                "seconds": [round(t, 2) for t in times],
            }
        st = result["sentence_transformers_Matryoshka2dLoss"]["samples_per_s"]
        result["ratio_over_sentence_transformers"] = {
            k: round(result[k]["samples_per_s"] / st, 2)
            for k in seconds
            if k != "sentence_transformers_Matryoshka2dLoss"
        }
        if args.syncs:
            result["host_syncs_per_step"] = host_syncs(
                Ours(make("syncs", variants["ours_MRL_MLL"]), prefetch=True), batches[0], device
            )
        if args.profile:
            profile(Ours(make("profiled", variants["ours_MRL_MLL"]), prefetch=True), batches[0], args.profile, device)
    print(json.dumps(result, indent=1))


def host_syncs(ours: Ours, batch: Batch, device: torch.device, steps: int = 3) -> float | None:
    """Device-to-host synchronisations per step of ours (not a logging step), by CUDA's sync debug
    mode, which warns at each; None on a CPU, which has none to count."""
    import warnings

    if device.type != "cuda":
        ours.data.close()
        return None
    for _ in range(2):
        ours(batch)
    sync(device)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            ours(batch)
        sync(device)
    torch.cuda.set_sync_debug_mode(0)
    ours.data.close()
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def profile(ours: Ours, batch: Batch, steps: int, device: torch.device) -> None:
    """Where a step of ours spends device and host time: the top operators, and how busy the device was."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        ours(batch)  # ours draws its own batches: the argument is not read
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            ours(batch)
        sync(device)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    # Kernels only: the operators that launch them report the same device time again.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    print(f"profiled {steps} steps: {wall:.2f} s wall, device busy {busy:.2f} s ({busy / wall:.0%})", file=sys.stderr)
    for key in (["self_cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
        print(events.table(sort_by=key, row_limit=18, max_name_column_width=60), file=sys.stderr)
    ours.data.close()


if __name__ == "__main__":
    main()
