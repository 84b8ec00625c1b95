"""`python -m pipeline run|validate|schema`. Exit codes: 0 ok, 1 run failed, 2 invalid manifest, 3 output folder busy."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Build embedding-training corpora from a manifest.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a manifest (resumes an interrupted run)")
    run.add_argument("manifest")
    run.add_argument("--ray-address", help="address of an existing Ray cluster (overrides ray.address)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    val = sub.add_parser("validate", help="check a manifest without running it")
    val.add_argument("manifest")
    sub.add_parser("schema", help="print the manifest JSON Schema")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    from pipeline.manifest import ManifestError, json_schema, load_manifest

    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        console.print(f"[red]invalid manifest[/]\n{exc}", highlight=False, soft_wrap=True)
        return 2
    if args.command == "validate":
        console.print(f"{args.manifest}: ok ({len(manifest.sources)} sources, {len(manifest.stages)} stages)")
        return 0

    from pipeline.ledger import LedgerError
    from pipeline.lock import RunLocked
    from pipeline.report import print_summary
    from pipeline.runner import Runner
    from sources.reader import SourceError

    try:
        result = Runner(manifest, args.ray_address, args.quiet, log=lambda m: console.print(f"[bold blue]>[/] {m}")).run()
    except RunLocked as exc:
        console.print(f"[red]refused:[/] {exc}", highlight=False)
        return 3
    except (SourceError, LedgerError) as exc:
        console.print(f"[red]run failed:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    print_summary(result, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
