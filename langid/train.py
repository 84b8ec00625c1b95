"""Train a fastText language-ID model from labelled text, choosing settings on a dev set.

fastText's supervised mode with character n-grams is what lid.176, GlotLID and OpenLID are built
with; we only write its training file, try a few settings and keep the best by dev macro-F1.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from langid.corpora import Labelled
from langid.labels import canonical
from langid.tagger import WHITESPACE


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


def write_training_file(data: Labelled, path: Path, seed: int = 0) -> None:
    """`__label__<label> <text>` lines, one text per line, shuffled (fastText's SGD sees them in order)."""
    lines = [f"__label__{canonical(label)} {WHITESPACE.sub(' ', text).strip()}\n" for text, label in zip(data.texts, data.labels) if text.strip()]
    random.Random(seed).shuffle(lines)
    path.write_text("".join(lines), encoding="utf-8")


def train_one(train_file: Path, settings: Settings, threads: int):
    import fasttext

    return fasttext.train_supervised(
        input=str(train_file), dim=settings.dim, epoch=settings.epoch, lr=settings.lr, minn=settings.minn, maxn=settings.maxn,
        wordNgrams=settings.word_ngrams, bucket=settings.bucket, minCount=settings.min_count, loss="softmax", thread=threads, verbose=0,
    )


def search(
    train: Labelled,
    dev: Labelled | None,
    grid: dict[str, list],
    out: Path,
    threads: int = 2,
    quantize: bool = True,
    cutoff: int = 200_000,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one model per combination of `grid` values (Settings fields), keep the best on `dev`
    (macro-F1; the first combination when there is no dev set), save it to `out` (quantised to a
    small `.ftz` when `quantize`, keeping the `cutoff` most important words and n-gram buckets). Returns what was tried and chosen, for the model's NOTICE."""
    from langid.evaluate import evaluate
    from langid.tagger import LanguageTagger

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
                f1 = report.macro_f1
            tried.append({**asdict(settings), "train_seconds": round(seconds, 1), "dev_macro_f1": f1})
            log(f"settings {asdict(settings)}: trained in {seconds:.1f} s, dev macro-F1 {f1 if f1 is None else round(f1, 4)}")
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
    chosen = {"settings": asdict(settings), "tried": tried, "labels": len(model.get_labels()), "train_texts": len(train)}
    if dev is not None:
        report, _ = evaluate(LanguageTagger(str(out), detect_code=False), dev)
        chosen["dev_macro_f1_saved_model"] = report.macro_f1
        log(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB), dev macro-F1 {report.macro_f1:.4f}")
    return chosen
