"""Flat export: query, passage, negative_1..N per shard, instructions joined only on request."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import CORPUS_SCHEMA
from core.record import SCHEMA
from tests.conftest import by_reference, run_cli


def test_export_flat_layout_with_and_without_template(tmp_path):
    rows = [{"id": "1", "source": "s", "task": "retrieval", "query": "Who wrote Faust?", "positive": "Goethe wrote Faust.", "licence": "x",
             "origin": "f:1", "negatives": ["Schiller wrote plays.", "Faust is a legend."], "instruction": "Retrieve passages", "query_lang": "eng_Latn"},
            {"id": "2", "source": "s", "task": "sts", "query": "A man dances.", "positive": "A man is dancing.", "licence": "x", "origin": "f:2"}]
    rows, passages = by_reference(rows)
    (tmp_path / "run" / "shards" / "s").mkdir(parents=True)
    (tmp_path / "run" / "corpus").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "run" / "shards" / "s" / "part-00000-abc.parquet")
    pq.write_table(pa.Table.from_pylist(passages, schema=CORPUS_SCHEMA), tmp_path / "run" / "corpus" / "part-00000-abc.parquet")
    assert run_cli("export", str(tmp_path / "run"), str(tmp_path / "flat")).returncode == 0
    flat = pl.read_parquet(tmp_path / "flat" / "s" / "part-00000-abc.parquet")
    assert flat.columns == ["query", "passage", "negative_1", "negative_2", "instruction", "task", "source", "language"]
    assert flat.row(0) == ("Who wrote Faust?", "Goethe wrote Faust.", "Schiller wrote plays.", "Faust is a legend.", "Retrieve passages", "retrieval", "s", "eng_Latn")
    assert flat.row(1)[2:4] == (None, None)
    result = run_cli("export", str(tmp_path / "run"), str(tmp_path / "joined"), "--negatives", "1", "--template", "Instruct: {instruction}\\nQuery: {query}")
    assert result.returncode == 0, result.stderr
    joined = pl.read_parquet(tmp_path / "joined" / "s" / "part-00000-abc.parquet")
    assert joined["query"].to_list() == ["Instruct: Retrieve passages\nQuery: Who wrote Faust?", "A man dances."] and "negative_2" not in joined.columns
    pq.write_table(pa.Table.from_pylist(passages[1:], schema=CORPUS_SCHEMA), tmp_path / "run" / "corpus" / "part-00000-abc.parquet")
    lost = run_cli("export", str(tmp_path / "run"), str(tmp_path / "broken"))
    assert lost.returncode == 1 and f"s/part-00000-abc.parquet: row 0: passage {passages[0]['doc_id']} is not in the passage table" in lost.stderr
