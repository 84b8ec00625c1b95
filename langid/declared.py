"""Languages that sources declare: parse them into scheme labels and compare them with predictions."""

from __future__ import annotations

from langid.code import declared_code_label
from langid.labels import CODE_PREFIX, UNDETERMINED, canonical, is_scheme_label, short_codes


def declared_label(value: str) -> str | None:
    """A scheme label for a declared language, tried in this order: `eng_Latn` / `zho_Hans`
    (canonicalised), a short code with one script (`de` -> `deu_Latn`; so `pl` is Polish, not
    Perl), a programming language (`Python` -> `code:python`) or a file
    name with a known extension (`src/lib.rs` -> `code:rust`); None when it is none of these."""
    value = value.strip()
    if is_scheme_label(value) and value != UNDETERMINED and not value.startswith(CODE_PREFIX):
        return canonical(value)
    info = short_codes().get(value)
    if info is not None and len(info.scripts) == 1:
        return canonical(f"{info.iso639_3}_{info.scripts[0]}")
    return declared_code_label(value)


def agrees(declared: str, predicted: str) -> bool:
    """Whether a prediction confirms a declared label. `und` (the model was unsure) neither confirms
    nor contradicts, so it counts as agreeing: only confident disagreements are mismatches."""
    return predicted == UNDETERMINED or canonical(predicted) == declared
