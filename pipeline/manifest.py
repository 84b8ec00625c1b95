"""Manifests: YAML validated by typed models before anything runs.

Errors name the file, the line and the key path (`stage1.yaml:14: sources[0].colums: ...`).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.stage import STAGES, existing_path, from_manifest, matching_files
from sources.tasks import MAPPABLE_FIELDS, TASK_SPECS

import pipeline.stages  # noqa: F401  (registers the built-in stages before the union is built)

FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf", "text")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".txt": "text"}
_COMPRESSIONS = (".gz", ".zst")


M = TypeVar("M", bound=BaseModel)


class ManifestError(Exception):
    """An invalid manifest; `str()` lists every problem as `file:line: key.path: message`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySettings(_Strict):
    address: str | None = Field(None, description="Address of an existing cluster ('auto', 'HOST:PORT'); embedded local Ray when empty.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded cluster (default: all of this machine's).")
    object_store_mb: int | None = Field(None, ge=128, description="Object store size of the embedded cluster in MiB.")


class CsvOptions(_Strict):
    header: bool = Field(True, description="First line holds column names.")
    column_names: list[str] | None = Field(None, description="Column names when the file has no header.")


def infer_format(path: str) -> str | None:
    """`jsonl`, `csv`, ... from a path's extension, looking through .gz/.zst."""
    p = path.lower()
    for comp in _COMPRESSIONS:
        p = p.removesuffix(comp)
    return _EXTENSIONS.get(Path(p).suffix)


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique name; becomes the `source` column and shard folder.")
    task: Literal["retrieval", "classification", "clustering", "sts", "pair_classification", "bitext"]
    format: Literal["jsonl", "csv", "tsv", "parquet", "hf", "text"] | None = Field(
        None, description="Inferred from the extension when empty. `text`: plain text with columns `text` and `path`."
    )
    text_unit: Literal["line", "file"] = Field("line", description="Format text: a row per non-blank line, or per file (documents, code files).")
    path: str = Field(description="File or glob (relative to the manifest), or a `datasets` folder / hub id when format is hf.")
    columns: dict[str, str] = Field(description="Record field -> source column, e.g. {query: question, positive: context}.")
    licence: str = Field(min_length=1, description="Licence of the data (SPDX id where there is one).")
    instruction: str | None = Field(None, description="Instruction stored with every record of this source.")
    encoding: str = Field("utf-8", description="Text encoding of the files; bytes that do not decode are quarantined.")
    csv: CsvOptions = Field(default_factory=CsvOptions)
    hf_config: str | None = Field(None, description="`datasets` config name (format hf).")
    split: str | None = Field(None, description="`datasets` split (format hf).")
    max_text_chars: int = Field(100_000, ge=1, description="Longer texts are quarantined as oversize.")
    max_record_bytes: int = Field(4 << 20, ge=64, description="Longer raw records (lines) are quarantined unparsed.")
    language: str | dict[Literal["query", "positive", "negatives"], str] | None = Field(
        None,
        description="Declared language of the texts: one label for all fields or one per field ({query: eng_Latn, positive: fra_Latn}); "
        "a label (xxx_Xxxx), a programming language (python, code:go) or a file name with a known extension. "
        "A `language` column (see `columns`) declares it per row instead.",
    )
    language_policy: Literal["trusted", "verified", "ignored"] = Field(
        "verified",
        description="trusted: use the declared language, no prediction; verified: predict, count (and optionally drop) confident "
        "disagreements; ignored: predict as if nothing were declared.",
    )

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, path: str, info: ValidationInfo) -> str:
        """Make the path absolute (relative to the manifest) and check that it matches files."""
        if (info.data.get("format") or infer_format(path)) == "hf":
            local = from_manifest(path, info)
            return str(local.resolve()) if local.exists() else path  # else: a hub id
        return matching_files(path, info)

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown record field(s) {unknown}; mappable fields: {list(MAPPABLE_FIELDS)}")
        return columns

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}") from None
        return encoding

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str | dict[str, str] | None) -> str | dict[str, str] | None:
        from langid.declared import declared_label

        if language is None:
            return None
        values = {"*": language} if isinstance(language, str) else language
        parsed = {}
        for field, value in values.items():
            parsed[field] = declared_label(value)
            if parsed[field] is None:
                raise ValueError(f"{value!r} is not a language label (xxx_Xxxx), a programming language or a file name with a known extension")
        return parsed["*"] if isinstance(language, str) else parsed

    def declared_language(self, field: str) -> str | None:
        """The label this source declares for a text field (`query`, `positive`, `negatives`)."""
        if isinstance(self.language, dict):
            return self.language.get(field)
        return self.language

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        missing = [f for f in TASK_SPECS[self.task].required if f not in self.columns]
        if missing:
            raise ValueError(f"task {self.task!r} needs columns for {missing}")
        if self.format is None:
            self.format = infer_format(self.path)
            if self.format is None:
                raise ValueError(f"cannot infer the format of {self.path!r}: set `format` to one of {list(FORMATS)}")
        return self

    def files(self) -> list[Path]:
        """The files this source reads, sorted so a run is deterministic."""
        return sorted(Path(p) for p in glob.glob(self.path, recursive=True) if Path(p).is_file())


