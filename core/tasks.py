"""What each task needs from a source row. Adding a task is one entry here (plus, in later
stages, its record construction); the mapping and validation code reads this table only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TaskSpec:
    required: tuple[str, ...]  # record fields a source of this task must map and fill
    record: bool = True  # its rows are training records (not only a pool that others' rows use)


TASK_SPECS: dict[str, TaskSpec] = {
    "retrieval": TaskSpec(("query", "positive")),
    "bitext": TaskSpec(("query", "positive")),
    "sts": TaskSpec(("query", "positive", "score")),
    "pair_classification": TaskSpec(("query", "positive", "label")),
    "classification": TaskSpec(("query", "label")),
    "clustering": TaskSpec(("query", "label")),
    # Passages with no queries (a Wikipedia dump, say), the text in `query` as for single-text tasks:
    # a named pool for `mine_negatives` (`pool: corpus`), never a training record.
    "corpus": TaskSpec(("query",), record=False),
}
TASKS = tuple(TASK_SPECS)
# Tasks whose rows are a pool, not records: they never win a duplicate against a record, and the
# mixture neither counts nor samples them.
POOL_TASKS = tuple(t for t, spec in TASK_SPECS.items() if not spec.record)
# The task names as a type, for settings that name tasks (built from the table, so it never drifts).
TaskName = Literal[TASKS]  # type: ignore[valid-type]

# Record fields a source may fill from its columns, by kind of value.
TEXT_FIELDS = ("query", "positive", "instruction")
TEXT_LIST_FIELDS = ("negatives",)
NUMBER_FIELDS = ("score", "positive_score")
NUMBER_LIST_FIELDS = ("negative_scores",)
LABEL_FIELDS = ("label",)
# The row's declared language (a label, a programming language, or a file name whose extension names
# one); checked or trusted by the langid stage as the source's `language_policy` says.
LANGUAGE_FIELDS = ("language",)
MAPPABLE_FIELDS = TEXT_FIELDS + TEXT_LIST_FIELDS + NUMBER_FIELDS + NUMBER_LIST_FIELDS + LABEL_FIELDS + LANGUAGE_FIELDS
