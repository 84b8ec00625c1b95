"""One label scheme for every model: ISO 639-3 + '_' + ISO 15924 script (`eng_Latn`), `und`, `code:<lang>`.

Models disagree on labels: lid.176 says `__label__zh` (no script, ISO 639-1), OpenLID `zho_Hans`
(a macrolanguage), GlotLID `cmn_Hani` (Han without the variant). Everything that differs between
them is data in `langid/data/` (short codes, equivalent codes, script switches), so adding a model
means adding rows, not code.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from langid.scripts import dominant_script

UNDETERMINED = "und"
CODE_PREFIX = "code:"
# Script codes that leave the variant open: decided from the text (`Hani` -> Hans or Hant). A
# model's own Hans/Hant is its guess, kept unless the text's variant-specific characters say
# otherwise (short Chinese texts often have none, and models then guess the variant poorly).
_OPEN_SCRIPTS = {"Hani": ("Hans", "Hant"), "Hans": ("Hans", "Hant"), "Hant": ("Hant", "Hans")}


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of a TSV shipped in `langid/data` (lines starting with '#' are comments)."""
    text = resources.files("langid").joinpath("data", name).read_text(encoding="utf-8")
    return list(
        csv.DictReader((line for line in text.splitlines() if line and not line.startswith("#")), delimiter="\t")
    )


@dataclass(frozen=True)
class ShortCode:
    """A label without a script (`en`, `zh`, `ckb`): the language and the scripts it is written in."""

    iso639_3: str
    scripts: tuple[str, ...]  # first = default
    name: str


@lru_cache(maxsize=None)
def short_codes() -> dict[str, ShortCode]:
    return {
        r["label"]: ShortCode(r["iso639_3"], tuple(r["scripts"].split(",")), r["name"])
        for r in read_table("short_codes.tsv")
    }


@lru_cache(maxsize=None)
def equivalents() -> dict[str, str]:
    return {r["code"]: r["canonical"] for r in read_table("equivalents.tsv")}


@lru_cache(maxsize=None)
def script_switches() -> dict[str, dict[str, str]]:
    """language -> {script: label} for languages that are another label in another script."""
    out: dict[str, dict[str, str]] = {}
    for r in read_table("script_switch.tsv"):
        out.setdefault(r["language"], {})[r["script"]] = r["label"]
    return out


@lru_cache(maxsize=4096)  # a few hundred labels, asked about per text and candidate
def is_language(label: str | None) -> bool:
    """A natural language's label: not missing, `und` or `code:<lang>`."""
    return label is not None and label != UNDETERMINED and not label.startswith(CODE_PREFIX)


def is_scheme_label(label: str) -> bool:
    """`xxx_Xxxx` (ISO 639-3 + ISO 15924), or the special labels."""
    if not is_language(label):
        return True
    lang, _, script = label.partition("_")
    return (
        len(lang) == 3
        and lang.isalpha()
        and lang.islower()
        and len(script) == 4
        and script.isalpha()
        and script[0].isupper()
    )


@lru_cache(maxsize=65536)
def canonical(label: str) -> str:
    """A scheme label (or a bare ISO 639-3 code) with equivalent codes unified: `zho_Hans` -> `cmn_Hans`."""
    if not is_language(label):
        return label
    lang, sep, script = label.partition("_")
    return equivalents().get(lang, lang) + sep + script


@lru_cache(maxsize=65536)
def language_of(label: str) -> str:
    """The language part of a label (`srp` for `srp_Cyrl`), after equivalences."""
    return canonical(label).partition("_")[0]


def script_of(label: str) -> str:
    """The script part of a label (`Cyrl` for `srp_Cyrl`; empty for `und` and `code:<lang>`)."""
    return label.partition("_")[2]


