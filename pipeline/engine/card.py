"""The dataset card (README.md) written into every run folder: schema, sources, licences, counts.

Its YAML header declares the shards as `datasets` configs, so `load_dataset(RUN_DIR)` loads the
shards (not the checkpoints), `load_dataset(RUN_DIR, "<source>")` one source, and
`load_dataset(RUN_DIR, "corpus")` the passage table.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import yaml

from core.passages import CORPUS_DIR, CORPUS_SCHEMA
from core.record import SCHEMA


def write_card(manifest: Any, result: Any) -> None:
    """README.md in the run's local folder (uploaded with it when the output is in object storage)."""
    shards, ledger = result.shards, result.ledger
    where, title = (
        result.output or str(result.run_dir),
        result.run_dir.name if not result.output else result.output.rstrip("/").rsplit("/", 1)[-1],
    )
    # The tag in the patterns: `datasets` caches by config and patterns, not by file contents, so
    # another run (or a re-run with other settings) in a folder of the same name must not match.
    files = f"*-{result.shards_tag}.parquet"
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": f"shards/**/{files}"}]}]
    # The passage table: records name passages by id (`positive_id`, `negative_ids`); a source of
    # that name keeps its records in the default config.
    configs.append({"config_name": CORPUS_DIR, "data_files": [{"split": "train", "path": f"{CORPUS_DIR}/{files}"}]})
    if manifest.shards.partition_by[0] == "source":
        for src in sorted({s["source"] for s in shards} - {CORPUS_DIR}):
            configs.append({"config_name": src, "data_files": [{"split": "train", "path": f"shards/{src}/**/{files}"}]})
    header = yaml.safe_dump(
        {"configs": configs, "license": "other", "pretty_name": title}, sort_keys=False, allow_unicode=True
    )

    rows_by_source: dict[str, int] = {}
    for s in shards:
        rows_by_source[s.get("source", "all")] = rows_by_source.get(s.get("source", "all"), 0) + s["rows"]
    last = ledger.filter(pl.col("kind") == "out", pl.col("step") == ledger["step"].max())
    languages = last.group_by("language").agg(pl.col("rows").sum()).sort("rows", descending=True)

    lines = [
        f"---\n{header}---",
        f"# {title}",
        "",
        f"Built by the corpus pipeline from {len(manifest.sources)} source(s): {sum(rows_by_source.values()):,} rows "
        f"in {len(shards)} Parquet shard(s) under `shards/`.",
        "",
        "```python",
        "import datasets, polars",
        f"datasets.load_dataset('{where}')  # or the source's name as 2nd argument",
        f"datasets.load_dataset('{where}', '{CORPUS_DIR}')  # the passages that positive_id and negative_ids name",
        f"polars.scan_parquet('{where}/shards/**/*.parquet')",
        "```",
        "",
        "## Sources",
        "",
        "| source | task | licence | rows | origin |",
        "|---|---|---|---|---|",
    ]
    for src in manifest.sources:
        lines.append(
            f"| {src.name} | {src.task} | {src.licence} | {rows_by_source.get(src.name, 0):,} | `{src.path}` |"
        )
    lines += ["", "## Languages (query)", "", "| language | rows |", "|---|---|"]
    lines += [f"| {lang} | {n:,} |" for lang, n in languages.iter_rows()]
    lines += ["", "## Rows per step", "", "| step | in | out | dropped |", "|---|---|---|---|"]
    for st in result.steps:
        drops = ", ".join(f"{k}: {v:,}" for k, v in sorted(st.dropped.items())) or "0"
        lines.append(f"| {st.name} | {st.rows_in:,} | {st.rows_out:,} | {drops} |")
    lines += ["", "## Schema", "", "| column | type |", "|---|---|"]
    lines += [f"| {f.name} | {f.type} |" for f in SCHEMA]
    lines += ["", f"Passages (`{CORPUS_DIR}/`, each once):", "", "| column | type |", "|---|---|"]
    lines += [f"| {f.name} | {f.type} |" for f in CORPUS_SCHEMA]
    lines += [
        "",
        "The ledger (`ledger.parquet`) has every step's rows in, out and dropped by reason, per source and language;",
        "`quarantine/` holds rows that could not be read, with their original bytes, place and reason.",
        "",
    ]
    (result.run_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
