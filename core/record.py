"""The canonical record: one Arrow schema for every task, from ingestion to the final shards.

Passages are referred to by id (`core/passages.py`): the shards carry `positive_id` and
`negative_ids`, the texts are in the run's passage table. Inside the run, negatives a source gives
stay inline texts (`negatives`, a work column) until a stage stores them by reference."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.passages import NEGATIVE_IDS, NEGATIVES, POSITIVE_ID

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("instruction", pa.string()),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", pa.string()),
        pa.field(POSITIVE_ID, pa.string()),
        pa.field(NEGATIVE_IDS, pa.list_(pa.string())),
        pa.field("positive_score", pa.float32()),
        pa.field("negative_scores", pa.list_(pa.float32())),
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("query_lang", pa.string()),
        pa.field("query_lang_conf", pa.float32()),
        pa.field("positive_lang", pa.string()),
        pa.field("positive_lang_conf", pa.float32()),
        pa.field("negatives_lang", pa.string()),
        pa.field("negatives_lang_conf", pa.float32()),
        pa.field("cross_lingual", pa.bool_()),
        pa.field("dup_count", pa.int32()),
        pa.field("dup_cluster", pa.string()),
        pa.field("near_dup_count", pa.int32()),
        pa.field("licence", pa.string()),
        pa.field("origin", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# Columns that live only inside the run folder (stage checkpoints), never in the shards:
# `negatives` the inline texts of negatives not yet stored by reference (see `core/passages.py`);
# `_drop` is the reason a stage dropped the row (null = kept), `_detail` says more, `_raw` holds the
# original bytes of a row that could not be parsed, `_lang` the language a source declared for the
# row (from a column), `_flags` what the last stage noticed about a kept row (counted in the ledger:
# `count` items, 1 when null; e.g. the mining stage counts the candidates each filter removed).
DROP, DETAIL, RAW, DECLARED_LANG, FLAGS = "_drop", "_detail", "_raw", "_lang", "_flags"
FLAG_TYPE = pa.struct(
    [pa.field("reason", pa.string()), pa.field("language", pa.string()), pa.field("count", pa.int32())]
)
WORK_SCHEMA = pa.schema(
    list(SCHEMA)
    + [
        pa.field(NEGATIVES, pa.list_(pa.string())),
        pa.field(DROP, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(DECLARED_LANG, pa.string()),
        pa.field(FLAGS, pa.list_(FLAG_TYPE)),
    ]
)
INGEST_SCHEMA = WORK_SCHEMA.append(pa.field(RAW, pa.binary()))
# Written by a fused group of stages beside the work columns, for the ledger: the step that dropped
# the row (null: kept by all), the row's query language before the group, and in `_flags` each
# flag's `step` (the stage that raised it).
DROP_STEP, LANG_IN = "_drop_step", "_lang_in"
GROUP_FLAG_TYPE = pa.struct([*FLAG_TYPE, pa.field("step", pa.string())])

# The fields that define a record's content, and so its id.
CONTENT_FIELDS = ("task", "instruction", "query", "positive", "negatives", "label", "score")


def record_id(record: dict[str, Any]) -> str:
    """Stable content hash (BLAKE2b-128, hex) of the record's content fields as ingested."""
    content = json.dumps([record.get(f) for f in CONTENT_FIELDS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(content.encode("utf-8"), digest_size=16).hexdigest()


def to_work_schema(table: pa.Table) -> pa.Table:
    """The table with exactly the work columns, in order and of their types."""
    return table.select(WORK_SCHEMA.names).cast(WORK_SCHEMA)


def kept(batch: pa.Table) -> pa.Table:
    """The rows a stage gets: those no earlier step dropped, with the previous step's flags cleared
    (counted in its ledger already; a fused group's flags carry their step, another type)."""
    batch = batch.filter(pc.is_null(batch.column(DROP)))
    if FLAGS in batch.column_names:
        batch = batch.drop_columns([FLAGS])
    return to_work_schema(batch.append_column(FLAGS, pa.nulls(batch.num_rows, WORK_SCHEMA.field(FLAGS).type)))
