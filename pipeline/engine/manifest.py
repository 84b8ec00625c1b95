"""Manifests: YAML validated by typed models before anything runs.

Errors name the file, the line and the key path (`stage1.yaml:14: sources[0].colums: ...`). The
model is built from a stage registry (`pipeline/engine/stage.py`), so the manifest knows every stage
registered when it is loaded, and the stages' declared columns are checked in order: a stage that
reads a column no earlier stage writes fails with its line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from core import storage
from core.passages import NEGATIVE_IDS, NEGATIVES, POSITIVE_ID
from core.record import COLUMNS
from core.settings import (
    ConfigError,
    Strict,
    example,
    existing_path,
    line_of,
    load_yaml_model,
)
from core.tasks import POOL_TASKS
from pipeline.engine.stage import Registry, StageConfig
from sources.config import SourceConfig

# Record columns every row has from ingestion on (filled, or null where the source has no value).
INGESTED = (
    *(
        c
        for c in COLUMNS
        if not c.endswith(("_lang", "_lang_conf"))
        and c not in ("cross_lingual", "dup_count", "dup_cluster", "near_dup_count", POSITIVE_ID, NEGATIVE_IDS)
    ),
    NEGATIVES,
)


class RaySettings(Strict):
    model_config = example(address="auto")

    address: str | None = Field(
        None, description="Address of an existing cluster ('auto', 'HOST:PORT'); embedded local Ray when empty."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the embedded cluster (default: all of this machine's)."
    )
    object_store_mb: int | None = Field(None, ge=128, description="Object store size of the embedded cluster in MiB.")
    # 1M: on 2 cores a 300k-row run is 1.19x a plain script in process and 0.86x on Ray
    # (bench/pipeline_overhead.py); Ray's start and per-step costs pay off on larger inputs and clusters.
    in_process_rows: int = Field(
        1_000_000,
        ge=0,
        description="Without an address, a step whose input has at most this many rows runs in process (its "
        "row-local stages in one worker process per CPU): the same results, none of a distributed step's fixed cost; "
        "0: every step on Ray.",
    )


class ShardSettings(Strict):
    model_config = example(rows_per_shard=100000, compression="zstd", partition_by=["source"])

    rows_per_shard: int = Field(
        100_000, ge=1, description="Rows per Parquet file (the last file of a partition may hold fewer)."
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    compression_level: int | None = Field(None, description="Codec level (zstd 1-22); the codec's default when empty.")
    partition_by: list[Literal["source", "task", "query_lang"]] = Field(
        default_factory=lambda: ["source"],
        description="One folder per value, so a training batch can come from one partition.",
    )


class StatsSettings(Strict):
    model_config = example(tokenizer="tokenizer.json", reference="target_mix.csv")

    enabled: bool = Field(True, description="Compute the statistics (stats/) and the dashboard at the end of the run.")
    tokenizer: str | None = Field(
        None,
        description="A `tokenizers` tokenizer.json (or a folder with one), relative to the manifest, for "
        "token counts; words by a script-aware rule when empty.",
    )
    reference: str | None = Field(
        None, description="CSV with columns language,count (another corpus, a target mix) to compare shares with."
    )
    samples_per_language: int = Field(3, ge=0, description="Sample records per language shown on the dashboard.")

    _exists = field_validator("tokenizer", "reference")(existing_path)


class Manifest(Strict):
    """A validated manifest. `stages` holds the registered stages' configs (see `manifest_model`)."""

    model_config = example(
        output="../runs/mine",
        sources=[
            {
                "name": "qa",
                "task": "retrieval",
                "path": "data/qa.jsonl",
                "columns": {"query": "question", "positive": "answer"},
                "licence": "CC-BY-4.0",
            }
        ],
        stages=[{"stage": "normalize"}, {"stage": "langid"}, {"stage": "exact_dedup"}, {"stage": "near_dedup"}],
    )

    output: str = Field(
        description="Run folder (relative to the manifest), or a URL in object storage (s3://BUCKET/PATH): "
        "checkpoints, ledger, quarantine, shards."
    )
    ray: RaySettings = Field(
        default_factory=RaySettings, description="Where steps run: in process, an embedded Ray, or a cluster."
    )
    sources: list[SourceConfig] = Field(
        min_length=1, description="The inputs: files, globs or datasets, each mapped onto the record."
    )
    stages: list[StageConfig] = Field(
        default_factory=list, description="The stages, in the order they run (one entry per stage, `stage:` naming it)."
    )
    checkpoint: Literal["fused", "every_step"] = Field(
        "fused",
        description="fused: consecutive row-local stages run in one pass with one checkpoint after the group "
        "(a stage's `checkpoint: true` still ends a group after it); every_step: a checkpoint after every stage "
        "(finer resume, slower).",
    )
    keep_checkpoints: Literal["all", "last"] = Field(
        "all",
        description="all: every step's checkpoint stays (a changed stage re-runs from its own step); last: a step's "
        "checkpoint is removed once the next one is committed, so the disk holds about one step's rows "
        "(a changed stage re-runs from the last checkpoint kept before it, or from the sources).",
    )
    shards: ShardSettings = Field(default_factory=ShardSettings, description="The final Parquet shards.")
    stats: StatsSettings = Field(
        default_factory=StatsSettings, description="Per-language statistics and the dashboard."
    )

    @field_validator("output")
    @classmethod
    def _output_location(cls, output: str) -> str:
        """A URL must name a supported store (never a local folder named `s3:`); the run lock needs
        conditional writes, which the lease implements for S3."""
        if storage.is_url(output):
            output = storage.check_url(output)
            if not output.lower().startswith("s3://"):
                raise ValueError(
                    f"{output!r}: an output in object storage must be on S3 (s3://...): "
                    "the run's lease needs its conditional writes"
                )
            if importlib.util.find_spec("boto3") is None:
                raise ValueError(
                    f"{output!r}: an output in S3 needs boto3 for the run's lease: pip install 'ml-embed-data[s3]'"
                )
        return output

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self

    @field_validator("stages")
    @classmethod
    def _known_sources(cls, stages: list[Any], info: ValidationInfo) -> list[Any]:
        names = [s.name for s in info.data.get("sources") or []]
        for i, stage in enumerate(stages):
            unknown = stage.unknown_sources(set(names))
            if unknown:
                raise ValueError(
                    f"stages[{i}] ({stage.stage}) names sources the manifest lacks: {unknown} (sources: {names})"
                )
        tasks = {s.name: s.task for s in info.data.get("sources") or []}
        for i, stage in enumerate(stages):
            wrong = [n for n in stage.corpora() if n in tasks and tasks[n] not in POOL_TASKS]
            if wrong:
                raise ValueError(
                    f"stages[{i}] ({stage.stage}) uses {wrong} as a corpus, but a corpus source has `task: corpus`"
                )
        unused = sorted({n for n, t in tasks.items() if t in POOL_TASKS} - {n for s in stages for n in s.corpora()})
        if unused:
            raise ValueError(
                f"corpus sources {unused} are named by no stage (mine_negatives: `pool: corpus`, `corpus: NAME`)"
            )
        return stages


