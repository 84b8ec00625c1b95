"""The passage store of a run in flight: negative texts written once, rows keep their ids.

A stage that makes negatives (`build_pairs`, `mine_negatives`) calls `store_negatives` on its output:
each row's inline `negatives` texts become `negative_ids` (`core/passages.passage_id`), and the
distinct texts go to one Parquet file of `doc_id, text` in the store folder (`passages/` of the run,
local or in object storage). The file is named by the hash of its ids, so a step re-run after a
crash writes the same file again, and a text is always found under its id; files of attempts that
never committed hold only texts under their own ids, so they can never make a lookup wrong. The
final passage table (`corpus/`, see `pipeline/engine/corpus.py`) takes from the store only the ids
that kept rows name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.passages import DOC_ID, NEGATIVE_IDS, NEGATIVES, TEXT, passage_id
from pipeline.ops.arrow import replace_column
from pipeline.ops.files import write_atomic

STORE_SCHEMA = pa.schema([pa.field(DOC_ID, pa.string(), nullable=False), pa.field(TEXT, pa.string(), nullable=False)])


def store_negatives(batch: pa.Table, store: str | None) -> pa.Table:
    """`batch` with its inline negatives moved to the store (`negatives` null, `negative_ids` set);
    unchanged without a store (a stage run outside a run folder keeps its texts inline)."""
    if not store or batch.num_rows == 0 or batch.column(NEGATIVES).null_count == batch.num_rows:
        return batch
    texts: dict[str, str] = {}
    ids = []
    for own, current in zip(batch.column(NEGATIVES).to_pylist(), batch.column(NEGATIVE_IDS).to_pylist()):
        if own is None:
            ids.append(current)
            continue
        mine = [passage_id(t) for t in own]
        texts.update(zip(mine, own))
        ids.append(mine)
    if texts:
        order = sorted(texts)
        table = pa.table({DOC_ID: order, TEXT: [texts[d] for d in order]}, schema=STORE_SCHEMA)
        name = hashlib.blake2b("\n".join(order).encode(), digest_size=16).hexdigest()
        _write(table, storage.join(store, f"{name}.parquet"))
    batch = replace_column(batch, NEGATIVE_IDS, pa.array(ids, batch.schema.field(NEGATIVE_IDS).type))
    return replace_column(batch, NEGATIVES, pa.nulls(batch.num_rows, batch.schema.field(NEGATIVES).type))


def _write(table: pa.Table, path: str) -> None:
    """Whole or not at all: renamed into place locally; an object appears whole once uploaded."""
    if storage.is_url(path):
        storage.write_parquet(table, path, compression="zstd")
        return
    local = Path(path)
    local.parent.mkdir(parents=True, exist_ok=True)
    if not local.exists():  # named by its content: an existing file is this one
        write_atomic(local, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def store_files(store: str) -> list[str]:
    """Every file of the store (none when there is no store yet)."""
    return [p for p in storage.list_files(store) if p.endswith(".parquet")]  # none when the store does not exist
