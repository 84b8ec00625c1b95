"""Small Arrow helpers shared by stages: columnar work without per-row Python."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.record import FLAG_TYPE

# Horizontal whitespace for Arrow's RE2 regexes, whose `\s` is ASCII-only: this adds no-break and
# the other Unicode spaces, so "a\u00a0b" and "a b" normalise alike.
_OTHER_SPACES = r"\t\x{0B}\x{0C}\x{A0}\x{1680}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}"
HSPACE = rf"[ {_OTHER_SPACES}]"
# The rows where collapsing runs of HSPACE (and, with the second, newlines) to one space changes
# anything: a space other than " ", or two in a row.
HSPACE_TO_COLLAPSE = rf"[{_OTHER_SPACES}]|{HSPACE}{{2}}"
SPACE_OR_NEWLINE_TO_COLLAPSE = rf"[\n{_OTHER_SPACES}]|(?:{HSPACE}|\n){{2}}"


def map_list_values(arr: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply a vectorised `fn` to every element of a list<string> column, keeping the lists' shape."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = fn(pc.list_flatten(arr))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=arr.is_null())


def replace_regex(arr: pa.Array | pa.ChunkedArray, pattern: str, replacement: str, rows: str | None = None) -> pa.Array:
    """`pc.replace_substring_regex` run only on the rows where `rows` (default: `pattern`) matches.
    RE2 tells whether a row matches about ten times faster than it replaces, and in real text
    most rows need no replacement. `rows` must match every row the replacement would change."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    hit = pc.fill_null(pc.match_substring_regex(arr, rows or pattern), False)
    where = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if not len(where):
        return arr
    return pc.replace_with_mask(
        arr,
        hit,
        pc.replace_substring_regex(arr.take(pa.array(where, pa.int64())), pattern=pattern, replacement=replacement),
    )


def lists_by_row(n: int, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """A list column of `n` rows from one (row, value) entry per element, each row's elements in
    their entries' order; null where a row has none. Column-wise, for flags: in a bitext batch
    nearly every row is flagged cross-lingual, and a Python object per row was a large cost."""
    order = pa.array(np.argsort(rows, kind="stable"), pa.int64())
    counts = np.bincount(rows, minlength=n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    return pa.ListArray.from_arrays(offsets, values.take(order), mask=pa.array(counts == 0))


def flag_lists(n: int, rows: np.ndarray, reasons: pa.Array, languages: pa.Array) -> pa.Array:
    """The flags column of `n` rows from one (row, reason, language) entry per flag (no counts)."""
    values = pa.StructArray.from_arrays([reasons, languages, pa.nulls(len(rows), pa.int32())], fields=list(FLAG_TYPE))
    return lists_by_row(n, rows, values)


def set_where(column: pa.Array, mask: pa.Array, value: object) -> pa.Array:
    """`column` with `value` where `mask` is true (nulls in mask count as false)."""
    return pc.if_else(pc.fill_null(mask, False), pa.scalar(value, column.type), column)


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)
