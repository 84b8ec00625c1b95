"""How short-text language ID grows with training text per language: short200's recipe retrained on
fewer sentences per language, scored on SIB-200 dev fragments by length (macro-F1 over 205 labels).

The issue's bars for single words and word pairs over every language are not met by the shipped
model; this says whether more settings search or more data is what they need. Each point trains
short200's settings (`langid/models/short200.json`) on at most N sentences per language of the
training corpora the README's `python -m langid train` command uses (SIB-200 train, STS-B, tweets:
SIB-200 gives every language 701), plus the fragments cut from them, and scores the model before
quantising (the shipped model loses about 0.01 to quantising) on SIB-200 dev sentences and 3 + 3 + 2
fragments of 1, 2 and 3-5 words per sentence (`python -m langid eval --fragments`), script rules and
code detection off: the model's own figure. One thread, so figures do not depend on the core count.

    python bench/langid_learning_curve.py [--per-language 100 200 400 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langid.corpora import Labelled, sib200, stsb, tweets  # noqa: E402
from langid.evaluate import evaluate  # noqa: E402
from langid.fragments import DEV_SIZES  # noqa: E402
from langid.tagger import LanguageTagger, model_path  # noqa: E402
from langid.train import Settings, balanced, train_one, with_fragments, write_training_file  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-language", type=int, nargs="+", default=[100, 200, 400, 1000])
    args = parser.parse_args()
    train = Labelled([], [])
    train.extend(sib200(DATA / "sib200-train-dev.tar.xz", "train"))
    train.extend(stsb(DATA / "stsb-multi-mt.tar.xz", "train"))
    train.extend(tweets(DATA / "xlmt-umsab-sentiment.tar.xz", "train"))
    dev = with_fragments(sib200(DATA / "sib200-train-dev.tar.xz", "dev"), DEV_SIZES, seed=1)
    shipped = json.loads(model_path("short200").with_suffix(".json").read_text(encoding="utf-8"))["settings"]
    settings = Settings(**shipped)
    print(f"settings {shipped}; dev: {len(dev):,} SIB-200 dev sentences and fragments")
    print(f"{'per language':>12} {'sentences':>10} {'lines':>9} {'train s':>8}   macro-F1 by length (words)")
    for per_language in args.per_language:
        sentences = balanced(train, per_language)
        lines = with_fragments(sentences)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.txt"
            write_training_file(lines, path)
            start = time.perf_counter()
            model = train_one(path, settings, threads=1)
            seconds = time.perf_counter() - start
            model.save_model(str(Path(tmp) / "model.bin"))
            report, _ = evaluate(LanguageTagger(str(Path(tmp) / "model.bin"), detect_code=False, rules=False), dev)
        by_length = "  ".join(f"{name}: {b['macro_f1']:.3f}" for name, b in report.buckets.items())
        print(f"{per_language:>12,} {len(sentences):>10,} {len(lines):>9,} {seconds:>8.0f}   {by_length}", flush=True)


if __name__ == "__main__":
    main()