class LabelMapper:
    """Turns one model's raw labels into scheme labels, deciding scripts from the text where needed.

    The decision per raw label is computed once (`plan`); per text only labels with several
    possible scripts look at the characters, so mapping costs little next to the prediction.
    """

    def __init__(self) -> None:
        self._plans: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._fixed: dict[str, str] = {}  # raw label -> scheme label, for labels with at most one script

    def plan(self, raw: str) -> tuple[str, tuple[str, ...]]:
        """(language, candidate scripts) for a raw label; one candidate means no look at the text."""
        label = raw.removeprefix("__label__")
        if not is_language(label):
            return label, ()
        if is_scheme_label(label):  # GlotLID / OpenLID / SIB-200 style: the model says the script
            lang, _, script = canonical(label).partition("_")
            scripts = _OPEN_SCRIPTS.get(script, (script,))
        elif label in short_codes():
            info = short_codes()[label]
            lang, scripts = canonical(info.iso639_3), info.scripts
        else:
            return UNDETERMINED, ()
        switches = script_switches().get(lang, {})
        return lang, scripts + tuple(s for s in switches if s not in scripts)

    @staticmethod
    def label(lang: str, script: str) -> str:
        """The scheme label of a language written in a script (`hin` in `Arab` is `urd_Arab`)."""
        return script_switches().get(lang, {}).get(script) or f"{lang}_{script}"

    def cached_plan(self, raw: str) -> tuple[str, tuple[str, ...]]:
        """`plan`, computed once per raw label."""
        plan = self._plans.get(raw)
        if plan is None:
            plan = self._plans[raw] = self.plan(raw)
        return plan

    def __call__(self, raw_label: str, text: str) -> str:
        lang, scripts = self.cached_plan(raw_label)
        if not scripts:
            return lang
        script = scripts[0] if len(scripts) == 1 else dominant_script(text, scripts)
        return UNDETERMINED if script is None else self.label(lang, script)

    def many(self, raw_labels: list[str], texts: list[str]) -> np.ndarray:
        """`self(raw, text)` per pair, as an object array. A raw label with one possible script is
        mapped once and remembered (a batch has a few hundred raw labels, and thousands of texts);
        only labels with several possible scripts look at their texts."""
        fixed = self._fixed
        out = np.empty(len(raw_labels), dtype=object)
        out[:] = [fixed[raw] if raw in fixed else self._map_new(raw, text) for raw, text in zip(raw_labels, texts)]
        return out

    def _map_new(self, raw: str, text: str) -> str:
        lang, scripts = self.cached_plan(raw)
        if len(scripts) > 1:
            return self(raw, text)
        label = self._fixed[raw] = self.label(lang, scripts[0]) if scripts else lang
        return label


@lru_cache(maxsize=None)
def language_name(label: str) -> str:
    """English name of a label's language (`srp_Cyrl` -> `Serbian (Cyrillic)`), via pycountry's ISO tables."""
    import pycountry

    if label == UNDETERMINED:
        return "Undetermined"
    if label.startswith(CODE_PREFIX):
        return label.removeprefix(CODE_PREFIX).capitalize() + " (code)"
    lang, _, script = label.partition("_")
    found = pycountry.languages.get(alpha_3=lang)
    name = found.name if found else lang
    if script:
        found_script = pycountry.scripts.get(alpha_4=script)
        name += f" ({found_script.name if found_script else script})"
    return name


@lru_cache(maxsize=None)
def script_name(label: str) -> str | None:
    """ISO 15924 name of a label's script (`srp_Cyrl` -> `Cyrillic`); None for `und` and code."""
    import pycountry

    script = script_of(label) if not label.startswith(CODE_PREFIX) else ""
    if not script:
        return None
    found = pycountry.scripts.get(alpha_4=script)
    return found.name if found else script


@lru_cache(maxsize=None)
def _families() -> dict[str, str]:
    return {lang: r["family"] for r in read_table("language_families.tsv") for lang in r["languages"].split()}


def language_family(label: str) -> str:
    """Top-level family of a label's language (`langid/data/language_families.tsv`); `code` for
    programming languages, `other` where the table has no row."""
    if label.startswith(CODE_PREFIX):
        return "code"
    if label == UNDETERMINED:
        return "undetermined"
    return _families().get(language_of(label), "other")


def label_kind(label: str) -> str:
    """`natural`, `programming` or `undetermined`."""
    return "programming" if label.startswith(CODE_PREFIX) else "undetermined" if label == UNDETERMINED else "natural"
