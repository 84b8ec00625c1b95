"""Work done once per distinct value of a column: a batch has thousands of texts but a few hundred
labels or scripts, so per-label work runs per distinct label and is spread back to the rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa


def _encoded(values: pa.Array | list | np.ndarray) -> pa.DictionaryArray:
    return (values if isinstance(values, pa.Array) else pa.array(values, pa.string())).dictionary_encode()


def map_distinct(
    values: pa.Array | list | np.ndarray, fn: Callable[[str], object], type: pa.DataType = pa.string()
) -> pa.Array:
    """`fn` of each value (nulls stay null), computed once per distinct value."""
    encoded = _encoded(values)
    return pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type).take(encoded.indices)


def groups(values: pa.Array | list | np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(value, the indices of its rows) per distinct non-null value."""
    encoded = _encoded(values)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    for d, value in enumerate(encoded.dictionary.to_pylist()):
        yield value, order[bounds[d] : bounds[d + 1]]
