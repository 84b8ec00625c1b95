"""Quality filters: the checks a training pair needs (`pipeline/ops/pair_filters.py`) and any of
datatrove's document filters by class name (`pipeline/ops/datatrove_filters.py`), in the order listed.

A row whose query or positive fails a filter is dropped with the reason `filter:<name>` (datatrove's
filters add their own reason: `filter:C4QualityFilter:lorem_ipsum`) and the field in `_detail`; the
first filter a row fails decides. A negative that fails a filter applied to `negatives` leaves its
row's list (with its id and score), flagged `filter_negative:<name>`. The ledger counts the drops per
filter, reason, source and language (`python -m pipeline stats RUN --filters`). Words are counted by
the tokenizer datatrove assigns to a language where the script has no spaces, characters where none
works here (`pipeline/ops/words.py`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, model_validator

from core.passages import NEGATIVE_IDS, NEGATIVES
from core.record import FLAGS
from core.settings import Strict, example
from core.tasks import TaskName
from pipeline.engine.stage import Stage, StageConfig
from pipeline.ops import pair_filters
from pipeline.ops.arrow import flag_lists, replace_column
from pipeline.ops.datatrove_filters import DatatroveFilter, check_args

TextField = Literal["query", "positive"]
AnyField = Literal["query", "positive", "negatives"]
PREFIX = "filter:"
NEGATIVE_FLAG = "filter_negative:"


class NonText(Strict):
    fields: list[AnyField] = Field(
        ["query", "positive", "negatives"], description="Fields that must hold text, not only a URL, number or markup."
    )


class SameText(Strict):
    contained: bool = Field(True, description="Also drop a positive contained in its query (not only equal to it).")
    tasks: list[TaskName] = Field(
        ["retrieval", "bitext"],
        description="Tasks whose positive must differ from its query "
        "(not STS or pair classification, where an identical pair is a labelled example).",
    )  # type: ignore[valid-type]


class MinLength(Strict):
    words: dict[TaskName | Literal["*"], dict[TextField, int]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: {"*": {"query": 1, "positive": 1}, "retrieval": {"query": 1, "positive": 5}},
        description="Fewest words per task and field (`*`: every task not listed); "
        "characters in scripts with no word tokenizer.",
    )


class LengthRatio(Strict):
    tasks: list[TaskName] = Field(["bitext"], description="Tasks whose two sides are translations.")  # type: ignore[valid-type]
    max_ratio: float = Field(
        3.0,
        gt=1,
        description="Most the sides' length ratio may differ from their languages' (FLORES) ratio, either way.",
    )


class LanguagesDiffer(Strict):
    tasks: list[TaskName] = Field(
        ["sts", "pair_classification"], description="Tasks whose query and positive share a language."
    )  # type: ignore[valid-type]
    min_confidence: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Language-ID confidence both sides need to count as different (a declared language is sure).",
    )


class ScriptMismatch(Strict):
    fields: list[TextField] = Field(
        ["query", "positive"], description="Fields whose text must be in their language's script."
    )
    min_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Least share of a text's letters in its language's script (a Han character counts as two letters).",
    )


# The pair filters written here: name -> (its settings, the check).
PAIR_FILTERS: dict[str, tuple[type[Strict], Any]] = {
    "non_text": (NonText, lambda b, s: pair_filters.non_text(b, s.fields)),
    "same_text": (SameText, lambda b, s: pair_filters.same_text(b, s.contained, s.tasks)),
    "min_length": (MinLength, lambda b, s: pair_filters.min_length(b, s.words)),
    "length_ratio": (LengthRatio, lambda b, s: pair_filters.length_ratio(b, s.tasks, s.max_ratio)),
    "languages_differ": (LanguagesDiffer, lambda b, s: pair_filters.languages_differ(b, s.tasks, s.min_confidence)),
    "script_mismatch": (ScriptMismatch, lambda b, s: pair_filters.script_mismatch(b, s.fields, s.min_share)),
}


class FilterSpec(BaseModel):
    """One filter: a pair filter of this project (its settings in `args`), or a datatrove filter by
    class name (its constructor's arguments in `args`, run on `fields`)."""

    model_config = example(name="C4QualityFilter", args={"filter_no_terminal_punct": False}, fields=["positive"]) | {
        "extra": "forbid"
    }

    name: str = Field(
        description=f"One of {', '.join(PAIR_FILTERS)}, "
        "or a datatrove filter class (GopherQualityFilter, C4QualityFilter, ...)."
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="The filter's settings (datatrove: its constructor's arguments)."
    )
    fields: list[AnyField] = Field(
        ["query", "positive"],
        description=(
            "Datatrove filters: the fields whose texts must pass "
            "(a failing negative leaves its row's list; the row stays)."
        ),
    )

    @model_validator(mode="after")
    def _known(self) -> FilterSpec:
        if self.name in PAIR_FILTERS:
            if "fields" in self.model_fields_set:
                raise ValueError(f"{self.name} is a pair filter: its fields, where it has any, go in `args`")
            PAIR_FILTERS[self.name][0].model_validate(self.args)  # its own errors: unknown keys, bad values
        else:
            self.args = check_args(self.name, self.args)
        return self


def default_filters() -> list[FilterSpec]:
    boilerplate = {"filter_no_terminal_punct": False, "min_num_sentences": 1, "min_words_per_line": -1}
    return [FilterSpec(name=n) for n in PAIR_FILTERS] + [
        FilterSpec(name="C4QualityFilter", args=boilerplate, fields=["positive"])
    ]


class FilterConfig(StageConfig):
    model_config = example(
        stage="filter",
        filters=[
            {"name": "non_text"},
            {"name": "length_ratio", "args": {"max_ratio": 3}},
            {"name": "GopherRepetitionFilter", "fields": ["positive"]},
        ],
    )

    stage: Literal["filter"]
    filters: list[FilterSpec] = Field(
        default_factory=default_filters,
        description=(
            "The filters, in order "
            "(default: every pair filter, then datatrove's C4QualityFilter for boilerplate in positives)."
        ),
    )


class QualityFilter(Stage[FilterConfig]):
    config_model = FilterConfig
    reads = ("query_lang", "positive_lang")  # and their confidences, written with them

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
        skipped: list[tuple[int, str, str]] = []  # (row, filter, field)
        for name, check in self.checks:
            reasons, details, unjudged = self._run(
                check, name, batch, ["query", "positive"], np.array([r is not None for r in reason], bool)
            )
            skipped += unjudged
            for row, why in enumerate(reasons):
                if why and reason[row] is None:
                    reason[row], detail[row] = PREFIX + why, details[row]
        out = self.drop(batch, pa.array(reason, pa.string()), pa.array(detail, pa.string()))
        out, flags = self._filter_negatives(out, np.array([r is not None for r in reason], bool))
        flags += [
            (row, f"filter_skipped:{name}", batch.column(f"{field}_lang")[row].as_py()) for row, name, field in skipped
        ]
        if flags:
            rows = np.array([f[0] for f in flags], np.int64)
            out = replace_column(
                out,
                FLAGS,
                flag_lists(
                    batch.num_rows,
                    rows,
                    pa.array([f[1] for f in flags], pa.string()),
                    pa.array([f[2] for f in flags], pa.string()),
                ),
            )
        return out

    @staticmethod
    def _run(
        check: Any, name: str, table: pa.Table, fields: list[str], decided: np.ndarray
    ) -> tuple[list[str | None], list[str | None], list[tuple[int, str, str]]]:
        """One filter over `fields` of `table`: per row its reason (`<name>:<why>`) and detail, and
        the (row, filter, field) it could not judge."""
        if isinstance(check, DatatroveFilter):
            applies = [f for f in check.fields if f in fields]
            if not applies:
                return [None] * table.num_rows, [None] * table.num_rows, []
            reasons, details, unjudged = check(table, decided, applies)
            return reasons, details, [(row, name, field) for row, field in unjudged]
        run, settings = check
        own = getattr(settings, "fields", None)  # a pair filter with fields runs on those of them here
        if own is not None:
            settings = settings.model_copy(update={"fields": [f for f in own if f in fields]})
        if (own is not None and not settings.fields) or (own is None and "negatives" in fields):
            return [None] * table.num_rows, [None] * table.num_rows, []
        reasons, details = (x.to_pylist() for x in run(table, settings))
        return [f"{name}:{r}" if r and r != name else r for r in reasons], details, []

    def _filter_negatives(
        self, batch: pa.Table, dropped: np.ndarray
    ) -> tuple[pa.Table, list[tuple[int, str, str | None]]]:
        """The kept rows' inline negatives that fail a filter applied to `negatives` removed (with
        their ids and scores where the row has them, position by position); a flag per removal."""
        negatives = batch.column(NEGATIVES).combine_chunks()
        if not batch.num_rows or negatives.null_count == len(negatives):
            return batch, []
        owner = pc.list_parent_indices(negatives).to_numpy()
        language = batch.column("negatives_lang").take(pa.array(owner)) if len(owner) else pa.array([], pa.string())
        flat = pa.table({"negatives": pc.list_flatten(negatives), "negatives_lang": language})
        failed = dropped[owner].copy()  # negatives of dropped rows stay as they are
        flags: list[tuple[int, str, str | None]] = []
        for name, check in self.checks:
            reasons, _, unjudged = self._run(check, name, flat, ["negatives"], failed)
            for k, why in enumerate(reasons):
                if why and not failed[k]:
                    failed[k] = True
                    flags.append((int(owner[k]), NEGATIVE_FLAG + name, language[k].as_py()))
            flags += [(int(owner[k]), f"filter_skipped:{name}", language[k].as_py()) for k, _, _ in unjudged]
        if not flags or not any(f[1].startswith(NEGATIVE_FLAG) for f in flags):
            return batch, flags
        removed = failed & ~dropped[owner]
        return _without(batch, negatives, removed), flags


def _without(batch: pa.Table, negatives: pa.ListArray, removed: np.ndarray) -> pa.Table:
    """`batch` with the flattened negatives `removed` taken out of `negatives`, and out of
    `negative_ids` and `negative_scores` in the rows where those line up with the texts."""
    out = batch
    for column in (NEGATIVES, NEGATIVE_IDS, "negative_scores"):
        out = replace_column(out, column, _cut(batch.column(column).combine_chunks(), negatives, removed))
    return out


def _cut(values: pa.ListArray, negatives: pa.ListArray, removed: np.ndarray) -> pa.ListArray:
    """`values` without the positions `removed` (over the flattened `negatives`) in each row whose
    list is as long as its negatives; other rows as they are."""
    n = len(negatives)
    value_lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy()
    negative_lengths = pc.fill_null(pc.list_value_length(negatives), 0).to_numpy()
    lined_up = value_lengths == negative_lengths
    value_owner, negative_owner = np.repeat(np.arange(n), value_lengths), np.repeat(np.arange(n), negative_lengths)
    keep = np.ones(len(value_owner), bool)
    keep[lined_up[value_owner]] = ~removed[lined_up[negative_owner]]  # same rows, same order, same counts
    offsets = np.concatenate([[0], np.cumsum(np.bincount(value_owner[keep], minlength=n))]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pc.list_flatten(values).filter(pa.array(keep)), mask=values.is_null()
    )
