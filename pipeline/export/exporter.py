"""`python -m pipeline export RUN OUT --layout L`: a finished run's shards as the files another
trainer reads, streamed a batch at a time (memory does not grow with the run), written into a
staging folder beside OUT that is renamed to OUT only when everything is written (a killed export
leaves no half file where a loader would look), and accounted for: rows in, rows written, and rows
dropped by reason, per dataset (`export_report.json`)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from core.passages import NEGATIVE_IDS, PassageTable
from pipeline.export.layouts import DEFAULT_TEMPLATE, LAYOUTS, Layout, Shape, Template, Writer, text_batch
from pipeline.export.negatives import POLICIES, Policy, Pool, fill
from pipeline.export.run import Dataset, ExportError, FinishedRun, Grouping

REPORT = "export_report.json"


@dataclass
class DatasetReport:
    name: str
    source: str
    language: str | None
    task: str
    rows_in: int
    rows_written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    negatives: int = 0  # per row (at least, for flagembedding)
    filled_rows: int = 0
    from_pool: int = 0
    repeated: int = 0
    prompt: str | None = None  # sentence-transformers: the dataset's prompt, where it has one
    scores: bool = False  # flagembedding: pos_scores and neg_scores written


@dataclass
class ExportReport:
    layout: str
    run: str
    out: str
    datasets: list[DatasetReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_in(self) -> int:
        return sum(d.rows_in for d in self.datasets)

    @property
    def rows_written(self) -> int:
        return sum(d.rows_written for d in self.datasets)

    def dropped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for data in self.datasets:
            for reason, rows in data.dropped.items():
                total[reason] = total.get(reason, 0) + rows
        return total

    def to_json(self) -> str:
        summary = {
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "dropped": self.dropped(),
            "rows_per_second": round(self.rows_in / self.seconds) if self.seconds else None,
        }
        return json.dumps({**asdict(self), **summary}, indent=2, ensure_ascii=False) + "\n"


def export(
    run: str,
    out: str | Path,
    layout: str,
    *,
    tokenizer: str | None = None,
    max_length: int = 2048,
    negatives: int | None = None,
    policy: Policy = "pool",
    grouping: Grouping = "source",
    template: str = DEFAULT_TEMPLATE,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write the finished run `run` (a folder or URL) to the local folder `out` in `layout`.
    `progress(rows_done, rows_total)` is called after every batch."""
    started = time.perf_counter()
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if policy not in POLICIES:
        raise ExportError(f"unknown fill policy {policy!r}; choose one of {', '.join(POLICIES)}")
    joiner = Template(template)
    writer = LAYOUTS[layout](tokenizer, max_length) if layout == "ml-embed" else LAYOUTS[layout]()
    finished = FinishedRun(run)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; remove it or pass --overwrite")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's
    staging.mkdir(parents=True)
    report = ExportReport(layout, str(run), str(out))
    datasets = finished.datasets(grouping)
    passages = PassageTable.mapped(finished.corpus, staging / ".passages")
    total, done = sum(d.rows for d in datasets), 0
    written, prompts = [], {}
    for data in datasets:
        shape = writer.shape(data, negatives)
        entry = DatasetReport(data.name, data.source, data.language, data.task, data.rows, negatives=shape.negatives)
        report.datasets.append(entry)
        if data.rows < shape.min_rows:
            entry.dropped["dataset_too_small"] = data.rows
            done += data.rows
            continue
        prompt = shape.prompt and layout == "sentence-transformers"
        entry.prompt = joiner.prefix(data.instruction) if prompt else None
        if policy == "drop":  # short rows go, so every row written keeps its own (scored) negatives
            shape = replace(shape, scores=shape.scores or (layout == "flagembedding" and data.scored))
        entry.scores = shape.scores
        dataset_file = _write_dataset(
            finished,
            data,
            shape,
            writer,
            staging,
            passages,
            joiner,
            policy,
            entry,
            lambda rows, base=done: progress(base + rows, total) if progress else None,
        )
        done += data.rows
        if entry.rows_written < shape.min_rows:  # what the policy left is too little to train on
            dataset_file.discard()
            entry.dropped["dataset_too_small"] = entry.dropped.get("dataset_too_small", 0) + entry.rows_written
            entry.rows_written = 0
            continue
        written.append(data)
        prompts[data.name] = entry.prompt
    report.warnings += writer.finish(staging, written, passages, prompts)
    shutil.rmtree(staging / ".passages")
    report.seconds = time.perf_counter() - started
    (staging / REPORT).write_text(report.to_json(), encoding="utf-8")
    _publish(staging, out)
    return report


