"""The default language-ID setting against lid176 on the big languages, out of domain and in domain.

Short-text detectors are usually measured on about 75 big languages; lid176 is the baseline most users
have. This scores both taggers (the default, short200 with lid176 as its fallback, and lid176 alone) on
the texts of those languages that lid176 knows, so that it is not charged for languages it lacks, and
on fragments cut from them (1, 2 and 3-5 words, as `python -m langid eval --fragments`), by length:
  udhr  UDHR paragraphs (out of domain for both models: neither was trained on them)
  sib   SIB-200 dev sentences (FLORES: short200 was trained on other sentences of the same corpus)

    python bench/langid_big_languages.py [--data udhr sib]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langid.corpora import Labelled, sib200, udhr2  # noqa: E402
from langid.evaluate import score_by_bucket  # noqa: E402
from langid.fragments import DEV_SIZES, cut  # noqa: E402
from langid.labels import canonical, language_of  # noqa: E402
from langid.tagger import DEFAULT_FALLBACK, DEFAULT_MODEL, LanguageTagger  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# 73 big languages as ISO 639-3 (macrolanguages by their members: Standard Arabic, Mandarin, Iranian
# Persian...), the kind short-text detectors report accuracy on.
BIG = set(
    "afr sqi als arb hye azj eus bel ben nob bos bul cat cmn hrv ces dan nld eng epo est ekk fin fra lug "
    "kat deu ell guj heb hin hun isl ind gle ita jpn kaz kor lat lvs lav lit mkd zsm mri mar khk nno pes "
    "pol por pan ron rus srp sna slk slv som sot spa swh swe tgl tam tel tha tso tsn tur ukr urd vie cym "
    "xho yor zul".split()
)


def load(name: str) -> Labelled:
    return sib200(DATA / "sib200-train-dev.tar.xz", "dev") if name == "sib" else udhr2(DATA / "udhr2.zip", "paragraph")


def tag(tagger: LanguageTagger, texts: list[str], batch: int = 4096) -> list[str]:
    return [label for start in range(0, len(texts), batch) for label in tagger.tag(texts[start : start + batch]).labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=["udhr", "sib"], default=["udhr", "sib"])
    args = parser.parse_args()
    taggers = {"default": LanguageTagger(DEFAULT_MODEL, fallback=DEFAULT_FALLBACK), "lid176": LanguageTagger("lid176")}
    lid176_knows = {language_of(label) for label in taggers["lid176"].covered_labels()}
    for name in args.data:
        data = load(name)
        keep = [i for i, gold in enumerate(data.labels) if language_of(canonical(gold)) in BIG & lid176_knows]
        texts = Labelled([data.texts[i] for i in keep], [data.labels[i] for i in keep])
        texts.extend(cut(texts, DEV_SIZES, seed=1))
        languages = len({language_of(canonical(gold)) for gold in texts.labels})
        print(f"{name}: {len(texts):,} texts and fragments, {languages} big languages lid176 knows")
        for setting, tagger in taggers.items():
            report = score_by_bucket(texts.texts, texts.labels, tag(tagger, texts.texts), tagger.covered_labels())
            by_length = "  ".join(f"{bucket}: {row['macro_f1']:.3f}" for bucket, row in report.buckets.items())
            print(f"  {setting:8s} macro-F1 {report.macro_f1:.3f}   {by_length}")


if __name__ == "__main__":
    main()