class ShardSettings(_Strict):
    rows_per_shard: int = Field(100_000, ge=1, description="Rows per Parquet file (the last file of a partition may hold fewer).")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    compression_level: int | None = Field(None, description="Codec level (zstd 1-22); the codec's default when empty.")
    partition_by: list[Literal["source", "task", "query_lang"]] = Field(
        default_factory=lambda: ["source"], description="One folder per value, so a training batch can come from one partition."
    )


class StatsSettings(_Strict):
    enabled: bool = Field(True, description="Compute the statistics (stats/) and the dashboard at the end of the run.")
    tokenizer: str | None = Field(None, description="A `tokenizers` tokenizer.json (or a folder with one), relative to the manifest, for "
                                  "token counts; words by a script-aware rule when empty.")
    reference: str | None = Field(None, description="CSV with columns language,count (another corpus, a target mix) to compare shares with.")
    samples_per_language: int = Field(3, ge=0, description="Sample records per language shown on the dashboard.")

    _exists = field_validator("tokenizer", "reference")(existing_path)


def _stage_union() -> Any:
    configs = tuple(cls.config_model for cls in STAGES.values())
    return Annotated[Union[configs], Field(discriminator="stage")]  # type: ignore[valid-type]


class Manifest(_Strict):
    output: str = Field(description="Run folder (relative to the manifest): checkpoints, ledger, quarantine, shards.")
    ray: RaySettings = Field(default_factory=RaySettings)
    sources: list[SourceConfig] = Field(min_length=1)
    stages: list[_stage_union()] = Field(default_factory=list)  # type: ignore[valid-type]
    shards: ShardSettings = Field(default_factory=ShardSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)

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
                raise ValueError(f"stages[{i}] ({stage.stage}) names sources the manifest lacks: {unknown} (sources: {names})")
        return stages


# --- loading with line numbers -------------------------------------------------------------------


def _locate(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, tuple[Any, ...]]:
    """1-based line of the YAML node at `loc`, and `loc` without the parts the YAML lacks (pydantic
    adds the tag of a tagged union, e.g. `stages[0].normalize.nfc`, which no user wrote)."""
    line = node.start_mark.line + 1 if node is not None else None
    written: list[Any] = []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                if part in STAGES:
                    continue
                written.append(part)  # a missing key: the error belongs to the enclosing mapping
                continue
            key, node = match
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        written.append(part)
    return line, tuple(written)


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[int, str]]:
    """PyYAML keeps the last of two equal keys silently; a manifest with one is almost surely wrong."""
    found: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                found.append((key.start_mark.line + 1, f"{path}{key.value}: duplicate key"))
            seen.add(key.value)
            found += _duplicate_keys(value, f"{path}{key.value}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path.rstrip('.')}[{i}].")
    return found


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_yaml_model(path: str | Path, model: type[M], what: str = "manifest") -> M:
    """Parse a YAML file and validate it as `model`; raise ManifestError listing every problem as
    `file:line: key.path: message` (also used for the trainer's configs)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read {what}: {exc}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ManifestError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML: {exc.problem}") from None
    problems = [f"{path}:{line}: {msg}" for line, msg in _duplicate_keys(node)]
    if not isinstance(data, dict):
        problems.append(f"{path}:1: the {what} must be a mapping of settings")
    if problems:
        raise ManifestError("\n".join(problems))
    try:
        return model.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line, loc = _locate(node, tuple(err["loc"]))
            lines.append(f"{path}:{line}: {_format_loc(loc)}: {err['msg']}")
        raise ManifestError("\n".join(lines)) from None


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest; raise ManifestError listing every problem with its line."""
    manifest = load_yaml_model(path, Manifest)
    manifest.output = str((Path(path).parent / manifest.output).resolve())
    return manifest


def json_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()
