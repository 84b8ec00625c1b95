"""Quality filters: the checks a training pair needs (`pipeline/ops/pair_filters.py`) and any of
datatrove's document filters by class name (`pipeline/ops/datatrove_filters.py`), in the order listed.

A row that fails a filter is dropped with the reason `filter:<name>` (datatrove's filters add their
own reason: `filter:C4QualityFilter:lorem_ipsum`) and the field in `_detail`; the first filter a row
fails decides. The ledger counts the drops per filter, reason, source and language (`python -m
pipeline stats RUN --filters`). Every script is counted right: words by the tokenizer datatrove
assigns to a language where the script has no spaces, characters where there is none.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from core.record import FLAGS
from core.settings import Strict, example
from core.tasks import TaskName
from pipeline.engine.stage import Stage, StageConfig
from pipeline.ops import pair_filters
from pipeline.ops.arrow import flag_lists, replace_column
from pipeline.ops.datatrove_filters import DatatroveFilter, check_args

TextField = Literal["query", "positive"]
PREFIX = "filter:"


class NonText(Strict):
    fields: list[TextField] = Field(["query", "positive"], description="Fields that must hold text, not only a URL, number or markup.")


class SameText(Strict):
    contained: bool = Field(True, description="Also drop a positive contained in its query (not only equal to it).")


class MinLength(Strict):
    words: dict[TaskName | Literal["*"], dict[TextField, int]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: {"*": {"query": 1, "positive": 1}, "retrieval": {"query": 1, "positive": 5}},
        description="Fewest words per task and field (`*`: every task not listed); characters in scripts with no word tokenizer.")


class LengthRatio(Strict):
    tasks: list[TaskName] = Field(["bitext"], description="Tasks whose two sides are translations.")  # type: ignore[valid-type]
    max_ratio: float = Field(2.5, gt=1, description="Most the sides' length ratio may differ from their languages' (FLORES) ratio, either way.")


class LanguagesDiffer(Strict):
    tasks: list[TaskName] = Field(["sts", "pair_classification"], description="Tasks whose query and positive share a language.")  # type: ignore[valid-type]


class ScriptMismatch(Strict):
    fields: list[TextField] = Field(["query", "positive"], description="Fields whose text must contain their language's script.")


# The pair filters written here: name -> (its settings, the check).
PAIR_FILTERS: dict[str, tuple[type[Strict], Any]] = {
    "non_text": (NonText, lambda b, s: pair_filters.non_text(b, s.fields)),
    "same_text": (SameText, lambda b, s: pair_filters.same_text(b, s.contained)),
    "min_length": (MinLength, lambda b, s: pair_filters.min_length(b, s.words)),
    "length_ratio": (LengthRatio, lambda b, s: pair_filters.length_ratio(b, s.tasks, s.max_ratio)),
    "languages_differ": (LanguagesDiffer, lambda b, s: pair_filters.languages_differ(b, s.tasks)),
    "script_mismatch": (ScriptMismatch, lambda b, s: pair_filters.script_mismatch(b, s.fields)),
}


class FilterSpec(BaseModel):
    """One filter: a pair filter of this project (its settings in `args`), or a datatrove filter by
    class name (its constructor's arguments in `args`, run on `fields`)."""

    model_config = example(name="C4QualityFilter", args={"filter_no_terminal_punct": False}, fields=["positive"]) | {"extra": "forbid"}

    name: str = Field(description=f"One of {', '.join(PAIR_FILTERS)}, or a datatrove filter class (GopherQualityFilter, C4QualityFilter, ...).")
    args: dict[str, Any] = Field(default_factory=dict, description="The filter's settings (datatrove: its constructor's arguments).")
    fields: list[TextField] = Field(["query", "positive"], description="Datatrove filters: the fields each text of which must pass.")

    @model_validator(mode="after")
    def _known(self) -> FilterSpec:
        if self.name in PAIR_FILTERS:
            PAIR_FILTERS[self.name][0].model_validate(self.args)  # its own errors: unknown keys, bad values
        else:
            check_args(self.name, self.args)
        return self


def default_filters() -> list[FilterSpec]:
    boilerplate = {"filter_no_terminal_punct": False, "min_num_sentences": 1, "min_words_per_line": -1}
    return [FilterSpec(name=n) for n in PAIR_FILTERS] + [FilterSpec(name="C4QualityFilter", args=boilerplate, fields=["positive"])]


class FilterConfig(StageConfig):
    model_config = example(stage="filter", filters=[{"name": "non_text"}, {"name": "length_ratio", "args": {"max_ratio": 3}},
                                                   {"name": "GopherRepetitionFilter", "fields": ["positive"]}])

    stage: Literal["filter"]
    filters: list[FilterSpec] = Field(default_factory=default_filters, description=(
        "The filters, in order (default: every pair filter, then datatrove's C4QualityFilter for boilerplate in positives)."))


class QualityFilter(Stage):
    name = "filter"
    config_model = FilterConfig
    reads = ("query_lang", "positive_lang")
    config: FilterConfig

    def setup(self) -> None:
        self.checks: list[tuple[str, Any]] = []
        for spec in self.config.filters:
            if spec.name in PAIR_FILTERS:
                model, check = PAIR_FILTERS[spec.name]
                self.checks.append((spec.name, (check, model.model_validate(spec.args))))
            else:
                self.checks.append((spec.name, DatatroveFilter(spec.name, spec.args, list(spec.fields))))

    def __call__(self, batch: pa.Table) -> pa.Table:
        reason: list[str | None] = [None] * batch.num_rows
        detail: list[str | None] = [None] * batch.num_rows
        skipped: list[tuple[int, str]] = []
        for name, check in self.checks:
            if isinstance(check, DatatroveFilter):
                reasons, details, unjudged = check(batch)
                skipped += [(r, name) for r in unjudged]
            else:
                run, settings = check
                reasons, details = (x.to_pylist() for x in run(batch, settings))
                reasons = [f"{name}:{r}" if r and r != name else r for r in reasons]
            for row, why in enumerate(reasons):
                if why and reason[row] is None:
                    reason[row], detail[row] = PREFIX + why, details[row]
        out = self.drop(batch, pa.array(reason, pa.string()), pa.array(detail, pa.string()))
        if skipped:
            rows = np.array([r for r, _ in skipped], np.int64)
            languages = batch.column("query_lang").take(pa.array(rows)).combine_chunks()
            out = replace_column(out, FLAGS, flag_lists(batch.num_rows, rows, pa.array([f"filter_skipped:{n}" for _, n in skipped]), languages))
        return out
