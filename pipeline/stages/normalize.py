"""Text normalisation: Unicode form, control characters, whitespace. Columnar (pyarrow compute)."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from core.settings import example
from pipeline.engine.stage import Stage, StageConfig
from pipeline.ops.arrow import HSPACE, HSPACE_TO_COLLAPSE, map_list_values, replace_column, replace_regex

# C0/C1 control characters except tab and newline; also BOM and the Unicode replacement of NUL.
_CONTROL = r"[\x{00}-\x{08}\x{0B}\x{0C}\x{0E}-\x{1F}\x{7F}-\x{9F}\x{FEFF}]"


class NormalizeConfig(StageConfig):
    model_config = example(stage="normalize", unicode_form="NFKC")

    stage: Literal["normalize"]
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_control: bool = True
    collapse_whitespace: bool = True  # runs of spaces/tabs -> one space; 3+ newlines -> 2; trim ends
    fields: list[Literal["query", "positive", "negatives", "instruction"]] = [
        "query",
        "positive",
        "negatives",
        "instruction",
    ]


class Normalize(Stage[NormalizeConfig]):
    """Normalises text fields; drops rows whose query (or positive, if present) ends up empty."""

    config_model = NormalizeConfig
    writes = ("query", "positive", "negatives", "instruction")

    @classmethod
    def columns_read(cls, config: NormalizeConfig) -> tuple[str, ...]:
        """The fields it normalises (negatives only while they are inline texts, which the validator checks)."""
        return tuple(config.fields)

    def _text(self, arr: pa.Array) -> pa.Array:
        cfg = self.config
        if cfg.unicode_form != "none":
            arr = pc.utf8_normalize(arr, form=cfg.unicode_form)
        if cfg.strip_control:
            arr = replace_regex(arr, _CONTROL, "")
        if cfg.collapse_whitespace:
            arr = replace_regex(arr, r"\r\n?", "\n")
            arr = replace_regex(arr, HSPACE + "+", " ", HSPACE_TO_COLLAPSE)
            arr = replace_regex(arr, r" ?\n ?", "\n", r" \n|\n ")
            arr = replace_regex(arr, r"\n{3,}", "\n\n")
            arr = pc.utf8_trim_whitespace(arr)
        return arr

    def __call__(self, batch: pa.Table) -> pa.Table:
        for field in self.config.fields:
            col = batch.column(field).combine_chunks()
            new = map_list_values(col, self._text) if field == "negatives" else self._text(col)
            batch = replace_column(batch, field, new)
        empty = pc.or_(
            pc.equal(pc.utf8_length(batch.column("query")), 0),
            pc.fill_null(pc.equal(pc.utf8_length(batch.column("positive")), 0), False),
        )  # null positive: not empty
        return self.drop(batch, pc.if_else(empty, pa.scalar("empty_after_normalize"), pa.scalar(None, pa.string())))
