"""Building the model, and checkpoints as safetensors (no pickle): the model, the optimizer's tensors,
and a JSON file with the step, the scheduler, the 3D grid and the model's settings.

A checkpoint folder also holds the backbone's `config.json` and tokenizer, so eval and export
need nothing but the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from train.config import TrainConfig
from train.model import Embedder, FactorizedEmbedding

LATEST = "latest.json"
# Dropout settings' names across transformers architectures.
DROPOUTS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def _texts_for_tokenizer(config: TrainConfig, limit: int = 50_000) -> list[str]:
    import pyarrow.parquet as pq

    from train.data import shard_files

    texts: list[str] = []
    for f in shard_files(config.data.shards):
        table = pq.read_table(f, columns=["query", "positive"])
        texts += [t for col in ("query", "positive") for t in table[col].to_pylist() if t]
        if len(texts) >= limit:
            break
    return texts[:limit]


def build_model(config: TrainConfig, out: Path, rank: int = 0) -> tuple[Embedder, Any]:
    """The model to train: from `init_from` (a checkpoint), a local model folder, or a small model
    built from the shipped config with a tokenizer trained on the shards (rank 0 builds, others wait)."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModel

    if config.init_from:
        model, tokenizer = load(config.init_from)
        model.include_prompt = config.model.include_prompt
        return model, tokenizer
    path = config.model.path
    if path is None:
        path = str(out / "base_model")
        if rank == 0 and not (Path(path) / "config.json").exists():
            from train.small_model import build_small_model

            build_small_model(
                _texts_for_tokenizer(config),
                path,
                seed=config.seed,
                max_length=max(512, config.data.max_length),
                pass_through=config.model.small_init == "pass_through",
                **config.model.small,
            )
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    tokenizer = _tokenizer(path)
    model_config = AutoConfig.from_pretrained(path)
    if config.model.dropout is not None:
        for name in DROPOUTS:
            if hasattr(model_config, name):
                setattr(model_config, name, config.model.dropout)
    backbone = AutoModel.from_pretrained(path, config=model_config, torch_dtype=torch.float32)
    m = config.matryoshka
    mel_rank = (m.rank or backbone.config.hidden_size) if m.mel else None
    return Embedder(backbone, config.model.pooling, mel_rank, config.model.include_prompt), tokenizer


def _tokenizer(path: str | Path) -> Any:
    """The model's tokenizer, padding on the right (pooling finds the last token from the mask),
    with a pad token (decoders often have none: their end-of-sequence token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _flat_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


# Settings that may change between a run and its resumption (they do not change the trajectory).
FREE_ON_RESUME: dict[str, Any] = {
    "out": True,
    "eval": True,
    "eval_template": True,
    "log_every": True,
    "save_every": True,
    "compile": True,
    "data": {"prefetch": True},
    "model": {"gradient_checkpointing": True},
}


def trajectory(config: TrainConfig) -> dict[str, Any]:
    """The config's settings that decide the training trajectory, as JSON-able values."""
    return config.model_dump(mode="json", exclude=FREE_ON_RESUME)


def save(
    out: Path,
    step: int,
    model: Embedder,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    grid: Any,
    config: TrainConfig,
) -> Path:
    """Write `out/checkpoints/step-NNNNNNN/` (via a temporary folder), then point `latest.json` at it."""
    folder = out / "checkpoints" / f"step-{step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, rest = _flat_optimizer(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from the GPU's generator
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / "rng.safetensors")
    model.backbone.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    mel = model.mel
    info = {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "optimizer": rest,
        "pooling": model.pooling,
        "include_prompt": model.include_prompt,
        "mel_rank": mel.full_rank if mel else None,
        "ranks": grid.ranks,
        "layers": grid.layers,
        "dims": grid.dims,
        "config": trajectory(config),
    }
    (tmp / "trainer_state.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    (out / LATEST).write_text(json.dumps({"checkpoint": str(folder.relative_to(out))}))
    return folder


def latest(out: Path) -> Path | None:
    try:
        return out / json.loads((out / LATEST).read_text())["checkpoint"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def load(folder: str | Path) -> tuple[Embedder, Any]:
    """The model and tokenizer saved in a checkpoint folder."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    info = json.loads((folder / "trainer_state.json").read_text())
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder), torch_dtype=torch.float32)
    model = Embedder(backbone, info["pooling"], None, info.get("include_prompt", True))
    if info["mel_rank"]:
        old = backbone.get_input_embeddings().weight
        backbone.set_input_embeddings(
            FactorizedEmbedding(
                torch.zeros(old.shape[0], info["mel_rank"]), torch.zeros(info["mel_rank"], old.shape[1])
            )
        )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model, _tokenizer(folder)


def resume(out: Path, model: Embedder, optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> int:
    """Load the latest checkpoint of `out` into the given objects; the step to continue from (0 if none).
    A checkpoint of other settings is refused: resuming it would silently train (or skip) another run."""
    folder = latest(out)
    if folder is None:
        return 0
    info = json.loads((folder / "trainer_state.json").read_text())
    saved, now = _flat(info.get("config", {})), _flat(trajectory(config))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        raise ValueError(
            f"{out} holds a checkpoint ({folder.name}) of other settings ({', '.join(changed)}): "
            f"train into another `out`, or delete {out} to start again"
        )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    tensors = load_file(folder / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(info["optimizer"]["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    rng = load_file(folder / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return int(info["step"])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (data.max_length ...), to name what changed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
