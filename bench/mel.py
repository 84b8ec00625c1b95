"""MEL's token embedding: gather-then-project (F.embedding(ids, U[:, :r]) @ V[:r], what the trainer does) against
rebuilding the full v x d matrix each step (U[:, :r] @ V[:r], then a lookup), forward + backward +
AdamW step, at XLM-R-like and Qwen3-like vocabulary sizes; medians of `--repeats` timed steps.

    python bench/mel.py [--vocab 64000,150000] [--dim 768] [--tokens 8192] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.model import FactorizedEmbedding  # noqa: E402


def step_time(vocab: int, dim: int, rank: int, tokens: int, rebuild: bool, repeats: int, device: str) -> float:
    torch.manual_seed(0)
    emb = FactorizedEmbedding(
        torch.randn(vocab, dim, device=device) * 0.02, torch.randn(dim, dim, device=device) * 0.02
    )
    emb.rank = rank
    opt = torch.optim.AdamW(emb.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (tokens,), device=device)
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = F.embedding(ids, emb.merged(rank)) if rebuild else emb(ids)
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", default="64000,150000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per step (e.g. 64 texts x 128)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, threads {torch.get_num_threads()}, d={args.dim}, {args.tokens} tokens per step")
    print(f"{'vocab':>8} {'rank':>5} {'gather-then-project ms':>23} {'rebuild ms':>11} {'ratio':>7}")
    for vocab in map(int, args.vocab.split(",")):
        for rank in (args.dim // 4, args.dim):
            ours = step_time(vocab, args.dim, rank, args.tokens, False, args.repeats, device)
            full = step_time(vocab, args.dim, rank, args.tokens, True, args.repeats, device)
            print(f"{vocab:>8} {rank:>5} {ours * 1e3:>23.1f} {full * 1e3:>11.1f} {full / ours:>6.1f}x")


if __name__ == "__main__":
    main()
