"""Map a model's labels onto one scheme: ISO 639-3 + '_' + ISO 15924 script (`eng_Latn`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

from langid.scripts import dominant_script

UNDETERMINED = "und"


@dataclass(frozen=True)
class LabelInfo:
    iso639_3: str
    scripts: tuple[str, ...]
    name: str

    def label_for(self, text: str) -> str:
        script = self.scripts[0] if len(self.scripts) == 1 else dominant_script(text, self.scripts)
        return f"{self.iso639_3}_{script}"


def load_table(name: str = "lid176.tsv") -> dict[str, LabelInfo]:
    """Read a label table shipped in `langid/data` (comment lines start with '#')."""
    text = resources.files("langid").joinpath("data", name).read_text(encoding="utf-8")
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    return {r["label"]: LabelInfo(r["iso639_3"], tuple(r["scripts"].split(",")), r["name"]) for r in rows}


class LabelMapper:
    """Turns raw fastText labels into scheme labels; labels already in the scheme pass through."""

    def __init__(self, table: dict[str, LabelInfo]):
        self.table = table

    def __call__(self, raw_label: str, text: str) -> str:
        label = raw_label.removeprefix("__label__")
        info = self.table.get(label)
        if info is not None:
            return info.label_for(text)
        # GlotLID / OpenLID style labels (`eng_Latn`) are already in the scheme.
        if len(label) >= 8 and label[3] == "_":
            return label
        return UNDETERMINED
