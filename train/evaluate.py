"""Held-out retrieval (nDCG@10, Recall@1/10) at every point of the 3D grid: MEL rank x layers x dims,
as a table (CSV) and heatmaps in a self-contained HTML report."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import torch

from train.model import Embedder, normalize
from train.pieces import Tokenize


def load_heldout(folder: str | Path) -> dict[str, tuple[list[str], list[str], list[int]]]:
    """Per language file (`xx.jsonl.gz` with question and context): queries, the distinct passages,
    and each query's passage index."""
    out = {}
    for path in sorted(Path(folder).glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        passages = sorted({r["context"] for r in rows})
        index = {p: i for i, p in enumerate(passages)}
        out[path.name.split(".")[0]] = ([r["question"] for r in rows], passages, [index[r["context"]] for r in rows])
    if not out:
        raise FileNotFoundError(f"no .jsonl(.gz) files with question/context in {folder}")
    return out


@torch.no_grad()
def encode(
    model: Embedder,
    tokenizer: Any,
    texts: list[str],
    rank: int | None,
    layer: int,
    max_length: int = 512,
    batch_size: int = 64,
    prompt: str = "",
) -> torch.Tensor:
    """Pooled embeddings (full width, not normalised) at a MEL rank and a layer, each text after
    `prompt` (an instruction: pooled over or not as the model was trained); in eval mode, then the
    model's mode restored. Texts are embedded in length-sorted pieces of about `batch_size` texts
    of the longest length."""
    training = model.training
    model.eval()
    model.set_rank(rank)
    device = next(model.parameters()).device
    length = min(max_length, tokenizer.model_max_length)
    side = Tokenize(tokenizer, length, batch_size * length, model.include_prompt)(
        [prompt + t for t in texts], [prompt] * len(texts)
    )
    parts = [model(layers=[layer], **piece.to(device))[layer].float().cpu() for piece in side.pieces]
    model.train(training)
    return torch.cat(parts)[side.restore] if parts else torch.zeros(0, model.width)


def retrieval_scores(queries: torch.Tensor, passages: torch.Tensor, gold: list[int]) -> dict[str, float]:
    sims = normalize(queries) @ normalize(passages).T
    target = sims[torch.arange(len(gold)), torch.tensor(gold)]
    rank = (sims > target[:, None]).sum(1)  # 0 = first
    ndcg = torch.where(rank < 10, 1.0 / torch.log2(rank.float() + 2), torch.zeros_like(target))
    return {
        "ndcg@10": float(ndcg.mean()),
        "recall@1": float((rank < 1).float().mean()),
        "recall@10": float((rank < 10).float().mean()),
    }


def grid_eval(
    model: Embedder,
    tokenizer: Any,
    heldout: dict,
    ranks: list[int | None],
    layers: list[int],
    dims: list[int],
    instruction_template: str | None = None,
    max_length: int = 512,
) -> pl.DataFrame:
    """One row per (rank, layers, dims, language); an embedding is computed once per (rank, layer)
    and cut to each dim. Whole passages (up to `max_length` tokens, or the model's limit): XQuAD-R
    paragraphs run to ~600 word pieces, longer than training's `max_length`, which bounds its cost."""
    prompt = instruction_template.split("{query}")[0] if instruction_template else ""
    rows = []
    for rank in ranks:
        for layer in layers:
            for lang, (questions, passages, gold) in heldout.items():
                q = encode(model, tokenizer, questions, rank, layer, max_length, prompt=prompt)
                p = encode(model, tokenizer, passages, rank, layer, max_length)
                for dim in dims:
                    rows.append(
                        {
                            "rank": rank or model.width,
                            "layers": layer,
                            "dims": dim,
                            "language": lang,
                            **retrieval_scores(q[:, :dim], p[:, :dim], gold),
                        }
                    )
    return pl.DataFrame(rows)


def report(table: pl.DataFrame, out: Path, title: str) -> Path:
    """Heatmaps of nDCG@10 (mean over languages): one per MEL rank, layers x dims."""
    import plotly.graph_objects as go

    from core.page import figures_page

    mean = (
        table.group_by("rank", "layers", "dims")
        .agg(pl.col("ndcg@10", "recall@1", "recall@10").mean())
        .sort("rank", "layers", "dims")
    )
    figs = []
    lo, hi = float(mean["ndcg@10"].min()), float(mean["ndcg@10"].max())
    for rank in mean["rank"].unique().sort():
        part = mean.filter(pl.col("rank") == rank)
        layers, dims = part["layers"].unique().sort().to_list(), part["dims"].unique().sort().to_list()
        z = [[part.filter((pl.col("layers") == l) & (pl.col("dims") == d))["ndcg@10"][0] for d in dims] for l in layers]
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=[str(d) for d in dims],
                y=[str(l) for l in layers],
                zmin=lo,
                zmax=hi,
                colorscale="Viridis",
                text=[[f"{v:.3f}" for v in row] for row in z],
                texttemplate="%{text}",
            )
        )
        fig.update_layout(
            title=f"nDCG@10, MEL rank {rank}",
            xaxis_title="output dims (MRL)",
            yaxis_title="layers (MLL)",
            height=380,
            margin={"l": 60, "r": 20, "t": 50, "b": 50},
        )
        figs.append((f"rank{rank}", fig))
    subtitle = f"held-out retrieval, mean over {table['language'].n_unique()} languages"
    table_html = "<h2>All points</h2>" + _html_table(mean)
    out.write_text(figures_page(title, subtitle, figs, table_html), encoding="utf-8")
    return out


def _html_table(df: pl.DataFrame) -> str:
    head = "".join(f"<th>{c}</th>" for c in df.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) and not math.isnan(v) else f"<td>{v}</td>" for v in row)
        + "</tr>"
        for row in df.iter_rows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"
