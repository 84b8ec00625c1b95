"""Map one parsed source row onto the canonical record, or say precisely why it cannot be."""

from __future__ import annotations

import json
import math
from typing import Any

from core.record import DECLARED_LANG, record_id
from core.tasks import (
    LABEL_FIELDS,
    LANGUAGE_FIELDS,
    NUMBER_FIELDS,
    NUMBER_LIST_FIELDS,
    TASK_SPECS,
    TEXT_LIST_FIELDS,
)
from langid.declared import declared_label


class RowError(Exception):
    """A row that cannot become a record: `reason` is a short code for the ledger, `detail` for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _lookup(row: dict[str, Any], column: str) -> Any:
    """A column's value; dotted names reach into nested objects (`answers.text`)."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RowError("wrong_type", f"{field}: expected a number, got a boolean")
    if isinstance(value, str):  # CSV and TSV give every cell as text
        try:
            value = float(value)
        except ValueError:
            raise RowError("wrong_type", f"{field}: expected a number, got {value[:40]!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError("wrong_type", f"{field}: expected a finite number, got {type(value).__name__}")
    return float(value)


def _list(field: str, value: Any) -> list[Any]:
    if isinstance(value, str):  # a JSON list inside a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("wrong_type", f"{field}: expected a list, got text that is not a JSON list") from None
    if not isinstance(value, (list, tuple)):
        raise RowError("wrong_type", f"{field}: expected a list, got {type(value).__name__}")
    return list(value)


def _text(field: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{field}: expected text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise RowError("oversize", f"{field}: {len(value):,} characters, limit {max_chars:,}")
    return value


def map_row(row: Any, source: Any) -> dict[str, Any]:
    """Build a record dict (content fields, source, task, licence; no origin) from a parsed row."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"expected an object with columns, got {type(row).__name__}")
    required = TASK_SPECS[source.task].required
    record: dict[str, Any] = {"source": source.name, "task": source.task, "licence": source.licence}
    if source.instruction is not None:
        record["instruction"] = source.instruction
    for field, column in source.columns.items():
        value = _lookup(row, column)
        if value is None:
            if field in required:
                raise RowError("missing_field", f"{field}: column {column!r} is missing or null")
            continue
        if field in NUMBER_FIELDS:
            record[field] = _number(field, value)
        elif field in NUMBER_LIST_FIELDS:
            record[field] = [_number(field, v) for v in _list(field, value)]
        elif field in TEXT_LIST_FIELDS:
            record[field] = [_text(field, v, source.max_text_chars) for v in _list(field, value)]
        elif field in LABEL_FIELDS:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise RowError("wrong_type", f"{field}: expected text or an integer, got {type(value).__name__}")
            record[field] = str(value)
        elif field in LANGUAGE_FIELDS:
            record[DECLARED_LANG] = declared_label(_text(field, value, 200))
            if record[DECLARED_LANG] is None:
                raise RowError(
                    "unknown_language",
                    f"{field}: {value!r} is not a language label (xxx_Xxxx), "
                    "a programming language or a file name with a known extension",
                )
            continue
        else:
            record[field] = _text(field, value, source.max_text_chars)
        mapped = record[field]
        if field in required and (mapped == [] or (isinstance(mapped, str) and not mapped.strip())):
            raise RowError("empty_text", f"{field}: column {column!r} is empty")
    record["id"] = record_id(record)
    return record