def _write_dataset(
    run: FinishedRun,
    data: Dataset,
    shape: Shape,
    layout: Layout,
    folder: Path,
    passages: PassageTable,
    joiner: Template,
    policy: Policy,
    entry: DatasetReport,
    progress: Callable[[int], None],
) -> Writer:
    """The dataset's rows through the policy into the layout's writer (returned, closed)."""
    pool = Pool()
    if policy == "pool" and shape.negatives:
        for _, _, batch in run.batches(data.files, ("source", "query_lang", "positive_id")):
            pool.add(batch["positive_id"].filter(data.matches(batch)).to_pylist())
    drawn = pool.ids()
    out = layout.open(data, shape, folder)
    seen = 0
    try:
        for file, start, batch in run.batches(data.files):
            where = pa.array(range(start, start + batch.num_rows))
            mine = data.matches(batch)
            batch, where = batch.filter(mine), where.filter(mine)
            seen += batch.num_rows
            no_positive = pc.or_(pc.is_null(batch["positive"]), pc.is_null(batch["positive_id"]))
            filled = fill(
                batch["id"], batch["positive_id"], batch[NEGATIVE_IDS], shape.negatives, policy, drawn, shape.keep_more
            )
            reasons = pc.if_else(no_positive, pa.scalar("no_positive"), filled.dropped)
            for item in pc.value_counts(reasons.drop_null()).to_pylist():
                entry.dropped[item["values"]] = entry.dropped.get(item["values"], 0) + item["counts"]
            keep = pc.is_null(reasons)
            batch = batch.set_column(batch.schema.get_field_index(NEGATIVE_IDS), NEGATIVE_IDS, filled.ids).filter(keep)
            kept_rows = where.filter(keep)

            def place(r: int, file: str = file, kept_rows: pa.Array = kept_rows) -> str:
                return f"{file}: row {kept_rows[r].as_py()}"

            # Every passage the trainer will look up exists (never an empty text in its place).
            passages.rows(batch["positive_id"].combine_chunks(), place)
            if layout.needs_texts:
                batch = text_batch(batch, passages, place)
            else:
                ids = batch[NEGATIVE_IDS].combine_chunks()
                parents = pc.list_parent_indices(ids)
                passages.rows(pc.list_flatten(ids), lambda k, parents=parents, place=place: place(parents[k].as_py()))
            out.write(_with_query(batch, shape, joiner))
            entry.rows_written += batch.num_rows
            entry.filled_rows += filled.filled_rows
            entry.from_pool += filled.from_pool
            entry.repeated += filled.repeated
            progress(seen)
    finally:
        out.close()
    return out


def _with_query(batch: pa.Table, shape: Shape, joiner: Template) -> pa.Table:
    """`query` joined with its instruction, or bare beside a `prompt` where the layout takes one."""
    instructions = batch["instruction"].combine_chunks()
    if shape.prompt:
        prompts = pa.array([joiner.prefix(i) for i in instructions.to_pylist()], pa.string())
        return batch.append_column("prompt", prompts)
    joined = joiner.join(batch["query"].combine_chunks(), instructions)
    return batch.set_column(batch.schema.get_field_index("query"), "query", joined).append_column(
        "prompt", pa.nulls(batch.num_rows, pa.string())
    )


def _publish(staging: Path, out: Path) -> None:
    """The staging folder becomes `out` in one rename (an older `out` is removed only then)."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
