"""A source of a manifest: where its rows are, how its columns map to record fields, its licence and
declared language. Validated with the manifest, read by `sources/reader.py`."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from core import storage
from core.settings import Strict, example, from_manifest, matching_files
from core.tasks import MAPPABLE_FIELDS, TASK_SPECS, TaskName
from langid.declared import declared_label

FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
}
_COMPRESSIONS = (".gz", ".zst")


class CsvOptions(Strict):
    model_config = example(header=False, column_names=["sentence1", "sentence2", "score"], quoting="none")

    header: bool = Field(True, description="First line holds column names.")
    column_names: list[str] | None = Field(None, description="Column names when the file has no header.")
    quoting: Literal["csv", "none"] = Field(
        "csv",
        description=(
            'csv: fields may be quoted ("a, b", doubled quotes inside); '
            "none: quote characters are text, fields end only at the delimiter (TSV as most tools write it)."
        ),
    )


def infer_format(path: str) -> str | None:
    """`jsonl`, `csv`, ... from a path's extension, looking through .gz/.zst."""
    p = path.lower()
    for comp in _COMPRESSIONS:
        p = p.removesuffix(comp)
    return _EXTENSIONS.get(Path(p).suffix)


class SourceConfig(Strict):
    model_config = example(
        name="bitext",
        task="bitext",
        path="data/*.tsv.gz",
        columns={"query": "source", "positive": "target"},
        licence="CC-BY-SA-4.0",
        language={"query": "eng_Latn"},
        csv={"quoting": "none"},
    )

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Unique name; becomes the `source` column and shard folder.",
    )
    task: TaskName
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="Inferred from the extension when empty. `text`: plain text with columns `text` and `path`."
    )
    text_unit: Literal["line", "file"] = Field(
        "line", description="Format text: a row per non-blank line, or per file (documents, code files)."
    )
    path: str = Field(
        description="File or glob (relative to the manifest), or a `datasets` folder / hub id when format is hf."
    )
    columns: dict[str, str] = Field(
        description="Record field -> source column, e.g. {query: question, positive: context}."
    )
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
        description="Declared language of the texts: one label for all fields or one per field "
        "({query: eng_Latn, positive: fra_Latn}); "
        "a label (xxx_Xxxx), a programming language (python, code:go) or a file name with a known extension. "
        "A `language` column (see `columns`) declares it per row instead.",
    )
    language_policy: Literal["trusted", "verified", "ignored"] = Field(
        "verified",
        description="trusted: use the declared language, no prediction; "
        "verified: predict, count (and optionally drop) confident disagreements; "
        "ignored: predict as if nothing were declared.",
    )

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, path: str, info: ValidationInfo) -> str:
        """Make the path absolute (relative to the manifest) and check that it matches files."""
        if (info.data.get("format") or infer_format(path)) == "hf":
            if storage.is_url(path):
                raise ValueError(
                    f"{path!r}: format hf reads a local folder or a hub id; copy the data files and name their format"
                )
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
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}") from None
        return encoding

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if language is None:
            return None
        values = {"*": language} if isinstance(language, str) else language
        parsed = {}
        for field, value in values.items():
            parsed[field] = declared_label(value)
            if parsed[field] is None:
                raise ValueError(
                    f"{value!r} is not a language label (xxx_Xxxx), "
                    "a programming language or a file name with a known extension"
                )
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

    def files(self) -> list[str]:
        """The files this source reads (local or in object storage), sorted so a run is deterministic."""
        return storage.glob(self.path)
