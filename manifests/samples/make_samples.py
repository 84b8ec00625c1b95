"""Rebuild the shipped samples from ../shared/data (run from the project root):

    python manifests/samples/make_samples.py ../shared/data

Deterministic: the same input gives byte-identical files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import zstandard

HERE = Path(__file__).parent
XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "zh")
# English paired with languages of many scripts and families (SIB-200 / FLORES-200 codes).
BITEXT_LANGS = (
    "arb_Arab", "ben_Beng", "bod_Tibt", "ces_Latn", "zho_Hans", "zho_Hant", "deu_Latn", "ell_Grek", "fra_Latn", "guj_Gujr",
    "hau_Latn", "heb_Hebr", "hin_Deva", "hye_Armn", "jpn_Jpan", "kat_Geor", "khm_Khmr", "kor_Hang", "lao_Laoo",
    "mal_Mlym", "mya_Mymr", "pes_Arab", "rus_Cyrl", "sin_Sinh", "spa_Latn", "swh_Latn", "tam_Taml", "tel_Telu",
    "tha_Thai", "tur_Latn", "ukr_Cyrl", "urd_Arab", "vie_Latn", "yor_Latn", "zul_Latn", "amh_Ethi", "srp_Cyrl",
)
BITEXT_ROWS = 250
STS_LANGS = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
# Topic classification: SIB-200 dev (7 topics) in English and the bitext languages; topic
# clustering: SIB-200 train in a few languages (other sentences than the classification sample).
TOPIC_LANGS = ("eng_Latn",) + BITEXT_LANGS
CLUSTER_LANGS = ("eng_Latn", "arb_Arab", "zho_Hans", "hin_Deva", "rus_Cyrl", "swh_Latn", "tha_Thai", "yor_Latn")
# STS test pairs (not the dev pairs of the STS sample) as pair classification: paraphrase
# (score >= 4) or not (score <= 1).
PAIR_LANGS = ("de", "en", "es", "fr", "ja", "ru", "zh")


def _gzip(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.encode("utf-8"))


def xquad(tar: tarfile.TarFile) -> None:
    out = HERE / "xquad_r"
    out.mkdir(exist_ok=True)
    for lang in XQUAD_LANGS:
        data = json.load(tar.extractfile(f"xquad-r/{lang}.json"))
        lines = []
        for a, article in enumerate(data["data"]):
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    row = {"id": qa["id"], "article": a, "question": qa["question"], "context": paragraph["context"], "answer": qa["answers"][0]["text"]}
                    lines.append(json.dumps(row, ensure_ascii=False))
        _gzip(out / f"{lang}.jsonl.gz", "\n".join(lines) + "\n")


HELDOUT_EVERY = 8  # XQuAD-R articles 7, 15, 23, ... (6 of 48) are the held-out evaluation split


def xquad_heldout() -> None:
    """The held-out split: the questions of every 8th article of the XQuAD-R sample. Stage 1 removes
    its overlap from training (decontaminate), and the trainer evaluates retrieval on it."""
    out = HERE / "xquad_r_heldout"
    out.mkdir(exist_ok=True)
    for lang in XQUAD_LANGS:
        with gzip.open(HERE / "xquad_r" / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
            rows = [line for line in f if json.loads(line)["article"] % HELDOUT_EVERY == HELDOUT_EVERY - 1]
        _gzip(out / f"{lang}.jsonl.gz", "".join(rows))


def _sib(tar: tarfile.TarFile, code: str) -> dict[str, str]:
    rows = csv.DictReader(io.TextIOWrapper(tar.extractfile(f"sib200/annotated/{code}/train.tsv"), "utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE)
    return {r["index_id"]: r["text"] for r in rows}


def bitext(tar: tarfile.TarFile) -> None:
    out = HERE / "sib200_bitext"
    out.mkdir(exist_ok=True)
    english = _sib(tar, "eng_Latn")
    ids = sorted(english, key=int)[:BITEXT_ROWS]
    for code in BITEXT_LANGS:
        other = _sib(tar, code)
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(["index_id", "source_lang", "target_lang", "source", "target"])
        for i in ids:
            w.writerow([i, "eng_Latn", code, english[i], other[i]])
        _gzip(out / f"eng_Latn-{code}.tsv.gz", buf.getvalue())


def sts(tar: tarfile.TarFile) -> None:
    out = HERE / "stsb"
    out.mkdir(exist_ok=True)
    for lang in STS_LANGS:
        raw = tar.extractfile(f"stsb-multi-mt/stsb-{lang}-dev.csv").read()
        (out / f"stsb-{lang}-dev.csv.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))


def topics(tar: tarfile.TarFile) -> None:
    for folder, split, codes in (("sib200_topics", "dev", TOPIC_LANGS), ("sib200_clusters", "train", CLUSTER_LANGS)):
        out = HERE / folder
        out.mkdir(exist_ok=True)
        for code in codes:
            raw = tar.extractfile(f"sib200/annotated/{code}/{split}.tsv").read()
            _gzip(out / f"{code}.tsv.gz", raw.decode("utf-8"))


def pairs(tar: tarfile.TarFile) -> None:
    out = HERE / "stsb_pairs"
    out.mkdir(exist_ok=True)
    for lang in PAIR_LANGS:
        rows = csv.reader(io.TextIOWrapper(tar.extractfile(f"stsb-multi-mt/stsb-{lang}-test.csv"), "utf-8"))
        lines = []
        for s1, s2, score in rows:
            label = "paraphrase" if float(score) >= 4 else "not_paraphrase" if float(score) <= 1 else None
            if label:
                lines.append(json.dumps({"sentence1": s1, "sentence2": s2, "label": label}, ensure_ascii=False))
        _gzip(out / f"{lang}.jsonl.gz", "\n".join(lines) + "\n")


def main(data: Path) -> None:
    with tarfile.open(data / "xquad-r-dev.tar.xz", "r:xz") as tar:
        xquad(tar)
    xquad_heldout()
    with tarfile.open(data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        bitext(tar)
        topics(tar)
    with tarfile.open(data / "stsb-multi-mt.tar.xz", "r:xz") as tar:
        sts(tar)
        pairs(tar)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
