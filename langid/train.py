"""Train a fastText language-ID model from labelled text, choosing settings on a dev set.

fastText's supervised mode with character n-grams is what lid.176, GlotLID and OpenLID are built
with; we only write its training file, try a few settings and keep the best by dev macro-F1.
A model that never saw a short text is lost on queries, so the training file holds each sentence
and fragments cut from it (1, 2 and 3-5 words, `langid/fragments.py`), with at most
`per_language` sentences per language (balanced: a language with more data does not crowd out the
others). Settings are chosen on dev sentences and fragments cut from them alike (the mean of the
macro-F1 per length bucket), and the saved model's length-aware thresholds are calibrated there.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from langid.corpora import Labelled
from langid.fragments import DEFAULT_SIZES, DEV_SIZES, cut
from langid.labels import canonical
from langid.tagger import WHITESPACE
from langid.thresholds import calibrate, table_path, write_thresholds


@dataclass(frozen=True)
class Settings:
    dim: int = 64
    epoch: int = 10
    lr: float = 0.5
    minn: int = 2
    maxn: int = 5
    word_ngrams: int = 1
    bucket: int = 1_000_000
    min_count: int = 1


def balanced(data: Labelled, per_language: int) -> Labelled:
    """At most `per_language` texts per label, the first ones given (so put the corpus that every
    language has first: SIB-200; the others then fill up the languages they have)."""
    kept: dict[str, int] = {}
    out = Labelled([], [])
    for text, label in zip(data.texts, data.labels):
        label = canonical(label)
        if kept.get(label, 0) < per_language:
            kept[label] = kept.get(label, 0) + 1
            out.texts.append(text)
            out.labels.append(label)
    return out


def with_fragments(data: Labelled, sizes=DEFAULT_SIZES, seed: int = 0) -> Labelled:
    """`data` and fragments cut from it."""
    out = Labelled(list(data.texts), list(data.labels))
    out.extend(cut(data, sizes, seed))
    return out


def selection_score(report) -> float:
    """Mean macro-F1 over the length buckets of a dev report: short texts count as much as sentences."""
    return float(np.mean([b["macro_f1"] for b in report.buckets.values()]))


def write_training_file(data: Labelled, path: Path, seed: int = 0) -> None:
    """`__label__<label> <text>` lines, one text per line, shuffled (fastText's SGD sees them in order)."""
    lines = [
        f"__label__{canonical(label)} {WHITESPACE.sub(' ', text).strip()}\n"
        for text, label in zip(data.texts, data.labels)
        if text.strip()
    ]
    random.Random(seed).shuffle(lines)
    path.write_text("".join(lines), encoding="utf-8")


def train_one(train_file: Path, settings: Settings, threads: int):
    import fasttext

    return fasttext.train_supervised(
        input=str(train_file),
        dim=settings.dim,
        epoch=settings.epoch,
        lr=settings.lr,
        minn=settings.minn,
        maxn=settings.maxn,
        wordNgrams=settings.word_ngrams,
        bucket=settings.bucket,
        minCount=settings.min_count,
        loss="softmax",
        thread=threads,
        verbose=0,
    )


def search(
    train: Labelled,
    dev: Labelled | None,
    grid: dict[str, list],
    out: Path,
    threads: int = 2,
    quantize: bool = True,
    cutoff: int = 200_000,
    per_language: int = 1000,
    fragments: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one model per combination of `grid` values (Settings fields) on `train` balanced to
    `per_language` texts per label (plus fragments), keep the best on `dev` and fragments cut from
    it (mean macro-F1 per length bucket; the first combination when there is no dev set), save it to
    `out` (quantised to a small `.ftz` when `quantize`, keeping the `cutoff` most important words
    and n-gram buckets) and calibrate its length-aware thresholds on the dev fragments
    (`<out>.thresholds.tsv`). Returns what was tried and chosen, for the model's NOTICE."""
    from langid.evaluate import evaluate
    from langid.tagger import LanguageTagger

    sentences = balanced(train, per_language)
    train = with_fragments(sentences) if fragments else sentences
    dev = with_fragments(dev, DEV_SIZES, seed=1) if dev is not None else None
    log(
        f"training on {len(sentences):,} texts of {len(set(sentences.labels))} labels, "
        f"{len(train):,} lines with fragments"
    )
    tried, best = [], None
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        write_training_file(train, train_file)
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            settings = Settings(**dict(zip(keys, values)))
            start = time.perf_counter()
            model = train_one(train_file, settings, threads)
            seconds = time.perf_counter() - start
            f1 = None
            if dev is not None:
                model.save_model(str(Path(tmp) / "candidate.bin"))
                report, _ = evaluate(LanguageTagger(str(Path(tmp) / "candidate.bin"), detect_code=False), dev)
                f1 = selection_score(report)
            tried.append({**asdict(settings), "train_seconds": round(seconds, 1), "dev_score": f1})
            log(
                f"settings {asdict(settings)}: trained in {seconds:.1f} s, "
                f"dev mean macro-F1 over lengths {f1 if f1 is None else round(f1, 4)}"
            )
            if best is None or (f1 is not None and f1 > best[0]):
                best = (f1 if f1 is not None else 0.0, settings, model)
            if dev is None:
                break
        _, settings, model = best
        if quantize:
            # Keep the `cutoff` rows of the input matrix with the largest norms, retrain the output
            # layer on them, then product-quantise (how lid.176.ftz was made from lid.176.bin).
            model.quantize(input=str(train_file), qnorm=True, retrain=True, cutoff=cutoff, thread=threads)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_model(str(out))
    chosen = {
        "settings": asdict(settings),
        "tried": tried,
        "labels": len(model.get_labels()),
        "train_texts": len(sentences),
        "train_lines": len(train),
        "per_language": per_language,
        "fragments": fragments,
        "cutoff": cutoff if quantize else None,
    }
    if dev is not None:
        tagger = LanguageTagger(str(out), detect_code=False, rules=False)
        report, predicted = evaluate(tagger, dev)
        chosen["dev_saved_model"] = {"macro_f1": report.macro_f1, "by_length": report.buckets}
        tags = tagger.tag(dev.texts)
        table = calibrate([canonical(g) for g in dev.labels], tags.labels, tags.confidence, tags.buckets)
        write_thresholds(table, table_path(out), THRESHOLDS_HEADER.format(model=out.name, n=len(dev)))
        log(
            f"saved {out} ({out.stat().st_size / 1e6:.1f} MB), dev macro-F1 by length "
            + ", ".join(f"{k}: {v['macro_f1']:.3f}" for k, v in report.buckets.items())
            + f"; thresholds in {table_path(out).name}"
        )
    return chosen


THRESHOLDS_HEADER = """\
Length-aware confidence thresholds of {model}, per predicted label and length bucket (words): below
it a text is `und`. Written by `python -m langid train`: calibrated on its dev texts and fragments
cut from them ({n:,} texts), script rules off; per label and bucket the lowest threshold (0.05
steps) above which >= 90% of the label's predictions are right, else the one that maximises the
label's F1 there; buckets with fewer than 20 predictions take the next longer bucket's value."""
