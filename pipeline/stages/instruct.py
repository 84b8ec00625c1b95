"""Task instructions: the text that tells an instructed embedding model what the query is for.

The instruction is stored apart from the query (`instruction`), never joined to it here: the trainer
decides how to join them (e.g. `Instruct: {instruction}\nQuery: {query}`), so one corpus serves
models with different prompt formats.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import Field

from core.record import WORK_SCHEMA
from core.settings import example
from core.tasks import TaskName
from pipeline.engine.stage import Stage, StageConfig


class InstructConfig(StageConfig):
    model_config = example(
        stage="instruct",
        tasks={"retrieval": "Given a question, retrieve Wikipedia passages that answer the question"},
        sources={"stsb": "Retrieve semantically similar text"},
    )

    stage: Literal["instruct"]
    tasks: dict[TaskName, str] = Field(default_factory=dict, description="Instruction per task.")
    sources: dict[str, str] = Field(default_factory=dict, description="Instruction per source (wins over the task's).")
    overwrite: bool = Field(False, description="Replace an instruction a source row already carries.")

    def unknown_sources(self, names: set[str]) -> list[str]:
        return [n for n in self.sources if n not in names]


class Instruct(Stage[InstructConfig]):
    """Sets `instruction` from the source's entry, else the task's; rows matched by neither keep theirs."""

    config_model = InstructConfig
    writes = ("instruction",)

    def __call__(self, batch: pa.Table) -> pa.Table:
        by_source = pl.col("source").replace_strict(self.config.sources, default=None, return_dtype=pl.String)
        by_task = pl.col("task").replace_strict(dict(self.config.tasks), default=None, return_dtype=pl.String)
        given = pl.coalesce(by_source, by_task)
        chosen = (
            pl.coalesce(given, pl.col("instruction"))
            if self.config.overwrite
            else pl.coalesce(pl.col("instruction"), given)
        )
        return pl.from_arrow(batch).with_columns(chosen.alias("instruction")).to_arrow().cast(WORK_SCHEMA)  # type: ignore[union-attr]