def manifest_model(registry: Registry) -> type[Manifest]:
    """The manifest model whose `stages` accept exactly the registry's stages (a tagged union)."""
    union = Annotated[Union[registry.configs()], Field(discriminator="stage")]  # type: ignore[valid-type]
    return create_model(
        "Manifest",
        __base__=Manifest,
        stages=(
            list[union],
            Field(default_factory=list, description="The stages, in the order they run; each names its `stage:`."),
        ),
    )  # type: ignore[valid-type]


def column_errors(manifest: Manifest, registry: Registry) -> list[tuple[int, str]]:
    """(stage index, message) for each stage that reads a column only a later stage writes. A column
    no stage writes is null for every row (e.g. `query_lang` without `langid`: one language, `und`)."""
    written = [set(registry[c.stage].writes) for c in manifest.stages]
    problems = []
    for i, config in enumerate(manifest.stages):
        available = set(INGESTED).union(*written[:i])
        for column in registry[config.stage].columns_read(config):
            later = next((j for j in range(i + 1, len(written)) if column in written[j]), None)
            if column not in available and later is not None:
                problems.append(
                    (
                        i,
                        f"stages[{i}] ({config.stage}) reads {column!r}, which stages[{later}] "
                        f"({manifest.stages[later].stage}) writes after it: put {manifest.stages[later].stage} first",
                    )
                )
        # Negatives stored by reference (`pipeline/ops/passage_store.py`) are no longer texts in the rows.
        stored = next((j for j in range(i) if NEGATIVE_IDS in written[j]), None)
        if NEGATIVES in registry[config.stage].columns_read(config) and stored is not None:
            problems.append(
                (
                    i,
                    f"stages[{i}] ({config.stage}) reads negative texts, which stages[{stored}] "
                    f"({manifest.stages[stored].stage}) stores by reference before it: put {config.stage} first",
                )
            )
    return problems


def load_manifest(path: str | Path, registry: Registry) -> Manifest:
    """Parse and validate a manifest; raise ConfigError listing every problem with its line."""
    manifest = load_yaml_model(path, manifest_model(registry), tags=registry.names())
    problems = column_errors(manifest, registry)
    if problems:
        raise ConfigError("\n".join(f"{path}:{line_of(path, ('stages', i))}: {msg}" for i, msg in problems))
    if not storage.is_url(manifest.output):
        manifest.output = str((Path(path).parent / manifest.output).resolve())
    return manifest


class _FactoryDefaults(GenerateJsonSchema):
    """The JSON Schema with the defaults that settings build with a factory (lists, maps): pydantic
    leaves them out, and the reference would show no default."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, list):  # settings objects as a manifest would write them: what differs from their defaults
            return [v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
        return value


def json_schema(registry: Registry) -> dict[str, Any]:
    return manifest_model(registry).model_json_schema(schema_generator=_FactoryDefaults)
