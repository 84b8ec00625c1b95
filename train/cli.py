"""`python -m train fit|eval|export`. Exit codes: 0 ok, 1 failed, 2 invalid config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description="Train 3D Matryoshka embedding models on the pipeline's shards."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train (resumes from the latest checkpoint in the config's `out`)")
    fit.add_argument("config")
    fit.add_argument(
        "--until", type=int, help="stop (checkpointed) at this step; a later `fit` resumes on the same schedule"
    )
    ev = sub.add_parser(
        "eval", help="held-out retrieval on the grid of MEL rank x layers x dims; CSV and HTML heatmaps"
    )
    ev.add_argument(
        "checkpoint", help="a checkpoint, a training folder (its latest checkpoint), or a plain model folder (baseline)"
    )
    ev.add_argument("--data", required=True, help="folder of held-out .jsonl.gz files (question, context)")
    ev.add_argument("--out", help="folder for eval.csv and eval.html (default: the CKPT folder named)")
    ev.add_argument("--template", help='query template, e.g. "Instruct: retrieve passages\\nQuery: {query}"')
    (
        ev.add_argument("--ranks", type=int, nargs="*"),
        ev.add_argument("--layers", type=int, nargs="*"),
        ev.add_argument("--dims", type=int, nargs="*"),
    )
    ex = sub.add_parser("export", help="cut a checkpoint to rank R, L layers, D dims and save a standard model folder")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    ex.add_argument("--rank", type=int), ex.add_argument("--layers", type=int), ex.add_argument("--dims", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    return {"fit": _fit, "eval": _evaluate, "export": _export}[args.command](args, console)


def _fit(args: argparse.Namespace, console: Console) -> int:
    from core.settings import ConfigError
    from train.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/]\n{exc}", highlight=False, soft_wrap=True)
        return 2
    from train.loop import Trainer

    try:
        trainer = Trainer(config)
    except ValueError as exc:  # e.g. a batch size that does not divide, or `out` holding another run
        console.print(f"[red]{exc}[/]", highlight=False, soft_wrap=True)
        return 1
    history = trainer.fit(args.until)
    if trainer.rank == 0 and history:
        console.print(
            f"trained to step {trainer.step}; last loss {history[-1]['loss']:.4f}; "
            f"checkpoints under {Path(config.out) / 'checkpoints'}"
        )
        if config.eval and trainer.step == config.steps:
            _eval(
                trainer.model,
                trainer.tokenizer,
                config.eval,
                Path(config.out),
                config.eval_template,
                trainer.grid.ranks,
                trainer.grid.layers,
                trainer.grid.dims,
                console,
            )
    return 0


def _checkpoint(args: argparse.Namespace, console: Console) -> tuple[Path, bool] | None:
    """The checkpoint an eval or export names (a training folder: its latest), and whether it is a
    plain model folder instead (eval only: a baseline); None after saying why there is none."""
    from train.checkpoint import latest

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "trainer_state.json").exists():
        checkpoint = latest(checkpoint) or checkpoint  # a training `out` folder: its latest checkpoint
    plain_model = not (checkpoint / "trainer_state.json").exists() and (checkpoint / "config.json").exists()
    if not (checkpoint / "trainer_state.json").exists() and not (args.command == "eval" and plain_model):
        console.print(f"[red]{args.checkpoint} is not a checkpoint (no trainer_state.json) nor a training folder[/]")
        return None
    return checkpoint, plain_model


def _export(args: argparse.Namespace, console: Console) -> int:
    from train.export import export

    found = _checkpoint(args, console)
    if found is None:
        return 1
    try:
        out = export(found[0], args.out, args.rank, args.layers, args.dims)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    console.print(f"exported to {out}")
    return 0


def _evaluate(args: argparse.Namespace, console: Console) -> int:
    from train.checkpoint import load
    from train.config import query_last

    try:  # the same rule as a config's `eval_template`
        query_last(args.template)
    except ValueError as exc:
        console.print(f"[red]--template {exc}[/]", highlight=False)
        return 2
    found = _checkpoint(args, console)
    if found is None:
        return 1
    checkpoint, plain_model = found
    if plain_model:  # e.g. the untrained base model, for a baseline: its embedding factorised at full rank
        from transformers import AutoModel, AutoTokenizer

        from train.model import Embedder, default_dims, default_layers, default_ranks

        backbone = AutoModel.from_pretrained(checkpoint)
        model, tokenizer = (
            Embedder(backbone, "mean", backbone.config.hidden_size),
            AutoTokenizer.from_pretrained(checkpoint),
        )
        width, n = backbone.config.hidden_size, backbone.config.num_hidden_layers
        state: dict[str, Any] = {
            "ranks": default_ranks(width),
            "layers": default_layers(n),
            "dims": default_dims(width),
        }
    else:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        model, tokenizer = load(checkpoint)
    _eval(
        model,
        tokenizer,
        args.data,
        Path(args.out or args.checkpoint),
        args.template,
        args.ranks or state["ranks"],
        args.layers or state["layers"],
        args.dims or state["dims"],
        console,
    )
    return 0


def _eval(model, tokenizer, data: str, out: Path, template: str | None, ranks, layers, dims, console: Console) -> None:
    from rich.table import Table

    from train.evaluate import grid_eval, load_heldout, report

    out.mkdir(parents=True, exist_ok=True)
    table = grid_eval(
        model, tokenizer, load_heldout(data), ranks, layers, dims, template.replace("\\n", "\n") if template else None
    )
    table.write_csv(out / "eval.csv")
    path = report(table, out / "eval.html", f"{out.name}: held-out retrieval")
    import polars as pl

    mean = table.group_by("rank", "layers", "dims").agg(pl.col("ndcg@10").mean()).sort("rank", "layers", "dims")
    shown = Table(
        title=f"nDCG@10 (mean over languages); all figures: {out / 'eval.csv'}, heatmaps: {path}", title_justify="left"
    )
    for col in ("rank", "layers", "dims", "nDCG@10"):
        shown.add_column(col, justify="right")
    for r, l, d, v in mean.iter_rows():
        shown.add_row(str(r), str(l), str(d), f"{v:.3f}")
    Console().print(shown)


if __name__ == "__main__":
    sys.exit(main())
