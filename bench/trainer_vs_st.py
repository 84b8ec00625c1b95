"""Training throughput: this trainer against sentence-transformers' Matryoshka2dLoss (MRL + adaptive
layers over MultipleNegativesRankingLoss), same model, batch, data and steps, in one run.

Model: the small shipped encoder (train/small_model.py; `--hidden`, `--layers`), built once. Data:
query/positive pairs of a run's shards (default runs/stage1). Both sides: AdamW, in-batch
negatives, max 128 tokens, fp32 on CPU (bf16 autocast on a GPU for ours). Sentence-transformers runs
as a plain loop over its loss module in train mode (no HF Trainer, whose overhead would only slow it); its
Matryoshka2dLoss samples one layer plus the last per step, so ours is set to two layers per step
(`sample_layers: 2`) and all dims, without and with MEL. Samples/s: median over the timed steps
after `--warmup` steps (ours: over the timed steps as one call, which replays the warm-up
batches' order first); tokens/s counts non-padding tokens.

    python bench/trainer_vs_st.py [--shards runs/stage1] [--steps 30] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import TrainConfig  # noqa: E402
from train.data import shard_files  # noqa: E402
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


def sentence_transformers_run(model_dir: Path, data: list[tuple[str, str]], batch: int, steps: int, warmup: int, dims: list[int]) -> dict:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = 128
    model.train()  # as its trainer does (loading leaves eval mode: no dropout); ours trains in train mode too
    loss = Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model, scale=20.0), matryoshka_dims=dims, n_layers_per_step=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, tokens = [], 0
    for step in range(warmup + steps):
        rows = [data[(step * batch + i) % len(data)] for i in range(batch)]
        started = time.perf_counter()
        features = [model.preprocess([r[0] for r in rows]), model.preprocess([r[1] for r in rows])]
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
    return {"samples_per_s": batch / statistics.median(times), "tokens_per_s": tokens / sum(times)}


def ours_run(model_dir: Path, shards: str, batch: int, steps: int, warmup: int, dims: list[int], mel: bool, out: Path) -> dict:
    from train.loop import Trainer

    config = TrainConfig.model_validate({
        "out": str(out), "data": {"shards": [shards], "max_length": 128, "in_batch": ["retrieval", "bitext"]},
        "model": {"path": str(model_dir)}, "batch_size": batch, "steps": warmup + steps, "log_every": 1, "save_every": 10**6, "lr": 1e-4,
        "matryoshka": {"dims": dims, "sample_layers": 2, "mel": mel}})
    trainer = Trainer(config)
    trainer.fit(until=warmup)
    started = time.perf_counter()
    trainer.fit()  # counts its own tokens (tokens_seen restarts at each call)
    seconds = time.perf_counter() - started
    return {"samples_per_s": steps * batch / seconds, "tokens_per_s": trainer.tokens_seen / seconds}


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
        result["sentence_transformers_Matryoshka2dLoss"] = sentence_transformers_run(model_dir, data, args.batch, args.steps, args.warmup, dims)
        result["ours_MRL_MLL"] = ours_run(model_dir, args.shards, args.batch, args.steps, args.warmup, dims, False, Path(tmp) / "a")
        result["ours_MRL_MLL_MEL"] = ours_run(model_dir, args.shards, args.batch, args.steps, args.warmup, dims, True, Path(tmp) / "b")
        st = result["sentence_transformers_Matryoshka2dLoss"]["samples_per_s"]
        result["ratio_ours_over_st"] = {k: round(result[k]["samples_per_s"] / st, 2) for k in ("ours_MRL_MLL", "ours_MRL_MLL_MEL")}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
