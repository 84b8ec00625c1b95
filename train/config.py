"""The trainer's YAML config, validated like a manifest (every problem reported with its line)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from core.settings import Strict, existing_path, from_manifest, load_yaml_model
from core.tasks import TASKS, TaskName


def query_last(template: str | None) -> str | None:
    """A query template is a prompt (the instruction) then `{query}`, as sentence-transformers' prompts are."""
    if template is not None and (template.count("{query}") != 1 or not template.endswith("{query}")):
        raise ValueError(f"must end with {{query}}, once (the instruction comes before it), got {template!r}")
    return template


class DataConfig(Strict):
    shards: list[str] = Field(
        min_length=1, description="Run folders (their shards/) or Parquet files/globs, relative to the config."
    )
    sampling: Literal["size", "temperature"] = Field(
        "size", description="Pick a batch's source by its size, or by size**alpha."
    )
    alpha: float = Field(0.5, gt=0, le=1, description="Exponent for temperature sampling.")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Multiplies a source's chance of a batch (after size or "
        "temperature); sources not named weigh 1, and 0 leaves a source out.",
    )
    batch_by: list[Literal["source", "query_lang", "positive_lang"]] = Field(
        ["source"],
        description="Columns every row of a batch shares: the source, and optionally the language (harder in-batch "
        "negatives: same-language passages, not other scripts); groups too small for a batch are pooled per source.",
    )
    shuffle_buffer: int = Field(10_000, ge=1, description="Rows per source held for shuffling.")
    template: str = Field(
        "Instruct: {instruction}\nQuery: {query}",
        description="Joins an instruction to its query; {query} alone when none.",
    )
    negatives: dict[str, int] = Field(
        default_factory=dict,
        description="Hard negatives per query by task (sampled each step from the "
        "row's list); tasks not named use none (stage 1: in-batch negatives only).",
    )
    in_batch: list[TaskName] = Field(
        default_factory=lambda: ["retrieval", "bitext", "sts", "pair_classification"],
        description="Tasks whose queries also score against every positive of the batch (all ranks).",
    )
    max_length: int = Field(128, ge=8, description="Tokens per text.")
    piece_tokens: int | None = Field(
        None,
        ge=8,
        description="Each side of a batch (queries, positives, negatives) is sorted by length "
        "and embedded in pieces of at most this many padded tokens, each padded to its own longest text "
        "(less padding, same embeddings); default 16384 on a GPU, 1024 on a CPU.",
    )
    prefetch: int | None = Field(
        None,
        ge=0,
        description="Steps read and tokenized ahead of training, in a background thread "
        "(0: in the loop); default 4 on a GPU, 0 on a CPU (whose cores would tokenize and train at once).",
    )

    @field_validator("shards")
    @classmethod
    def _resolve(cls, shards: list[str], info: ValidationInfo) -> list[str]:
        out = []
        for s in shards:
            path = from_manifest(s, info)
            if not path.exists() and not list(path.parent.glob(path.name)):
                raise ValueError(f"no run folder or Parquet file at {s!r} (looked for {path})")
            out.append(str(path.resolve()) if path.exists() else str(path))
        return out

    _template = field_validator("template")(query_last)

    @field_validator("batch_by")
    @classmethod
    def _source_first(cls, columns: list[str]) -> list[str]:
        if not columns or columns[0] != "source" or len(set(columns)) != len(columns):
            raise ValueError(
                f"must start with 'source' and name each column once, e.g. [source, query_lang] (got {columns})"
            )
        return columns

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be 0 or more (got {weights})")
        return weights

    @field_validator("negatives")
    @classmethod
    def _tasks(cls, negatives: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(negatives) - set(TASKS))
        if unknown or any(n < 0 for n in negatives.values()):
            raise ValueError(f"tasks {unknown} are unknown (tasks: {list(TASKS)}) or a count is negative")
        return negatives


