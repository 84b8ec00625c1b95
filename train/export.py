"""Cut a checkpoint along the three axes and save it as a standard model folder: the embedding
merged to U[:, :R] @ V[:R], the layers cut to L, and (for sentence-transformers) the output cut to D.
`transformers` loads the folder as a plain model; sentence-transformers adds pooling, a Dense
module holding the D x d identity (the truncation), and normalisation, all standard modules."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from train.checkpoint import load
from train.model import layer_stack

ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}


def export(
    checkpoint: str | Path,
    out: str | Path,
    rank: int | None = None,
    layers: int | None = None,
    dims: int | None = None,
    max_seq_length: int = 512,
) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    model, tokenizer = load(checkpoint)
    backbone = model.backbone
    width = model.width
    if model.mel is not None:
        merged = model.mel.merged(rank or model.mel.full_rank).detach().clone()
        backbone.set_input_embeddings(nn.Embedding.from_pretrained(merged, freeze=False))
    elif rank is not None:
        raise ValueError("this checkpoint has no factorised embedding (trained without MEL): leave --rank out")
    n = model.num_layers
    layers = layers or n
    if not 1 <= layers <= n:
        raise ValueError(f"--layers must be within 1..{n}")
    if layers < n:
        del layer_stack(backbone)[layers:]
        backbone.config.num_hidden_layers = layers
        if isinstance(getattr(backbone.config, "layer_types", None), list):
            backbone.config.layer_types = backbone.config.layer_types[:layers]
    dims = dims or width
    if not 1 <= dims <= width:
        raise ValueError(f"--dims must be within 1..{width}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules: list[nn.Module] = [
        Transformer(str(out), max_seq_length=max_seq_length),
        Pooling(width, pooling_mode=ST_POOLING[model.pooling], include_prompt=model.include_prompt),
    ]
    if dims < width:
        cut = Dense(width, dims, bias=False, activation_function=nn.Identity())
        with torch.no_grad():
            cut.linear.weight.copy_(torch.eye(width)[:dims])
        modules.append(cut)
    modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out
