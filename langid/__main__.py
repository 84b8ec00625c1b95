"""`python -m langid eval|train`: measure a language-ID model on labelled text, or train one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from langid.fragments import BUCKET_NAMES
from langid.tagger import BUNDLED_MODELS, DEFAULT_FALLBACK, DEFAULT_MODEL


def _add_data_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        f"--{prefix}data", help="Parquet with text,label columns, or a folder of <label>/*.txt / <label>.txt"
    )
    parser.add_argument(
        f"--{prefix}sib200", help="SIB-200 archive (sib200-train-dev.tar.xz) or the folder it was unpacked into"
    )
    parser.add_argument(f"--{prefix}split", default="dev", help="SIB-200 split (default: dev)")
    parser.add_argument(f"--{prefix}udhr", help="udhr2.zip (files named by ISO 639-3 code)")
    parser.add_argument(
        f"--{prefix}unit",
        choices=["document", "paragraph"],
        default="document",
        help="UDHR: tag whole texts or paragraphs",
    )
    parser.add_argument(f"--{prefix}stsb", help="stsb-multi-mt.tar.xz: both sentences of each pair of the split")
    parser.add_argument(
        f"--{prefix}tweets", help="xlmt-umsab-sentiment.tar.xz: tweets of the split (Latin-script languages)"
    )
    parser.add_argument(f"--{prefix}xquad", help="xquad-r-dev.tar.xz: the questions (dev only; no split)")


def _load(args: argparse.Namespace, prefix: str = ""):
    from langid.corpora import Labelled, read_labelled, sib200, stsb, tweets, udhr2, xquad_questions

    get = lambda name: getattr(args, prefix + name)  # noqa: E731
    data = Labelled([], [])
    if get("data"):
        data.extend(read_labelled(get("data")))
    if get("sib200"):
        data.extend(sib200(get("sib200"), get("split")))
    if get("udhr"):
        data.extend(udhr2(get("udhr"), get("unit")))
    if get("stsb"):
        data.extend(stsb(get("stsb"), get("split")))
    if get("tweets"):
        data.extend(tweets(get("tweets"), "val" if get("split") == "dev" else get("split")))
    if get("xquad"):
        data.extend(xquad_questions(get("xquad")))
    return data if len(data) else None


def print_report(report, console: Console, top: int) -> None:
    from langid.labels import language_name

    console.print(
        f"[bold]{report.n:,} texts[/]: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f}\n"
        f"[bold]{report.covered_n:,} texts in languages the model covers[/]: accuracy {report.covered_accuracy:.4f}, "
        f"macro-F1 {report.covered_macro_f1:.4f}; {len(report.not_covered)} gold labels not covered"
    )
    lengths = Table(title="by length in words (all texts | covered languages)")
    for col in ("words", "n", "accuracy", "macro-F1", "covered n", "covered accuracy", "covered macro-F1"):
        lengths.add_column(col, justify="right")
    for name, b in report.buckets.items():
        lengths.add_row(
            name,
            f"{b['n']:,}",
            f"{b['accuracy']:.4f}",
            f"{b['macro_f1']:.4f}",
            f"{b['covered_n']:,}",
            f"{b['covered_accuracy']:.4f}",
            f"{b['covered_macro_f1']:.4f}",
        )
    console.print(lengths)
    rows = sorted(report.per_language.items(), key=lambda kv: (kv[1]["covered"] == 0, kv[1]["f1"]))
    table = Table(title=f"per language (worst {top} covered first; --json has all)")
    for col in ("label", "language", "n", "precision", "recall", "F1"):
        table.add_column(col, justify="right" if col in ("n", "precision", "recall", "F1") else "left")
    for lang, m in rows[:top]:
        table.add_row(
            lang, language_name(lang), str(m["n"]), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}"
        )
    console.print(table)
    conf = Table(title="top confusions (covered languages)")
    for col in ("gold", "predicted", "count"):
        conf.add_column(col)
    for gold, pred, count in report.confusions[:top]:
        conf.add_row(f"{gold} {language_name(gold)}", f"{pred} {language_name(pred)}", str(count))
    console.print(conf)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m langid", description="Language identification: evaluate or train fastText models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="accuracy, macro-F1, per-language P/R and confusions on labelled text")
    ev.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"a bundled model ({', '.join(BUNDLED_MODELS)}) or a fastText model path"
    )
    ev.add_argument(
        "--fallback",
        default=DEFAULT_FALLBACK,
        help="model asked where the first is unsure, for languages the first lacks",
    )
    ev.add_argument("--no-fallback", action="store_true", help="the model alone")
    ev.add_argument("--no-rules", action="store_true", help="no script rules (Hangul is Korean...) ahead of the model")
    ev.add_argument(
        "--keep-varieties",
        action="store_true",
        help="no preference for a standard over its regional varieties (langid/varieties.py)",
    )
    _add_data_args(ev)
    ev.add_argument(
        "--fragments",
        action="store_true",
        help="also cut each text into fragments of 1, 2 and 3-5 words and score them (by length)",
    )
    ev.add_argument("--no-code", action="store_true", help="do not run the code detector")
    ev.add_argument(
        "--prior",
        type=float,
        nargs="?",
        const=100.0,
        metavar="MAX_ODDS",
        help="revise short texts with the set's own language distribution as the prior, its odds capped at MAX_ODDS "
        "(default 100), as the `langid_prior` stage does per source",
    )
    ev.add_argument(
        "--prior-max-words", default="6-15", choices=BUCKET_NAMES, help="longest length bucket the prior revises"
    )
    ev.add_argument("--top", type=int, default=20, help="rows of the per-language and confusion tables")
    ev.add_argument("--json", help="write the full report here")
    tr = sub.add_parser("train", help="train a fastText language-ID model (settings chosen on dev)")
    _add_data_args(tr)
    _add_data_args(tr, "dev-")
    tr.add_argument(
        "--per-language", type=int, default=1000, help="most training texts per language (before fragments)"
    )
    tr.add_argument("--no-fragments", action="store_true", help="train on the texts only, no fragments cut from them")
    tr.add_argument("--out", required=True, help="model file to write (.ftz when quantised)")
    tr.add_argument("--dim", type=int, nargs="+", default=[64])
    tr.add_argument("--epoch", type=int, nargs="+", default=[10])
    tr.add_argument("--lr", type=float, nargs="+", default=[0.5])
    tr.add_argument("--minn", type=int, nargs="+", default=[2])
    tr.add_argument("--maxn", type=int, nargs="+", default=[5])
    tr.add_argument("--bucket", type=int, nargs="+", default=[1_000_000])
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--no-quantize", action="store_true")
    tr.add_argument("--cutoff", type=int, default=200_000, help="input-matrix rows kept when quantising (model size)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    data = _load(args)
    if data is None:
        parser.error(f"give {'labelled' if args.command == 'eval' else 'training'} data: --data, --sib200 or --udhr")
    return (_eval if args.command == "eval" else _train)(args, data, Console())


def _eval(args: argparse.Namespace, data: Any, console: Console) -> int:
    from langid.evaluate import evaluate
    from langid.fragments import DEV_SIZES, cut
    from langid.tagger import LanguageTagger

    fallback = None if args.no_fallback else args.fallback
    tagger = LanguageTagger(
        args.model,
        detect_code=not args.no_code,
        rules=not args.no_rules,
        fallback=fallback,
        prefer_standard=not args.keep_varieties,
    )
    if args.fragments:
        data.extend(cut(data, DEV_SIZES, seed=1))
    if args.prior is not None and args.prior < 1:
        raise SystemExit(f"--prior: MAX_ODDS must be at least 1, not {args.prior}")
    report, _ = evaluate(tagger, data, prior=args.prior, prior_longest=BUCKET_NAMES.index(args.prior_max_words))
    print_report(report, console, args.top)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": args.model, "fallback": fallback, **report.to_json()}, indent=1), encoding="utf-8"
        )
    return 0


def _train(args: argparse.Namespace, train: Any, console: Console) -> int:
    from langid.train import search

    dev = _load(args, "dev_")
    grid = {k: getattr(args, k) for k in ("dim", "epoch", "lr", "minn", "maxn", "bucket")}
    chosen = search(
        train,
        dev,
        grid,
        Path(args.out),
        args.threads,
        not args.no_quantize,
        args.cutoff,
        args.per_language,
        not args.no_fragments,
        log=console.print,
    )
    Path(args.out).with_suffix(".json").write_text(json.dumps(chosen, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from core.extras import require_extra

    require_extra("python -m langid", "pipeline", ("fasttext",))
    sys.exit(main())
