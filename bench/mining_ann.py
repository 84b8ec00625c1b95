"""Mining against a named corpus of 100k+ passages: the approximate index (faiss IVF) against exact
search, on the same vectors, in one run.

The corpus is real multilingual text from `../shared/data`: every SIB-200 (FLORES) sentence of 205
languages (train and dev), the UDHR's paragraphs in ~360 languages, and the XQuAD-R paragraphs; the
queries are XQuAD-R's questions (8 languages; `--queries N`, spread over them). Each query's pool
is the whole corpus (`pool: corpus`, `per_language: false`), its positive among it (excluded as
the positive). Vectors: what a pass-through BERT (`train/small_model.py`, 384 wide, built
offline) computes, the normalised mean of a text's normalised token vectors, taken straight from its
tokenizer and embedding table (`TokenMeans`): the index is what is measured, and running 190k texts
through a transformer on 2 cores would take most of the run. Both sides mine with the same vectors
and the `mine_negatives` stage's defaults otherwise.

Printed: recall@100 of the approximate search against exact search (share of the exact top 100
that the index also returns, mean over queries) with the time of each; then the stage's run with
the index (its time, negatives per query) and, with `--exact-run`, the same run with exact search
and the share of kept negatives both runs keep.

    python bench/mining_ann.py [--queries 2000] [--nprobe 64] [--exact-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from core.record import WORK_SCHEMA  # noqa: E402
from pipeline.engine.stage import RunContext  # noqa: E402
from pipeline.ops.embed import load_encoder  # noqa: E402
from pipeline.ops.retrieval import AnnSearch, DenseSearch  # noqa: E402
from pipeline.stages.mine_negatives import MineNegatives, MineNegativesConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus() -> list[str]:
    """Distinct passages: SIB-200 sentences, UDHR paragraphs (one per non-blank line), XQuAD-R paragraphs."""
    texts: set[str] = set()
    with tarfile.open(DATA / "sib200-train-dev.tar.xz", "r:xz") as tar:
        for member in tar.getmembers():
            if member.name.endswith(("train.tsv", "dev.tsv")):
                lines = tar.extractfile(member).read().decode("utf-8").splitlines()[1:]  # type: ignore[union-attr]
                texts.update(line.split("\t", 2)[2] for line in lines if line.count("\t") >= 2)
    with zipfile.ZipFile(DATA / "udhr2.zip") as z:
        for name in z.namelist():
            if name.endswith(".txt"):
                texts.update(
                    p.strip() for p in z.read(name).decode("utf-8", "replace").splitlines() if len(p.strip()) > 20
                )
    with tarfile.open(DATA / "xquad-r-dev.tar.xz", "r:xz") as tar:
        for lang in ("ar", "de", "el", "en", "es", "hi", "ru", "zh"):
            data = json.load(tar.extractfile(f"xquad-r/{lang}.json"))  # type: ignore[arg-type]
            texts.update(p["context"] for a in data["data"] for p in a["paragraphs"])
    return sorted(t for t in texts if t.strip())


def questions(limit: int) -> list[dict]:
    out = []
    with tarfile.open(DATA / "xquad-r-dev.tar.xz", "r:xz") as tar:
        for lang in ("ar", "de", "el", "en", "es", "hi", "ru", "zh"):
            data = json.load(tar.extractfile(f"xquad-r/{lang}.json"))  # type: ignore[arg-type]
            out += [
                {"query": qa["question"], "positive": p["context"]}
                for a in data["data"]
                for p in a["paragraphs"]
                for qa in p["qas"]
            ]
    step = max(1, len(out) // limit)
    return out[::step][:limit]  # spread over the languages


class TokenMeans:
    """The pass-through model's vectors without its layers; called as the stage's embedder is."""

    def __init__(self, model_dir: Path):
        model = load_encoder(str(model_dir), "cpu")
        table = model[0].auto_model.embeddings.word_embeddings.weight.detach().numpy()
        self.vectors = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        self.tokenizer = model.tokenizer

    def __call__(self, texts: list[str], prompt: str = "") -> np.ndarray:
        return np.concatenate([self._block(texts[a : a + 4096], prompt) for a in range(0, len(texts), 4096)])

    def _block(self, texts: list[str], prompt: str) -> np.ndarray:
        ids = self.tokenizer([prompt + t for t in texts], add_special_tokens=False, truncation=True, max_length=256)
        lengths = np.array([max(len(x), 1) for x in ids["input_ids"]])
        flat = np.concatenate([x or [0] for x in ids["input_ids"]])
        sums = np.add.reduceat(self.vectors[flat], np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def table(passages: list[str], items: list[dict]) -> pa.Table:
    rows = [
        {"id": f"c{i}", "source": "corpus", "task": "corpus", "query": t, "licence": "x", "origin": f"c:{i}"}
        for i, t in enumerate(passages)
    ] + [
        {"id": f"q{i}", "source": "xquad", "task": "retrieval", "licence": "x", "origin": f"q:{i}", **r}
        for i, r in enumerate(items)
    ]
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def mine(batch: pa.Table, embedder: TokenMeans, **config) -> tuple[list[dict], float]:
    settings = MineNegativesConfig(
        stage="mine_negatives",
        retriever="dense",
        model=config.pop("model"),
        pool="corpus",
        corpus="corpus",
        per_language=False,
        **config,
    )
    stage = MineNegatives(settings, RunContext(Path("."), ("corpus", "xquad")))
    stage.embedder = embedder
    started = time.perf_counter()
    out = [r for r in stage(batch).to_pylist() if r["source"] == "xquad"]
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--exact-run", action="store_true", help="also mine with exact search and compare negatives")
    args = parser.parse_args()
    from train.small_model import build_small_model

    started = time.perf_counter()
    passages, items = corpus(), questions(args.queries)
    print(
        f"corpus: {len(passages):,} passages; {len(items):,} queries ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = build_small_model(  # the tokenizer learns from a tenth of the corpus: enough for its merges
            passages[::10], Path(tmp) / "model", vocab_size=30000, hidden=384, layers=1, heads=12, pass_through=True
        )
        embedder = TokenMeans(model)
        started = time.perf_counter()
        # the stage's order: corpus, outside positives
        pool = embedder(passages + sorted({r["positive"] for r in items}))
        vectors = embedder([r["query"] for r in items])
        print(f"embedded {len(pool) + len(vectors):,} texts in {time.perf_counter() - started:.0f} s", flush=True)

        # The raw search: recall@100 of the index against exact search, same vectors.
        queries, positives = list(range(len(items))), np.zeros(len(items), np.int64)
        started = time.perf_counter()
        exact = DenseSearch(pool, vectors, candidates=len(passages))(queries, positives, 100)[0]
        exact_s, started = time.perf_counter() - started, time.perf_counter()
        ann = AnnSearch(pool, vectors, candidates=len(passages), nprobe=args.nprobe)
        build_s, started = time.perf_counter() - started, time.perf_counter()
        approx = ann(queries, positives, 100)[0]
        search_s = time.perf_counter() - started
        recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx, exact)])
        print(
            f"search, top 100 of {len(passages):,}: exact {exact_s:.1f} s; faiss IVF ({ann.index.nlist} lists, nprobe "
            f"{ann.index.nprobe}) build {build_s:.1f} s + search {search_s:.1f} s; recall@100 {recall:.4f}",
            flush=True,
        )

        # The stage: a run whose pool is the named corpus mines with the index (above ann_min_pool).
        batch = table(passages, items)
        ann_rows, ann_s = mine(batch, embedder, model=str(model), ann_min_pool=100_000, ann_nprobe=args.nprobe)
        per_query = np.mean([len(r["negatives"] or []) for r in ann_rows])
        print(
            f"mine_negatives, pool: corpus ({len(passages):,} passages), approximate index: {ann_s:.1f} s, "
            f"{per_query:.1f} negatives per query",
            flush=True,
        )
        if args.exact_run:  # the same run with exact search: how many kept negatives the index changes
            exact_rows, exact_s = mine(batch, embedder, model=str(model), ann_min_pool=10**9)
            kept = [
                len(set(a["negatives"] or []) & set(e["negatives"] or [])) / max(len(e["negatives"] or []), 1)
                for a, e in zip(ann_rows, exact_rows)
            ]
            print(f"  exact search: {exact_s:.1f} s; kept negatives shared with it {np.mean(kept):.4f}")


if __name__ == "__main__":
    main()
