"""Training throughput: this trainer against sentence-transformers' Matryoshka2dLoss (MRL + adaptive
layers over MultipleNegativesRankingLoss), same model, batch, data and steps, in one run.

Model: the small shipped encoder (train/small_model.py; `--hidden`, `--layers`), built once. Data:
query/positive batches of a run's shards (default runs/stage1): the very batches our trainer draws,
fed to both. Both sides: AdamW, in-batch negatives, max 128 tokens, fp32 on CPU (bf16 autocast on a GPU
for ours). Sentence-transformers runs
as a plain loop over its loss module in train mode (no HF Trainer, whose overhead would only slow it); its
Matryoshka2dLoss samples one layer plus the last per step, so ours is set to two layers per step
(`sample_layers: 2`) and all dims, without and with MEL. Samples/s and tokens/s (non-padding):
over the timed steps after `--warmup` steps, whole (the batches' lengths vary by source, so a median
step would not compare with ours, timed as one call that replays the warm-up batches first).

    python bench/trainer_vs_st.py [--shards runs/stage1] [--steps 30] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import TrainConfig  # noqa: E402
from train.data import Batch, Batches, shard_files  # noqa: E402
from train.small_model import build_small_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pairs(shards: str, n: int) -> list[tuple[str, str]]:
    out = []
    for f in shard_files([shards]):
        t = pq.read_table(f, columns=["query", "positive"])
        out += [(q, p) for q, p in zip(t["query"].to_pylist(), t["positive"].to_pylist()) if p]
        if len(out) >= n:
            break
    return out[:n]


def sentence_transformers_run(model_dir: Path, batches: list[Batch], warmup: int, dims: list[int]) -> dict:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import (
        Matryoshka2dLoss,
        MultipleNegativesRankingLoss,
    )

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = 128
    model.train()  # as its trainer does (loading leaves eval mode: no dropout); ours trains in train mode too
    loss = Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model, scale=20.0), matryoshka_dims=dims, n_layers_per_step=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, tokens = [], 0
    for step, b in enumerate(batches):
        started = time.perf_counter()
        features = [model.preprocess(b.queries), model.preprocess(b.positives)]
        features = [{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
        value = loss(features, None)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
            tokens += sum(int(f["attention_mask"].sum()) for f in features)
    return {"samples_per_s": len(batches[0].queries) * len(times) / sum(times), "tokens_per_s": tokens / sum(times)}


def config(model_dir: Path, shards: str, batch: int, steps: int, warmup: int, dims: list[int], mel: bool, out: Path) -> TrainConfig:
    return TrainConfig.model_validate({
        "out": str(out), "data": {"shards": [shards], "max_length": 128, "in_batch": ["retrieval", "bitext"]},
        "model": {"path": str(model_dir)}, "batch_size": batch, "steps": warmup + steps, "log_every": 1, "save_every": 10**6, "lr": 1e-4,
        "matryoshka": {"dims": dims, "sample_layers": 2, "mel": mel}})


def ours_run(config: TrainConfig, steps: int, warmup: int) -> dict:
    from train.loop import Trainer

    trainer = Trainer(config)
    trainer.fit(until=warmup)
    started = time.perf_counter()
    trainer.fit()  # counts its own tokens (tokens_seen restarts at each call)
    seconds = time.perf_counter() - started
    return {"samples_per_s": steps * config.batch_size / seconds, "tokens_per_s": trainer.tokens_seen / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default=str(ROOT / "runs" / "stage1"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    data = pairs(args.shards, 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_small_model([t for pair in data for t in pair], Path(tmp) / "model", hidden=args.hidden, layers=args.layers,
                                      heads=max(1, args.hidden // 64), max_length=512)
        dims = sorted({args.hidden // 8, args.hidden // 4, args.hidden // 2, args.hidden})
        result = {"device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)", "batch": args.batch,
                  "model": f"BERT {args.layers} layers x {args.hidden}", "dims": dims}
        runs = {name: config(model_dir, args.shards, args.batch, args.steps, args.warmup, dims, mel, Path(tmp) / name)
                for name, mel in (("ours_MRL_MLL", False), ("ours_MRL_MLL_MEL", True))}
        # The very batches our trainer draws (same seed), so both sides see the same texts in the same order.
        stream = iter(Batches(runs["ours_MRL_MLL"].data, args.batch, runs["ours_MRL_MLL"].seed))
        batches = [next(stream) for _ in range(args.warmup + args.steps)]
        result["sentence_transformers_Matryoshka2dLoss"] = sentence_transformers_run(model_dir, batches, args.warmup, dims)
        for name, cfg in runs.items():
            result[name] = ours_run(cfg, args.steps, args.warmup)
        st = result["sentence_transformers_Matryoshka2dLoss"]["samples_per_s"]
        result["ratio_ours_over_st"] = {k: round(result[k]["samples_per_s"] / st, 2) for k in ("ours_MRL_MLL", "ours_MRL_MLL_MEL")}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
