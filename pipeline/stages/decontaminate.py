"""Remove (or flag) training records that overlap a named evaluation set, so scores stay honest.

A text overlaps an evaluation set when, after normalisation (lower case, punctuation removed,
spaces collapsed), it equals one of the set's texts, or when at least `min_overlap` of its n-grams
occur in the set: word 13-grams where scripts separate words, character 13-grams for Han, kana,
Thai and the other unspaced scripts (the shingles of `pipeline/ops/minhash.py`). Texts shorter than n
tokens are matched exactly only, so a short, common query cannot match by chance.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core import storage
from core.record import FLAG_TYPE, FLAGS
from core.settings import example, from_manifest, matching_files
from pipeline.engine.stage import Stage, StageConfig
from pipeline.ops.arrow import replace_column
from pipeline.ops.minhash import Shingling, shingle_hashes
from sources.reader import load_hf, open_binary


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Named in drop reasons and the ledger: `eval_overlap:<name>`.",
    )
    format: Literal["file", "hf"] = Field(
        "file", description="file: JSONL, CSV, TSV, Parquet or plain text; hf: a `datasets` folder or hub id."
    )
    path: str = Field(
        description="File or glob, relative to the manifest (one text per line for plain text); "
        "for hf a saved or data folder, or a hub id."
    )
    columns: list[str] = Field(
        default_factory=lambda: ["text"],
        min_length=1,
        description="Text columns of the evaluation set (ignored for plain text).",
    )
    hf_config: str | None = Field(None, description="`datasets` config name (format hf).")
    split: str | None = Field(None, description="`datasets` split (format hf).")

    @field_validator("path")
    @classmethod
    def _files_exist(cls, path: str, info: ValidationInfo) -> str:
        if info.data.get("format") == "hf":  # a local folder, or else a hub id (looked up when the stage starts)
            if storage.is_url(path):
                raise ValueError(
                    f"{path!r}: format hf reads a local folder or a hub id; for files in object storage use format file"
                )
            local = from_manifest(path, info)
            return str(local.absolute()) if local.exists() else path
        return matching_files(path, info)

    def texts(self) -> list[str]:
        if self.format == "hf":
            ds = load_hf(self)
            missing = [c for c in self.columns if c not in ds.column_names]
            if missing:
                raise ValueError(
                    f"evaluation set {self.name!r}: {self.path} has no column {missing} (columns: {ds.column_names})"
                )
            return [t for c in self.columns for t in ds[c] if t]
        out: list[str] = []
        for file in storage.glob(self.path):
            name = file.lower().removesuffix(".gz").removesuffix(".zst")
            if name.endswith((".txt", ".text")):
                with open_binary(file) as f:
                    out += [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
                continue
            # polars reads local files itself
            data = io.BytesIO(open_binary(file).read()) if storage.is_url(file) else file
            if name.endswith(".parquet"):
                frame = pl.read_parquet(data)
            elif name.endswith((".csv", ".tsv")):
                frame = pl.read_csv(
                    data,
                    separator="\t" if name.endswith(".tsv") else ",",
                    quote_char=None if name.endswith(".tsv") else '"',
                )
            else:
                frame = pl.read_ndjson(data)
            for column in self.columns:
                if column not in frame.columns:
                    raise ValueError(
                        f"evaluation set {self.name!r}: {file} has no column {column!r} (columns: {frame.columns})"
                    )
                out += [t for t in frame[column].cast(pl.String).to_list() if t]
        return out


class DecontaminateConfig(StageConfig):
    model_config = example(
        stage="decontaminate",
        eval_sets=[
            {
                "name": "xquad_r_heldout",
                "path": "samples/xquad_r_heldout/*.jsonl.gz",
                "columns": ["question", "context"],
            }
        ],
    )

    stage: Literal["decontaminate"]
    eval_sets: list[EvalSet] = Field(min_length=1, description="Evaluation sets whose texts must not be trained on.")
    fields: list[Literal["query", "positive", "negatives"]] = Field(
        default_factory=lambda: ["query", "positive"], min_length=1
    )
    n_words: int = Field(13, ge=1, description="Word n-gram size (spaced scripts).")
    n_chars: int = Field(13, ge=1, description="Character n-gram size (unspaced scripts).")
    min_overlap: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of a text's n-grams found in an evaluation set that counts as overlap."
    )
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop the row (reason `eval_overlap:<set>`), or keep it and flag it."
    )


class Decontaminate(Stage[DecontaminateConfig]):
    config_model = DecontaminateConfig

    @classmethod
    def columns_read(cls, config: DecontaminateConfig) -> tuple[str, ...]:
        """The fields it compares with the evaluation sets (negatives only while they are inline texts,
        which the validator checks)."""
        return tuple(config.fields)

    def setup(self) -> None:
        """The evaluation sets' hashes, built once per worker."""
        config = self.config
        self.shingling = Shingling("auto", config.n_words, config.n_chars)
        self.sets: list[tuple[str, np.ndarray, np.ndarray]] = []  # name, exact keys, n-grams of long-enough texts
        for eval_set in config.eval_sets:
            sh = shingle_hashes(pa.array(eval_set.texts(), pa.string()), self.shingling)
            full = np.repeat(~sh.short, np.diff(sh.offsets))
            self.sets.append((eval_set.name, np.unique(sh.normalised[sh.normalised != 0]), np.unique(sh.hashes[full])))

    def _matches(self, texts: pa.Array) -> tuple[list[str | None], list[str | None]]:
        """Per text: the first evaluation set it overlaps (or None) and why."""
        found: list[str | None] = [None] * len(texts)
        why: list[str | None] = [None] * len(texts)
        if not len(texts):
            return found, why
        sh = shingle_hashes(texts, self.shingling)
        # The one shingle of a text shorter than n is the whole text: matched exactly only.
        full = np.repeat(~sh.short, np.diff(sh.offsets))
        owner = np.repeat(np.arange(len(texts)), np.diff(sh.offsets))
        total = np.bincount(owner, weights=full, minlength=len(texts))
        for name, exact, ngrams in self.sets:
            shared = np.bincount(owner, weights=np.isin(sh.hashes, ngrams) & full, minlength=len(texts))
            share = np.divide(shared, total, out=np.zeros(len(texts)), where=total > 0)
            is_exact = np.isin(sh.normalised, exact)
            for i in np.flatnonzero(is_exact | (share >= self.config.min_overlap)).tolist():
                if found[i] is None:
                    found[i] = name
                    why[i] = "exact match" if is_exact[i] else f"{share[i]:.0%} of its n-grams"
        return found, why

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        hit: list[str | None] = [None] * n
        detail: list[str | None] = [None] * n
        for field in self.config.fields:
            column = batch.column(field).combine_chunks()
            if field == "negatives":
                lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
                owner = np.repeat(np.arange(n), lengths)
                column = pc.list_flatten(column)
            else:
                owner = np.arange(n)
            found, why = self._matches(pc.fill_null(column, ""))
            for j, name in enumerate(found):
                i = int(owner[j])
                if name is not None and hit[i] is None:
                    hit[i] = name
                    detail[i] = f"{field}: {why[j]} in evaluation set {name}"
        reasons = [None if h is None else f"eval_overlap:{h}" for h in hit]
        if self.config.action == "drop":
            return self.drop(batch, reasons, detail)
        lang = batch.column("query_lang").to_pylist()
        flags = [[{"reason": r, "language": lang[i] or "und"}] if r else None for i, r in enumerate(reasons)]
        return replace_column(batch, FLAGS, pa.array(flags, pa.list_(FLAG_TYPE)))
