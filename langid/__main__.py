"""`python -m langid eval|train`: measure a language-ID model on labelled text, or train one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _add_data_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}data", help="Parquet with text,label columns, or a folder of <label>/*.txt / <label>.txt")
    parser.add_argument(f"--{prefix}sib200", help="SIB-200 archive (sib200-train-dev.tar.xz) or the folder it was unpacked into")
    parser.add_argument(f"--{prefix}split", default="dev", help="SIB-200 split (default: dev)")
    parser.add_argument(f"--{prefix}udhr", help="udhr2.zip (files named by ISO 639-3 code)")
    parser.add_argument(f"--{prefix}unit", choices=["document", "paragraph"], default="document", help="UDHR: tag whole texts or paragraphs")


def _load(args: argparse.Namespace, prefix: str = ""):
    from langid.corpora import Labelled, read_labelled, sib200, udhr2

    get = lambda name: getattr(args, prefix + name)  # noqa: E731
    data = Labelled([], [])
    if get("data"):
        data.extend(read_labelled(get("data")))
    if get("sib200"):
        data.extend(sib200(get("sib200"), get("split")))
    if get("udhr"):
        data.extend(udhr2(get("udhr"), get("unit")))
    return data if len(data) else None


def print_report(report, console: Console, top: int) -> None:
    from langid.labels import language_name

    console.print(
        f"[bold]{report.n:,} texts[/]: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f}\n"
        f"[bold]{report.covered_n:,} texts in languages the model covers[/]: accuracy {report.covered_accuracy:.4f}, "
        f"macro-F1 {report.covered_macro_f1:.4f}; {len(report.not_covered)} gold labels not covered"
    )
    rows = sorted(report.per_language.items(), key=lambda kv: (kv[1]["covered"] == 0, kv[1]["f1"]))
    table = Table(title=f"per language (worst {top} covered first; --json has all)")
    for col in ("label", "language", "n", "precision", "recall", "F1"):
        table.add_column(col, justify="right" if col in ("n", "precision", "recall", "F1") else "left")
    for lang, m in rows[:top]:
        table.add_row(lang, language_name(lang), str(m["n"]), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}")
    console.print(table)
    conf = Table(title="top confusions (covered languages)")
    for col in ("gold", "predicted", "count"):
        conf.add_column(col)
    for gold, pred, count in report.confusions[:top]:
        conf.add_row(f"{gold} {language_name(gold)}", f"{pred} {language_name(pred)}", str(count))
    console.print(conf)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m langid", description="Language identification: evaluate or train fastText models.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="accuracy, macro-F1, per-language P/R and confusions on labelled text")
    ev.add_argument("--model", default="lid176", help="`lid176`, `sib200` (bundled) or a fastText model path")
    _add_data_args(ev)
    ev.add_argument("--no-code", action="store_true", help="do not run the code detector")
    ev.add_argument("--top", type=int, default=20, help="rows of the per-language and confusion tables")
    ev.add_argument("--json", help="write the full report here")
    tr = sub.add_parser("train", help="train a fastText language-ID model (settings chosen on dev)")
    _add_data_args(tr)
    tr.add_argument("--dev-data")
    tr.add_argument("--dev-sib200")
    tr.add_argument("--dev-split", default="dev")
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
    from langid.tagger import LanguageTagger

    tagger = LanguageTagger(args.model, detect_code=not args.no_code)
    report, _ = evaluate(tagger, data)
    print_report(report, console, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, **report.to_json()}, indent=1), encoding="utf-8")
    return 0


def _train(args: argparse.Namespace, train: Any, console: Console) -> int:
    from langid.corpora import Labelled, read_labelled, sib200
    from langid.train import search

    dev = Labelled([], [])
    if args.dev_data:
        dev.extend(read_labelled(args.dev_data))
    if args.dev_sib200:
        dev.extend(sib200(args.dev_sib200, args.dev_split))
    grid = {k: getattr(args, k) for k in ("dim", "epoch", "lr", "minn", "maxn", "bucket")}
    chosen = search(train, dev if len(dev) else None, grid, Path(args.out), args.threads, not args.no_quantize, args.cutoff, log=console.print)
    Path(args.out).with_suffix(".json").write_text(json.dumps(chosen, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from sources.extras import require_extra

    require_extra("python -m langid", "pipeline", ("fasttext",))
    sys.exit(main())
