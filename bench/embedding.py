"""The mining stage's embedding path (`pipeline.ops.embed.Embedder`) against sentence-transformers'
`encode` of the same texts, same model, same batch size, in one run.

Texts: every distinct text field of the shipped samples (`manifests/samples`: XQuAD-R questions and
paragraphs, SIB-200 sentences, STS pairs; 40+ scripts). Models: BERT encoders built by
`train/small_model.py` (random weights, nothing downloaded) at MiniLM size (6 x 384) and base size
(12 x 768). Sides, each timed from the list of texts to unit vectors in host memory:
- `st`: `SentenceTransformer(...).encode(texts, batch_size, normalize_embeddings=True)`, as users
  call it (fp32);
- `st-bf16` (GPU only): the same with the model cast to bfloat16, the fairest baseline;
- `ours`: `Embedder` as the stage builds it (bfloat16 on a GPU, each text tokenized once, batches of
  neighbours in token length), with no cache.
Printed: texts/s per side (median of `--repeats`), ratios against `st` and `st-bf16`, and the cosine
between our vectors and `st`'s (bf16 costs a little precision on a GPU; on a CPU both are fp32).

    python bench/embedding.py --device cuda [--repeats 3] [--batch 64 256]
    python bench/embedding.py --device cpu --limit 2000 --sizes mini
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ops.embed import Embedder, load_encoder  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"
SIZES = {"mini": (6, 384, 12), "base": (12, 768, 12)}  # layers, hidden, heads


def sample_texts() -> list[str]:
    """Every distinct string field of the shipped samples (the held-out sample excepted), in file order."""
    seen: dict[str, None] = {}
    for path in sorted(SAMPLES.glob("*/*.jsonl.gz")):
        if path.parent.name.endswith("heldout"):
            continue
        for line in gzip.open(path, "rt", encoding="utf-8"):
            for value in json.loads(line).values():
                if isinstance(value, str) and value.strip():
                    seen.setdefault(value)
    return list(seen)


def timed(fn, repeats: int, sync) -> tuple[float, np.ndarray]:
    seconds, out = [], None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        out = fn()
        sync()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="embed only the first N texts")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from train.small_model import build_small_model

    texts = sample_texts()[: args.limit]
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{len(texts)} distinct texts on {name}; median of {args.repeats}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            layers, hidden, heads = SIZES[size]
            folder = build_small_model(
                texts, Path(tmp) / size, vocab_size=30000, hidden=hidden, layers=layers, heads=heads, max_length=512
            )
            st = SentenceTransformer(str(folder), device=args.device, local_files_only=True)
            sides = {"st": st}
            if cuda:
                sides["st-bf16"] = SentenceTransformer(str(folder), device=args.device, local_files_only=True).to(
                    torch.bfloat16
                )
            ours_model = load_encoder(str(folder), args.device)
            for batch in args.batch:
                row: dict = {"size": size, "batch": batch, "texts": len(texts), "device": name}
                runs = {
                    label: (
                        lambda some, m=model, b=batch: m.encode(
                            some, batch_size=b, normalize_embeddings=True, convert_to_numpy=True
                        )
                    )
                    for label, model in sides.items()
                }
                runs["ours"] = lambda some, m=ours_model, b=batch: Embedder(lambda: m, batch_size=b)(some)
                vectors = {}
                for label, embed in runs.items():
                    embed(texts[:batch])  # kernels and the allocator warm, outside the timing
                    seconds, vectors[label] = timed(lambda e=embed: e(texts), args.repeats, sync)
                    row[f"{label}_texts_per_s"] = len(texts) / seconds
                cos = np.sum(vectors["ours"] * vectors["st"], axis=1)
                row["cosine_min"], row["cosine_mean"] = float(cos.min()), float(cos.mean())
                for base in sides:
                    row[f"ours_vs_{base}"] = row["ours_texts_per_s"] / row[f"{base}_texts_per_s"]
                results.append(row)
                print(
                    f"{size} batch {batch}: "
                    + ", ".join(f"{k[:-12]} {row[k]:,.0f} texts/s" for k in row if k.endswith("_texts_per_s"))
                    + " | "
                    + ", ".join(f"{k} {row[k]:.2f}x" for k in row if k.startswith("ours_vs_"))
                    + f" | cosine ours/st min {row['cosine_min']:.4f} mean {row['cosine_mean']:.5f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
