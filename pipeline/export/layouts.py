"""The files each trainer reads, one writer per layout.

- `ml-embed`: ML-Embed's release, tokenized (`<dataset>_query.parquet` beside one `corpus.parquet`).
- `flat`: the release's raw layout (`raw_training_data/<dataset>.parquet`), which its own tokenizer
  script (`process_data_qwen.py`) reads.
- `sentence-transformers`: a `datasets` DatasetDict folder, one split per dataset, columns `anchor,
  positive, negative_1..N`, and the prompts per dataset in `prompts.json`.
- `flagembedding`: FlagEmbedding's fine-tuning jsonl (`query, pos, neg, prompt`, and the retriever's
  `pos_scores, neg_scores` where every row has them), `data/<dataset>.jsonl`.

A writer gets each dataset's rows as Arrow batches that already hold exactly the negatives it asked
for (`pipeline/export/negatives.py`) and their texts where it needs them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.passages import DOC_ID, NEGATIVE_IDS, PassageTable
from pipeline.export.run import Dataset, ExportError
from pipeline.export.tokens import EosTokenizer

LayoutName = Literal["ml-embed", "flat", "sentence-transformers", "flagembedding"]
DEFAULT_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"
# What ML-Embed's training loop samples per step (its run.py: 7 hard negatives, 9 for clustering,
# the one for classification): the default number of negatives where a layout lets the user choose.
TRAINING_NEGATIVES = {"classification": 1, "clustering": 9}
DEFAULT_NEGATIVES = 7
# The release's task lists (its utils.py): classification and clustering by name; every other
# dataset (retrieval, STS, NLI, bitext) is trained as retrieval, with 24 negatives.
RELEASE_LISTS = {"classification": "CLASSIFICATION_DATASETS", "clustering": "CLUSTERING_DATASETS"}
RELEASE_NEGATIVES = 24


class Template:
    """How an instruction joins its query: a fixed format with `{instruction}` and `{query}`, never
    evaluated; `{query}` comes last, so the part before it is a prompt (sentence-transformers,
    FlagEmbedding)."""

    def __init__(self, text: str):
        if text.count("{query}") != 1 or not text.endswith("{query}") or text.count("{instruction}") > 1:
            raise ExportError(f"template {text!r}: it must end with {{query}} and hold {{instruction}} at most once")
        self.text = text

    def prefix(self, instruction: str | None) -> str:
        """The prompt before a query of this instruction ('' without one)."""
        return self.text[: -len("{query}")].replace("{instruction}", instruction) if instruction else ""

    def join(self, queries: pa.Array, instructions: pa.Array) -> pa.Array:
        """Each query with its instruction joined where it has one."""
        before, _, _ = self.text.partition("{query}")
        head, has, tail = before.partition("{instruction}")
        prefix = (
            pc.binary_join_element_wise(head, pc.fill_null(instructions, ""), tail, "") if has else pa.scalar(before)
        )
        joined = pc.binary_join_element_wise(prefix, queries, "")
        return pc.if_else(pc.is_valid(instructions), joined, queries)


@dataclass
class Shape:
    """What a layout wants of one dataset: `negatives` per row (all of a row's own beyond that too
    when `keep_more`), the prompt mode, and the fewest rows it can train on."""

    negatives: int
    keep_more: bool = False
    prompt: bool = False  # the instruction as a prompt beside the query, not joined into it
    min_rows: int = 1
    scores: bool = False  # the retriever's scores too (every row has them, and no negative was filled)


class Writer:
    """One dataset's output; `write` gets batches with `query`, `prompt`, `positive`, `positive_id`,
    `negative_ids` (and `negatives`, texts, where the layout reads them), scores and `id`."""

    def write(self, batch: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        """Remove what was written (a dataset left too small to train on)."""
        raise NotImplementedError


class Layout:
    name: ClassVar[str]
    needs_texts: ClassVar[bool] = True  # negatives as texts, not ids

    def shape(self, data: Dataset, negatives: int | None) -> Shape:
        raise NotImplementedError

    def open(self, data: Dataset, shape: Shape, folder: Path) -> Writer:
        raise NotImplementedError

    def finish(
        self, folder: Path, written: list[Dataset], passages: PassageTable, prompts: dict[str, str]
    ) -> list[str]:
        """Files beside the datasets'; returns warnings for the report."""
        return []


