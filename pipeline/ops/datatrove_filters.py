"""datatrove's document filters (`datatrove.pipeline.filters`: Gopher, C4, FineWeb, regex...) run on the
text fields of records: each text becomes a datatrove `Document`, and the filter's own `filter()`
decides (its logic is datatrove's, not a copy). The stage keeps or drops a row; it does not take
over the text a filter may rewrite (C4QualityFilter removes lines), so the corpus keeps its texts.

A filter that takes a `language` is built once per word tokenizer: the one datatrove assigns to the
text's language where it loads here, else, for a text in a script written with spaces, datatrove's
multilingual one (spaCy's `xx`). A text in a script without spaces whose language has no working
tokenizer (Tibetan, or Chinese without `jieba`) cannot be judged: its row is kept and flagged
`filter_skipped:<filter>`, as is a text on which the filter itself fails.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import TypeAdapter, ValidationError
from pydantic.errors import PydanticSchemaGenerationError

from pipeline.ops.words import multilingual_tokenizer, unspaced, word_tokenizer

BUILT_BY_US = ("exclusion_writer", "language")  # set here, never from a manifest
# Filters a manifest cannot use, and why.
UNSUPPORTED = {
    "LambdaFilter": "it takes a Python function, which a manifest cannot hold",
    "URLFilter": "it reads each document's url metadata, which records do not have",
    "C4BadWordsFilter": "it downloads its word lists at run time",
    "UnigramLogProbFilter": "it downloads its word frequencies at run time",
    "LanguageFilter": "it downloads its fastText model at run time (the langid stage tags languages)",
}


def filter_names() -> list[str]:
    import datatrove.pipeline.filters as filters
    from datatrove.pipeline.filters.base_filter import BaseFilter

    return sorted(
        n for n, c in vars(filters).items() if inspect.isclass(c) and issubclass(c, BaseFilter) and c is not BaseFilter
    )


def filter_class(name: str) -> type:
    """The datatrove filter class `name`, or a ValueError listing the ones a manifest can use."""
    import datatrove.pipeline.filters as filters

    if name in UNSUPPORTED:
        raise ValueError(f"datatrove's {name} cannot run here: {UNSUPPORTED[name]}")
    usable = [n for n in filter_names() if n not in UNSUPPORTED]
    if name not in usable:
        raise ValueError(f"{name!r} is neither a filter of this project nor one of datatrove's: {', '.join(usable)}")
    return getattr(filters, name)


def check_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """`args` as the datatrove filter `name` takes them (values converted to its annotated types, as
    pydantic does: `3` for a float), or a ValueError naming the argument at fault."""
    cls = filter_class(name)
    own = set(args) & set(BUILT_BY_US)
    if own:
        raise ValueError(
            f"{name}: {', '.join(sorted(own))} is set by the stage (the row's language; dropped rows go to the ledger)"
        )
    try:
        inspect.signature(cls.__init__).bind(None, **args)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *BUILT_BY_US)]
        raise ValueError(f"{name}: {exc} (it takes: {', '.join(params)})") from None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: names are checked, not types)
        hints = {}
    checked = dict(args)
    for key, value in args.items():
        if key not in hints:
            continue
        try:
            checked[key] = TypeAdapter(hints[key]).validate_python(value)
        except PydanticSchemaGenerationError:  # a type pydantic cannot check
            continue
        except ValidationError as exc:
            raise ValueError(f"{name}: {key}={value!r}: {exc.errors()[0]['msg']}") from None
    return checked


class DatatroveFilter:
    """One datatrove filter over some fields of a batch; built on the worker (`setup`)."""

    def __init__(self, name: str, args: dict[str, Any], fields: list[str]):
        self.name, self.args, self.fields = name, args, fields
        self.cls = filter_class(name)
        self.takes_language = "language" in inspect.signature(self.cls.__init__).parameters
        self._built: dict[Any, Any] = {}

    def _instance(self, label: str | None, spaced: bool) -> Any | None:
        """The filter for a text of language `label` (see the module docstring), or None."""
        if not self.takes_language:
            tokenizer = None
        else:
            tokenizer = word_tokenizer(label) or (multilingual_tokenizer() if spaced else None)
            if tokenizer is None:
                return None
        if tokenizer not in self._built:
            # datatrove takes a tokenizer where it takes a language (`load_word_tokenizer` passes one through).
            self._built[tokenizer] = self.cls(**self.args, **({"language": tokenizer} if tokenizer is not None else {}))
        return self._built[tokenizer]

    def __call__(
        self, batch: pa.Table, decided: np.ndarray, fields: list[str]
    ) -> tuple[list[str | None], list[str | None], list[tuple[int, str]]]:
        """Per row of `batch`: the reason it fails (`<filter>:<datatrove's reason>`) in one of `fields`
        and a detail naming the field, or None; and the (row, field) this filter could not judge (the
        row is kept). Rows already `decided` (dropped by an earlier filter) are not looked at."""
        from datatrove.data import Document
        from datatrove.pipeline.filters.base_filter import get_filter_result

        reasons: list[str | None] = [None] * batch.num_rows
        details: list[str | None] = [None] * batch.num_rows
        skipped: dict[int, str] = {}
        for field in fields:
            column = batch.column(field)
            spaced = ~unspaced(column.combine_chunks())
            texts, labels = column.to_pylist(), batch.column(f"{field}_lang").to_pylist()
            for row, (text, label) in enumerate(zip(texts, labels)):
                if not text or decided[row] or reasons[row] is not None:
                    continue
                instance = self._instance(label, bool(spaced[row]))
                if instance is None:
                    skipped.setdefault(row, field)
                    continue
                try:
                    kept, why = get_filter_result(instance.filter(Document(text=text, id=str(row))))
                except Exception:  # noqa: BLE001 (datatrove failing on one text: that row is not judged, the rest are)
                    skipped.setdefault(row, field)
                    continue
                if not kept:
                    reasons[row], details[row] = f"{self.name}:{why or 'filtered'}", f"{field} failed {self.name}"
        return reasons, details, [(row, field) for row, field in sorted(skipped.items()) if reasons[row] is None]
