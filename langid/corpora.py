"""Labelled text for training and evaluating language ID: `text,label` Parquet, label folders, and
readers for the public corpora in `../shared/data` (SIB-200/FLORES, UDHR, STS benchmark, tweets,
XQuAD-R questions)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import regex

from langid.labels import is_scheme_label


@dataclass
class Labelled:
    """Parallel lists of texts and their gold labels (scheme labels, or bare ISO 639-3 codes)."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def extend(self, other: Labelled) -> None:
        self.texts += other.texts
        self.labels += other.labels


def read_labelled(path: str | Path) -> Labelled:
    """Parquet file(s) with `text` and `label` columns, or a folder of `<label>/*.txt` or
    `<label>.txt` files with one text per line."""
    path = Path(path)
    if path.is_file() or path.suffix == ".parquet":
        table = pq.read_table(path, columns=["text", "label"])
        return Labelled(table.column("text").to_pylist(), table.column("label").to_pylist())
    if not path.is_dir():
        raise FileNotFoundError(f"no labelled data at {path}")
    out = Labelled([], [])
    for parquet in sorted(path.glob("*.parquet")):
        out.extend(read_labelled(parquet))
    for file in sorted(path.glob("*.txt")) + sorted(path.glob("*/*.txt")):
        label = file.stem if file.parent == path else file.parent.name
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        out.extend(Labelled(lines, [label] * len(lines)))
    if not len(out):
        raise FileNotFoundError(f"{path}: no *.parquet, <label>.txt or <label>/*.txt files")
    return out


def sib200(path: str | Path, split: str) -> Labelled:
    """SIB-200 sentences of one split (`train`, `dev`), labelled with their `lang_Script` folder name.
    `path` is the `sib200-train-dev.tar.xz` archive or a folder it was unpacked into."""
    path = Path(path)
    out = Labelled([], [])

    def add(label: str, raw: bytes) -> None:
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE))
        out.extend(Labelled([r["text"] for r in rows], [label] * len(rows)))

    if path.is_dir():
        for file in sorted(path.glob(f"**/annotated/*/{split}.tsv")):
            add(file.parent.name, file.read_bytes())
    else:
        with tarfile.open(path, "r:*") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                parts = member.name.split("/")
                if member.isfile() and len(parts) >= 3 and parts[-3] == "annotated" and parts[-1] == f"{split}.tsv":
                    add(parts[-2], tar.extractfile(member).read())
    if not len(out):
        raise FileNotFoundError(f"{path}: no SIB-200 `annotated/<lang>/{split}.tsv` files")
    return out


def udhr_label(file_name: str) -> str | None:
    """Gold label from a udhr2 file name: `deu_1901.txt` -> `deu`, `srp_cyrl.txt` -> `srp_Cyrl`;
    None for names that are not ISO 639-3 codes (`007.txt`)."""
    stem = Path(file_name).stem
    lang, _, variant = stem.partition("_")
    if len(lang) != 3 or not lang.isalpha():
        return None
    label = f"{lang}_{variant.capitalize()}"
    return label if len(variant) == 4 and variant.isalpha() and is_scheme_label(label) else lang


def udhr2(path: str | Path, unit: str = "document") -> Labelled:
    """The UDHR texts of `udhr2.zip`, labelled from their file names; `unit` is `document` (a file)
    or `paragraph` (each non-empty line of at least 40 characters)."""
    out = Labelled([], [])
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            label = udhr_label(name) if name.endswith(".txt") else None
            if label is None:
                continue
            text = archive.read(name).decode("utf-8")
            texts = (
                [text]
                if unit == "document"
                else [line.strip() for line in text.splitlines() if len(line.strip()) >= 40]
            )
            out.extend(Labelled(texts, [label] * len(texts)))
    return out


# The corpora below name languages by ISO 639-1 code or English name; their scheme labels.
_LANGUAGES = {
    "ar": "arb_Arab",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "it": "ita_Latn",
    "ja": "jpn_Jpan",
    "nl": "nld_Latn",
    "pl": "pol_Latn",
    "pt": "por_Latn",
    "ru": "rus_Cyrl",
    "zh": "zho_Hans",
    "english": "eng_Latn",
    "french": "fra_Latn",
    "german": "deu_Latn",
    "italian": "ita_Latn",
    "portuguese": "por_Latn",
    "spanish": "spa_Latn",
}


def _tar_members(path: str | Path, pattern: str):
    """(name, bytes) of the files of a tar archive whose name matches `pattern`, in name order."""
    with tarfile.open(path, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and regex.search(pattern, member.name):
                yield member.name, tar.extractfile(member).read()


def stsb(path: str | Path, split: str) -> Labelled:
    """Both sentences of every pair of the STS benchmark (`stsb-multi-mt.tar.xz`), 11 languages."""
    out = Labelled([], [])
    for name, raw in _tar_members(path, rf"stsb-(\w\w)-{split}\.csv$"):
        label = _LANGUAGES[regex.search(r"stsb-(\w\w)-", name).group(1)]
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
        texts = [t for row in rows for t in row[:2] if t.strip()]
        out.extend(Labelled(texts, [label] * len(texts)))
    return out


_TWEET_NOISE = regex.compile(r"@\w+|https?://\S+|&amp;|&lt;|&gt;|\bRT\b")
_ESCAPE = regex.compile(r"\\u([0-9a-fA-F]{4})")  # the files keep some characters as literal \uXXXX


def tweets(path: str | Path, split: str) -> Labelled:
    """UMSAB tweets (`xlmt-umsab-sentiment.tar.xz`) of the Latin-script languages, mentions and links
    removed. Left out: the Hindi tweets (mostly romanised Hindi and English, not `hin_Deva`) and the
    Arabic ones (dialects that SIB-200 labels apart, so `arb_Arab` would be wrong for many)."""
    out = Labelled([], [])
    for name, raw in _tar_members(path, rf"/(\w+)/{split}_text\.txt$"):
        label = _LANGUAGES.get(name.split("/")[-2])
        if label is None:
            continue
        lines = (_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), line) for line in raw.decode("utf-8").splitlines())
        texts = [t for t in (_TWEET_NOISE.sub(" ", line).strip() for line in lines) if regex.search(r"\p{L}", t)]
        out.extend(Labelled(texts, [label] * len(texts)))
    return out


def xquad_questions(path: str | Path) -> Labelled:
    """The questions of XQuAD-R (`xquad-r-dev.tar.xz`, dev only): real short queries in 8 languages."""
    out = Labelled([], [])
    for name, raw in _tar_members(path, r"/(\w\w)\.json$"):
        label = _LANGUAGES[Path(name).stem]
        data = json.loads(raw)
        texts = [qa["question"] for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
        out.extend(Labelled(texts, [label] * len(texts)))
    return out