class _Parquet(Writer):
    def __init__(self, path: Path, schema: pa.Schema, columns: Any):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.schema, self.columns = path, schema, columns
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, batch: pa.Table) -> None:
        self.writer.write_table(pa.table(self.columns(batch), schema=self.schema))

    def close(self) -> None:
        self.writer.close()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _negative_columns(batch: pa.Table, column: str, k: int) -> dict[str, pa.Array]:
    values = batch[column].combine_chunks()
    return {str(i): pc.list_element(values, i) for i in range(k)}


def _task_lists(folder: Path, written: list[Dataset]) -> None:
    """The datasets' names grouped as the release's utils.py lists them, ready to paste."""
    lists: dict[str, list[str]] = {name: [] for name in (*RELEASE_LISTS.values(), "RETRIEVAL_DATASETS")}
    for data in written:
        lists[RELEASE_LISTS.get(data.task, "RETRIEVAL_DATASETS")].append(data.name)
    lines = [
        "# The datasets of this export by task, for ML-Embed's utils.py (codefuse-ai/CodeFuse-Embeddings, ML-Embed/):",
        "# add them to its lists of the same names; a dataset in no list stops its training.",
    ]
    lines += [f"{name} += {json.dumps(names)}" for name, names in lists.items()]
    (folder / "task_lists.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "task_lists.json").write_text(json.dumps(lists, indent=2) + "\n", encoding="utf-8")


def _release_shape(data: Dataset, negatives: int | None) -> Shape:
    """What ML-Embed's release reads: 24 negatives (1 for classification), every one filled, and at
    least 2 rows (its 99/1 train/validation split fails on one)."""
    if negatives is not None:
        raise ExportError(
            "the ml-embed and flat layouts hold what the release reads: 24 negatives (1 for classification); "
            "--negatives is for sentence-transformers and flagembedding"
        )
    return Shape(1 if data.task == "classification" else RELEASE_NEGATIVES, min_rows=2)


class MlEmbed(Layout):
    name = "ml-embed"
    needs_texts = False

    def __init__(self, tokenizer: str | None, max_length: int):
        self.encode = EosTokenizer(tokenizer, max_length)

    def shape(self, data: Dataset, negatives: int | None) -> Shape:
        return _release_shape(data, negatives)

    def open(self, data: Dataset, shape: Shape, folder: Path) -> Writer:
        names = [
            "query_input_ids",
            "passage_input_ids",
            *(f"negative_{i + 1}_input_ids" for i in range(shape.negatives)),
            "id",
        ]
        schema = pa.schema([(names[0], pa.list_(pa.int32())), *((n, pa.string()) for n in names[1:])])

        def columns(batch: pa.Table) -> list[pa.Array]:
            negatives = _negative_columns(batch, NEGATIVE_IDS, shape.negatives)
            return [self.encode(batch["query"].to_pylist()), batch["positive_id"], *negatives.values(), batch["id"]]

        return _Parquet(folder / f"{data.name}_query.parquet", schema, columns)

    def finish(
        self, folder: Path, written: list[Dataset], passages: PassageTable, prompts: dict[str, str]
    ) -> list[str]:
        schema = pa.schema([(DOC_ID, pa.string()), ("input_ids", pa.list_(pa.int32()))])
        with pq.ParquetWriter(folder / "corpus.parquet", schema, compression="zstd") as writer:
            for start in range(0, len(passages), 8192):
                ids, texts = passages.ids.slice(start, 8192), passages.texts.slice(start, 8192)
                writer.write_table(pa.table([ids.combine_chunks(), self.encode(texts.to_pylist())], schema=schema))
        _task_lists(folder, written)
        return [self.encode.warning] if self.encode.warning else []


class Flat(Layout):
    name = "flat"

    def shape(self, data: Dataset, negatives: int | None) -> Shape:
        return _release_shape(data, negatives)

    def open(self, data: Dataset, shape: Shape, folder: Path) -> Writer:
        names = ["query", "passage", *(f"negative_{i + 1}" for i in range(shape.negatives)), "id"]
        schema = pa.schema([(n, pa.string()) for n in names])

        def columns(batch: pa.Table) -> list[pa.Array]:
            return [
                batch["query"],
                batch["positive"],
                *_negative_columns(batch, "negatives", shape.negatives).values(),
                batch["id"],
            ]

        return _Parquet(folder / "raw_training_data" / f"{data.name}.parquet", schema, columns)

    def finish(
        self, folder: Path, written: list[Dataset], passages: PassageTable, prompts: dict[str, str]
    ) -> list[str]:
        _task_lists(folder, written)
        return []


class SentenceTransformers(Layout):
    name = "sentence-transformers"
    STAGING = ".parquet"

    def shape(self, data: Dataset, negatives: int | None) -> Shape:
        wanted = (
            negatives
            if negatives is not None
            else min(TRAINING_NEGATIVES.get(data.task, DEFAULT_NEGATIVES), data.max_negatives)
        )
        # One prompt per dataset where its rows share one instruction; else each anchor holds its own.
        return Shape(wanted, prompt=len(data.instructions) == 1)

    def open(self, data: Dataset, shape: Shape, folder: Path) -> Writer:
        names = ["anchor", "positive", *(f"negative_{i + 1}" for i in range(shape.negatives))]
        schema = pa.schema([(n, pa.string()) for n in names])

        def columns(batch: pa.Table) -> list[pa.Array]:
            return [batch["query"], batch["positive"], *_negative_columns(batch, "negatives", shape.negatives).values()]

        return _Parquet(folder / self.STAGING / f"{data.name}.parquet", schema, columns)

    def finish(
        self, folder: Path, written: list[Dataset], passages: PassageTable, prompts: dict[str, str]
    ) -> list[str]:
        from datasets import Dataset as HfDataset
        from datasets import DatasetDict

        staged, cache = folder / self.STAGING, folder / ".hf_cache"
        splits = {
            d.name: HfDataset.from_parquet(str(staged / f"{d.name}.parquet"), cache_dir=str(cache)) for d in written
        }
        DatasetDict(splits).save_to_disk(str(folder))
        shutil.rmtree(staged)
        shutil.rmtree(cache)
        (folder / "prompts.json").write_text(
            json.dumps({n: {"anchor": p} for n, p in prompts.items() if p}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        return []


class FlagEmbedding(Layout):
    name = "flagembedding"

    def shape(self, data: Dataset, negatives: int | None) -> Shape:
        # FlagEmbedding samples its group from each row's list (repeating a short one): keep every
        # negative a row has, and give each at least `negatives` (it cannot train a row without one).
        wanted = negatives if negatives is not None else TRAINING_NEGATIVES.get(data.task, DEFAULT_NEGATIVES)
        wanted = max(wanted, 1)
        return Shape(wanted, keep_more=True, prompt=True, scores=data.scored and (data.min_negatives or 0) >= wanted)

    def open(self, data: Dataset, shape: Shape, folder: Path) -> Writer:
        # In a folder of their own: FlagEmbedding reads every .json(l) file of the folder it is given.
        return _Jsonl(folder / "data" / f"{data.name}.jsonl", scored=shape.scores)


class _Jsonl(Writer):
    def __init__(self, path: Path, scored: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.scored = scored

    def write(self, batch: pa.Table) -> None:
        columns = ["query", "positive", "negatives", "prompt"] + (
            ["positive_score", "negative_scores"] if self.scored else []
        )
        rows = zip(*(batch[c].to_pylist() for c in columns))
        for values in rows:
            row = {"query": values[0], "pos": [values[1]], "neg": values[2], "prompt": values[3]}
            if self.scored:  # floats always: FlagEmbedding cannot concatenate files of int and float scores
                row |= {"pos_scores": [float(values[4])], "neg_scores": [float(s) for s in values[5]]}
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (MlEmbed, Flat, SentenceTransformers, FlagEmbedding)}


def text_batch(batch: pa.Table, passages: PassageTable, where: Callable[[int], str]) -> pa.Table:
    """`batch` with `negatives`: the texts of its `negative_ids`, looked up in the passage table; a
    missing one names `where(row)`."""
    ids = batch[NEGATIVE_IDS].combine_chunks()
    rows = pc.list_parent_indices(ids)
    texts = passages.take(pc.list_flatten(ids), lambda k: where(rows[k].as_py()))
    offsets = pc.subtract(ids.offsets, ids.offsets[0])  # a sliced array's offsets do not start at 0
    return batch.append_column("negatives", pa.ListArray.from_arrays(offsets, texts, mask=ids.is_null()))
