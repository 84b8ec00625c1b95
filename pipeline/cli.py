"""`python -m pipeline run|validate|schema|stats|dashboard|dedup-eval|export`.

Exit codes: 0 ok, 1 run failed, 2 invalid manifest, 3 output folder busy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console


def _parser() -> argparse.ArgumentParser:
    from pipeline.export.layouts import DEFAULT_TEMPLATE, LAYOUTS
    from pipeline.export.negatives import POLICIES

    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Build embedding-training corpora from a manifest."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a manifest (resumes an interrupted run)")
    run.add_argument("manifest")
    run.add_argument("--ray-address", help="address of an existing Ray cluster (overrides ray.address)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--verbose", action="store_true", help="Ray's own logs and warnings too")
    val = sub.add_parser("validate", help="check a manifest without running it")
    val.add_argument("manifest")
    sc = sub.add_parser("schema", help="print the manifest JSON Schema (for editors)")
    sc.add_argument("--markdown", action="store_true", help="the reference of every key instead (docs/manifest.md)")
    de = sub.add_parser("dedup-eval", help="precision/recall of near-duplicate detection per script on labelled pairs")
    de.add_argument(
        "--data-dir", default="../shared/data", help="folder with udhr2.zip and udhr.zip (builds the calibration set)"
    )
    de.add_argument("--pairs", help="Parquet/JSONL of labelled pairs (a, b, duplicate[, kind, script]) instead")
    de.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a near_dedup stage setting, e.g. --set threshold=0.6 --set shingles=words "
        "(default: the stage's defaults)",
    )
    de.add_argument("--json", help="write the figures here")
    ex = sub.add_parser(
        "export",
        help="write a finished run in the layout another trainer reads (ML-Embed's release, "
        "sentence-transformers, FlagEmbedding)",
    )
    ex.add_argument("run_dir", help="a finished run folder (or s3:// URL)")
    ex.add_argument("out", help="the folder to write (written aside, then renamed: never half written)")
    ex.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        required=True,
        help="ml-embed: the release's tokenized <dataset>_query.parquet + corpus.parquet; "
        "flat: its raw_training_data/; "
        "sentence-transformers: a DatasetDict folder (anchor, positive, negative_1..N) + prompts.json; "
        "flagembedding: data/<dataset>.jsonl (query, pos, neg, prompt, scores)",
    )
    ex.add_argument(
        "--tokenizer",
        help="ml-embed: the local folder of your model's tokenizer (ids end with its EOS; nothing is downloaded)",
    )
    ex.add_argument(
        "--max-length", type=int, default=2048, help="ml-embed: tokens per text, EOS included (the release's 2048)"
    )
    ex.add_argument(
        "--negatives",
        type=int,
        help="sentence-transformers, flagembedding: negatives per row (default: 7, "
        "clustering 9, classification 1; sentence-transformers at most what the dataset has)",
    )
    ex.add_argument(
        "--fill",
        choices=list(POLICIES),
        default="pool",
        help="rows with fewer negatives: pool (from the dataset's passages), repeat (their own), drop",
    )
    ex.add_argument(
        "--by",
        choices=["source", "language"],
        default="source",
        help="one dataset per source, or per source and query language",
    )
    ex.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE.replace("\n", "\\n"),
        help="how an instruction joins its query (ends with {query}); '{query}' leaves instructions out",
    )
    ex.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    st = sub.add_parser("stats", help="per-language statistics of a run as tables (computes them if the run has none)")
    st.add_argument("run_dir")
    st.add_argument("--lang", help="one language in detail, e.g. swh_Latn")
    st.add_argument("--top", type=int, help="only the N largest languages")
    st.add_argument("--reference", help="CSV of language,count to compare shares with (recomputes)")
    st.add_argument("--tokenizer", help="tokenizer.json (or folder) for token counts (recomputes)")
    st.add_argument("--recompute", action="store_true", help="compute the statistics again from the shards")
    st.add_argument("--filters", action="store_true", help="the filter stage's drop rates, language x filter")
    db = sub.add_parser("dashboard", help="write the run's self-contained HTML dashboard (stats/dashboard.html)")
    db.add_argument("run_dir")
    db.add_argument("--out", help="HTML file to write instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    commands = {
        "schema": _schema,
        "dedup-eval": _dedup_eval,
        "export": _export,
        "stats": _stats,
        "dashboard": _stats,
        "validate": _validate,
        "run": _run,
    }
    return commands[args.command](args, console)


def _schema(args: argparse.Namespace, console: Console) -> int:
    from pipeline.api import json_schema
    from pipeline.reporting.manifest_doc import markdown

    print(
        markdown(json_schema()) if args.markdown else json.dumps(json_schema(), indent=2),
        end="" if args.markdown else "\n",
    )
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    from tqdm import tqdm

    from core.passages import MissingPassage
    from pipeline.export import ExportError, export
    from pipeline.reporting.report import print_export

    with tqdm(desc="export", unit=" rows", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = export(
                args.run_dir,
                args.out,
                args.layout,
                tokenizer=args.tokenizer,
                max_length=args.max_length,
                negatives=args.negatives,
                policy=args.fill,
                grouping=args.by,
                template=args.template.replace("\\n", "\n"),
                overwrite=args.overwrite,
                progress=progress,
            )
        except (ExportError, MissingPassage, OSError) as exc:
            bar.close()
            console.print(f"[red]export failed:[/] {exc}", highlight=False, soft_wrap=True)
            return 1
    print_export(report, Console())
    return 0


def _load(args: argparse.Namespace, console: Console):  # noqa: ANN202 (a Manifest, or None after printing why)
    from core.settings import ConfigError
    from pipeline.api import load_manifest

    try:
        return load_manifest(args.manifest)
    except ConfigError as exc:
        console.print(f"[red]invalid manifest[/]\n{exc}", highlight=False, soft_wrap=True)
        return None


def _validate(args: argparse.Namespace, console: Console) -> int:
    manifest = _load(args, console)
    if manifest is None:
        return 2
    console.print(f"{args.manifest}: ok ({len(manifest.sources)} sources, {len(manifest.stages)} stages)")
    return 0


def _run(args: argparse.Namespace, console: Console) -> int:
    manifest = _load(args, console)
    if manifest is None:
        return 2
    from core.passages import MissingPassage
    from pipeline.api import run
    from pipeline.engine.ledger import LedgerError
    from pipeline.engine.lock import RunLocked
    from pipeline.engine.resources import ResourceShortage
    from pipeline.ops.tasks import WorkerLost
    from pipeline.reporting.report import print_summary
    from sources.reader import SourceError

    try:
        result = run(
            manifest, args.ray_address, args.quiet, args.verbose, log=lambda m: console.print(f"[bold blue]>[/] {m}")
        )
    except RunLocked as exc:
        console.print(f"[red]refused:[/] {exc}", highlight=False, soft_wrap=True)
        return 3
    except (SourceError, LedgerError, MissingPassage, ResourceShortage, WorkerLost) as exc:
        console.print(f"[red]run failed:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    print_summary(result, Console())
    return 0


def _stats(args: argparse.Namespace, console: Console) -> int:
    from pipeline.reporting import dashboard, stats
    from pipeline.reporting.report import print_filters, print_stats

    run_dir = Path(args.run_dir)
    recompute = args.command == "stats" and (args.recompute or args.reference or args.tokenizer)
    try:
        if recompute or not (run_dir / stats.STATS_DIR / "languages.parquet").exists():
            stats.compute(run_dir, getattr(args, "tokenizer", None), getattr(args, "reference", None))
        if args.command == "dashboard":
            console.print(f"dashboard: {dashboard.render(run_dir, args.out)}")
            return 0
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]cannot compute statistics:[/] {exc}", highlight=False)
        return 1
    if getattr(args, "filters", False):
        return 0 if print_filters(stats.load(run_dir), Console()) else 1
    if not print_stats(stats.load(run_dir), Console(), args.lang, args.top):
        console.print(f"[red]{args.lang!r} is not a language of this run[/] (see `python -m pipeline stats {run_dir}`)")
        return 1
    return 0


def _dedup_eval(args: argparse.Namespace, console: Console) -> int:
    from pydantic import ValidationError
    from rich.table import Table

    from pipeline.stages.near_dedup import NearDedupConfig
    from pipeline.tools.dedup_eval import run

    try:
        config = NearDedupConfig(stage="near_dedup", **dict(kv.split("=", 1) for kv in args.set))
    except (ValidationError, ValueError) as e:
        console.print(f"[red]invalid --set:[/] {e}")
        return 2
    by_script, by_kind = run(args.data_dir, args.pairs, config)
    out = Console()
    settings = config.model_dump(exclude={"stage", "cross_language", "fields", "checkpoint"})
    described = ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
    for title, figures in (("per script", by_script), ("per kind of pair", by_kind)):
        table = Table(title=f"near-duplicate detection {title}\n{described}, bands x rows {config.banding()}")
        for col in (title.split()[-1], "pairs", "duplicates", "precision", "recall", "F1"):
            table.add_column(col, justify="left" if col in ("script", "pair") else "right")
        for name, m in sorted(figures.items(), key=lambda kv: (kv[0] != "all", -kv[1]["pairs"])):
            table.add_row(
                name,
                str(m["pairs"]),
                str(m["duplicates"]),
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{m['f1']:.3f}",
            )
        out.print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"settings": settings, "bands_rows": config.banding(), "per_script": by_script, "per_kind": by_kind},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
