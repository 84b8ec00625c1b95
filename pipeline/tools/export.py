"""`python -m pipeline export RUN_DIR OUT`: a run's shards in the layouts other trainers read.

- `flat` (default): ML-Embed's flat layout, `query, passage, negative_1 .. negative_N` (plus
  `instruction`, `task`, `source`, `language`), one Parquet file per shard so memory stays at one
  shard; negative ids are resolved to their texts through the run's passage table.
- `ml-embed`: the layout of ML-Embed's release, passages by reference: `queries/<source>.parquet`
  (`query, instruction, task, language, positive_id, negative_ids`, one file per source, written a
  shard at a time) and one shared `corpus.parquet` (`doc_id, text, language, source`); with
  `--tokenizer DIR` (a local `tokenizers` file or folder; nothing is downloaded) both carry
  `input_ids` (queries: of the query as exported, template included).

The instruction is kept apart from the query unless a template joins them
(`--template "Instruct: {instruction}\\nQuery: {query}"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.passages import CORPUS_DIR, DOC_ID, NEGATIVE_IDS, POSITIVE_ID, TEXT, PassageTable, corpus_files

Layout = Literal["flat", "ml-embed"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


def joined_query(template: str | None) -> pl.Expr:
    """The query, with the instruction joined by `template` where a row has one."""
    if not template:
        return pl.col("query")
    # `{instruction}` and `{query}` only: a fixed format, never evaluated.
    parts = template.replace("{query}", "\x00query\x00").replace("{instruction}", "\x00instruction\x00").split("\x00")
    pieces = [pl.col(p) if p in ("query", "instruction") else pl.lit(p) for p in parts if p]
    return pl.when(pl.col("instruction").is_not_null()).then(pl.concat_str(pieces)).otherwise(pl.col("query"))


def with_negative_texts(shard: pa.Table, passages: PassageTable, where: str) -> pl.DataFrame:
    """The shard with `negatives` (texts, resolved by id); a missing passage names its row."""
    ids = shard[NEGATIVE_IDS].combine_chunks()
    flat = ids.flatten()
    rows = pc.list_parent_indices(ids).to_pylist()
    texts = passages.texts_of(flat.to_pylist(), [f"{where}: row {r}" for r in rows])
    negatives = pa.ListArray.from_arrays(ids.offsets, pa.array(texts, pa.string()), mask=ids.is_null())
    return pl.from_arrow(shard.append_column("negatives", negatives))  # type: ignore[return-value]


def flat(shard: pl.DataFrame, negatives: int, template: str | None) -> pl.DataFrame:
    columns = [joined_query(template).alias("query"), pl.col("positive").alias("passage")]
    columns += [pl.col("negatives").list.get(k, null_on_oob=True).alias(f"negative_{k + 1}") for k in range(negatives)]
    columns += ["instruction", "task", "source", pl.col("query_lang").alias("language")]
    return shard.select(columns)


def export(run_dir: str | Path, out: str | Path, negatives: int | None = None, template: str | None = None,
           layout: Layout = "flat", tokenizer: str | None = None) -> int:
    """Write the run in `layout`; returns the rows (queries) written. `negatives` defaults to the
    longest list (flat; with ml-embed, lists longer than it are cut)."""
    run_dir, out = Path(run_dir), Path(out)
    shards = sorted((run_dir / "shards").rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no shards under {run_dir / 'shards'}")
    if not (run_dir / CORPUS_DIR).is_dir():
        raise FileNotFoundError(f"no passage table ({run_dir / CORPUS_DIR}): a run written before it existed; run the manifest again")
    if negatives is None:
        negatives = int(pl.scan_parquet(shards).select(pl.col(NEGATIVE_IDS).list.len().max()).collect().item() or 0)
    if layout == "ml-embed":
        return _ml_embed(run_dir, shards, out, negatives, template, tokenizer)
    passages = PassageTable(corpus_files(run_dir))
    rows = 0
    for path in shards:
        target = out / path.relative_to(run_dir / "shards")
        target.parent.mkdir(parents=True, exist_ok=True)
        table = flat(with_negative_texts(pq.read_table(path), passages, str(path)), negatives, template)
        table.write_parquet(target)
        rows += table.height
    return rows


def _ml_embed(run_dir: Path, shards: list[Path], out: Path, negatives: int, template: str | None, tokenizer: str | None) -> int:
    encode = _encoder(tokenizer)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    rows = 0
    try:
        for path in shards:
            shard = pl.read_parquet(path).select(
                joined_query(template).alias("query"), "instruction", "task", "source", pl.col("query_lang").alias("language"),
                POSITIVE_ID, pl.col(NEGATIVE_IDS).list.head(negatives))
            for (source,), part in shard.partition_by("source", as_dict=True, maintain_order=True).items():
                if encode:
                    part = part.with_columns(pl.Series("input_ids", encode(part["query"].to_list()), pl.List(pl.Int32)))
                table = part.drop("source").to_arrow()
                if source not in writers:
                    writers[source] = pq.ParquetWriter(out / "queries" / f"{source}.parquet", table.schema, compression="zstd")
                writers[source].write_table(table)
                rows += part.height
    finally:
        for writer in writers.values():
            writer.close()
    corpus = pl.scan_parquet(corpus_files(run_dir / CORPUS_DIR)).sort(DOC_ID)
    if encode:
        batches = [b.with_columns(pl.Series("input_ids", encode(b[TEXT].to_list()), pl.List(pl.Int32)))
                   for b in corpus.collect().iter_slices(8192)]
        pl.concat(batches).write_parquet(out / "corpus.parquet", compression="zstd")
    else:
        corpus.sink_parquet(out / "corpus.parquet", compression="zstd")
    return rows


def _encoder(tokenizer: str | None):  # noqa: ANN202 (texts -> token ids, or None)
    if not tokenizer:
        return None
    from tokenizers import Tokenizer

    path = Path(tokenizer)
    loaded = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    return lambda texts: [e.ids for e in loaded.encode_batch(texts)]