class ModelConfig(Strict):
    path: str | None = Field(
        None, description="A local transformers model folder (encoder or decoder); a small model is built when empty."
    )
    pooling: Literal["mean", "cls", "last"] = Field(
        "mean", description="mean of tokens, the first token, or the last (decoders)."
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the model's dropout rates (0: deterministic steps)."
    )
    include_prompt: bool = Field(
        False,
        description="Mean pooling over the instruction's tokens too; false pools a query over its "
        "own tokens (the instruction still steers them through attention), like sentence-transformers' "
        "Pooling(include_prompt=False) with the instruction passed as the prompt.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the layers' activations in the backward pass: less memory "
        "for big models or batches, about a third more compute.",
    )
    small: dict[str, int] = Field(
        default_factory=lambda: {"vocab_size": 8000, "hidden": 128, "layers": 4, "heads": 4},
        description="Size of the model built when `path` is empty (tokenizer trained on the shards).",
    )
    small_init: Literal["pass_through", "random"] = Field(
        "pass_through",
        description="The built model's start: pass_through zeroes position embeddings and every residual branch "
        "(the untrained model is the mean of its token vectors, a lexical retriever, and training grows the layers "
        "from there); random: BERT's own initialisation (near-identical embeddings for every text, cosine ~0.98, "
        "so contrastive training starts from a flat softmax).",
    )

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None:
            return None
        resolved = from_manifest(path, info)
        if not (resolved / "config.json").exists():
            raise ValueError(f"{path!r} is not a transformers model folder (no config.json in {resolved})")
        return str(resolved.resolve())


class MatryoshkaConfig(Strict):
    dims: list[int] | None = Field(
        None, description="MRL: nested output dims (default: 8, 16, ... up to the model's width)."
    )
    dim_weights: list[float] | None = Field(
        None, description="Weight per dim (default: n-th largest dim 1/(n*sqrt(d/dim)))."
    )
    layers: list[int] | None = Field(
        None, description="MLL: layers whose pooled output gets a loss (default: 1, 2, 4, ... and the last)."
    )
    layer_weights: list[float] | None = Field(None, description="Weight per layer (default: equal, averaged).")
    sample_layers: int | None = Field(
        None, ge=1, description="Instead of every layer: k layers per step (the last always)."
    )
    ranks: list[int] | None = Field(
        None, description="MEL: nested ranks of the factorised embedding (default: 64, 128, 256, ... r)."
    )
    rank_weights: list[float] | None = Field(
        None,
        description="Probability weight per rank (default: proportional to the rank, "
        "as in ML-Embed; equal weights train the smallest ranks more).",
    )
    rank: int | None = Field(None, ge=1, description="Full rank r of the factorisation (default: the model's width).")
    mel: bool = Field(True, description="Factorise the token embedding (MEL); false keeps the model's own.")

    @model_validator(mode="after")
    def _one_weight_each(self) -> MatryoshkaConfig:
        for values, weights in (("dims", "dim_weights"), ("layers", "layer_weights"), ("ranks", "rank_weights")):
            w = getattr(self, weights)
            if w is not None and (getattr(self, values) is None or len(w) != len(getattr(self, values)) or min(w) <= 0):
                raise ValueError(f"`{weights}` needs `{values}` set and one positive weight per entry (got {w})")
        return self


class TrainConfig(Strict):
    out: str = Field(description="Output folder: checkpoints, logs, eval report (relative to the config).")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    matryoshka: MatryoshkaConfig = Field(default_factory=MatryoshkaConfig)
    init_from: str | None = Field(None, description="A checkpoint (folder) to start from, e.g. stage 1's for stage 2.")
    batch_size: int = Field(64, ge=2, description="Global batch (all ranks, all accumulation steps).")
    grad_accum: int = Field(1, ge=1)
    grad_cache_chunk: int | None = Field(
        None, ge=1, description="GradCache: embed in chunks of this many texts, so big batches fit."
    )
    steps: int = Field(1000, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1, description="Warm-up, as a fraction of the steps.")
    clip: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0)
    symmetric: bool = Field(
        False, description="In-batch tasks: also each positive against every query of the batch (both directions)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp32."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (dynamic shapes); off by default: docs/training.md says when it pays.",
    )
    seed: int = 0
    log_every: int = Field(10, ge=1)
    save_every: int = Field(200, ge=1)
    eval: str | None = Field(
        None,
        description="Held-out pairs (folder of XQuAD-R-style .jsonl.gz: question, context) to evaluate at the end.",
    )
    eval_template: str | None = Field(
        None, description="Query template for the evaluation, e.g. with the retrieval instruction ({query})."
    )

    _exists = field_validator("init_from", "eval")(existing_path)
    _template = field_validator("eval_template")(query_last)

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")
        return self


def load_config(path: str | Path) -> TrainConfig:
    config = load_yaml_model(path, TrainConfig, "training config")
    config.out = str((Path(path).parent / config.out).resolve())
    return config
