"""datatrove's document filters (`datatrove.pipeline.filters`: Gopher, C4, FineWeb, regex...) run on the
text fields of records: each text becomes a datatrove `Document`, and the filter's own `filter()`
decides (its logic is datatrove's, not a copy). A filter that takes a `language` is built once per
language of the rows, with datatrove's code for it, so its word and sentence splitting is the one
datatrove assigns to that language; where that tokenizer is not installed, the filter cannot judge
those texts: they are kept and flagged `filter_skipped:<filter>`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import pyarrow as pa

BUILT_BY_US = ("exclusion_writer", "language")  # set here, never from a manifest


def filter_names() -> list[str]:
    import datatrove.pipeline.filters as filters
    from datatrove.pipeline.filters.base_filter import BaseFilter

    return sorted(n for n, c in vars(filters).items() if inspect.isclass(c) and issubclass(c, BaseFilter) and c is not BaseFilter)


def filter_class(name: str) -> type:
    """The datatrove filter class `name`, or a ValueError listing the ones there are."""
    import datatrove.pipeline.filters as filters

    if name not in filter_names():
        raise ValueError(f"{name!r} is neither a filter of this project nor one of datatrove's: {', '.join(filter_names())}")
    return getattr(filters, name)


def check_args(name: str, args: dict[str, Any]) -> None:
    """A ValueError naming the argument a datatrove filter does not take (or lacks)."""
    cls = filter_class(name)
    own = set(args) & set(BUILT_BY_US)
    if own:
        raise ValueError(f"{name}: {', '.join(sorted(own))} is set by the stage (the row's language; dropped rows go to the ledger)")
    try:
        inspect.signature(cls.__init__).bind(None, **args)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *BUILT_BY_US)]
        raise ValueError(f"{name}: {exc} (it takes: {', '.join(params)})") from None


@lru_cache(maxsize=256)
def datatrove_language(label: str | None) -> str | None:
    """datatrove's code for one of our labels (`tha_Thai` -> `tha_Thai` or `tha`): the first its
    tokenizer table knows; None for `und`, code or a language it lacks."""
    if not label or "_" not in label:
        return None
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    language, _, script = label.partition("_")
    known = load_tokenizer_assignments()
    for code in (f"{language}_{'Hani' if script in ('Hans', 'Hant') else script}", language):
        if code in known:
            return code
    return None


class DatatroveFilter:
    """One datatrove filter over some fields of a batch; built on the worker (`setup`)."""

    def __init__(self, name: str, args: dict[str, Any], fields: list[str]):
        self.name, self.args, self.fields = name, args, fields
        self.cls = filter_class(name)
        self.takes_language = "language" in inspect.signature(self.cls.__init__).parameters
        self._built: dict[str | None, Any] = {}

    def _instance(self, code: str | None) -> Any:
        key = code if self.takes_language else None
        if key not in self._built:
            self._built[key] = self.cls(**self.args, **({"language": code} if self.takes_language and code else {}))
        return self._built[key]

    def __call__(self, batch: pa.Table) -> tuple[list[str | None], list[str | None], list[int]]:
        """Per row: the reason it fails (`<filter>:<datatrove's reason>`) and the field, or None; and
        the rows whose language this filter could not handle (kept)."""
        from datatrove.data import Document
        from datatrove.pipeline.filters.base_filter import get_filter_result

        reasons: list[str | None] = [None] * batch.num_rows
        details: list[str | None] = [None] * batch.num_rows
        skipped: set[int] = set()
        broken: set[str | None] = set()
        for field in self.fields:
            texts, labels = batch.column(field).to_pylist(), batch.column(f"{field}_lang").to_pylist()
            for row, (text, label) in enumerate(zip(texts, labels)):
                if text is None or reasons[row] is not None:
                    continue
                code = datatrove_language(label) if self.takes_language else None
                if code in broken:
                    skipped.add(row)
                    continue
                try:
                    kept, why = get_filter_result(self._instance(code).filter(Document(text=text, id=str(row))))
                except (ImportError, OSError, ValueError):  # no tokenizer for the language here (a package or model missing)
                    broken.add(code)
                    skipped.add(row)
                    continue
                if not kept:
                    reasons[row], details[row] = f"{self.name}:{why or 'filtered'}", f"{field} failed {self.name}"
        return reasons, details, sorted(skipped)
