"""Shard writing: every kept row once, files within the size limit and sorted, and the same bytes
(shards and passage table) whatever the order and layout of the checkpoint files (what makes resumed
runs identical)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import passage_id
from core.record import DROP, WORK_SCHEMA, record_id
from pipeline.engine.corpus import write_corpus
from pipeline.engine.manifest import ShardSettings
from pipeline.engine.shards import write_shards


def _checkpoint(folder: Path, rows: list[dict], files: int) -> list[str]:
    folder.mkdir()
    paths = []
    for k in range(files):
        path = folder / f"f{k}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k::files], schema=WORK_SCHEMA), path)
        paths.append(str(path))
    return paths


def _digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.parquet"))}


def test_shards_hold_every_kept_row_once_sorted_and_do_not_depend_on_input_layout(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(3000):
        query = f"question {i} " + "x" * rng.randint(0, 20)
        rows.append(
            {
                "id": record_id({"task": "retrieval", "query": query}),
                "source": "a" if i % 4 else "b",
                "task": "retrieval",
                "query": query,
                "positive": f"passage {i % 700}",
                "negatives": [f"passage {(i + k) % 900}" for k in range(1, i % 4)] or None,
                "licence": "x",
                "origin": f"f:{i}",
                DROP: "exact_duplicate" if i % 10 == 0 else None,
            }
        )
    settings = ShardSettings(rows_per_shard=250)
    outputs = []
    for k, files, ranges in ((1, 3, None), (2, 7, 5)):  # the second: other files, row order, passage-table id ranges
        folder = tmp_path / f"out{k}"
        outputs.append(
            write_shards(
                _checkpoint(tmp_path / f"in{k}", rows, files)[::-1],
                folder / "shards",
                settings,
                "t4g",
                tmp_path / f"refs{k}",
                passage_ranges=ranges,
            )
        )
        assert len(list((tmp_path / f"refs{k}").iterdir())) == (ranges or 1)
        write_corpus(tmp_path / f"refs{k}", [], folder / "corpus", settings, "t4g")
        rng.shuffle(rows)
    first, second = outputs
    assert _digests(tmp_path / "out1") == _digests(tmp_path / "out2") and first == second
    corpus = pq.read_table(tmp_path / "out1" / "corpus").to_pylist()
    named = {f"passage {i % 700}" for i in range(3000) if i % 10} | {
        f"passage {(i + k) % 900}" for i in range(3000) if i % 10 for k in range(1, i % 4)
    }
    assert sorted(r["text"] for r in corpus) == sorted(named) and all(
        r["doc_id"] == passage_id(r["text"]) for r in corpus
    )
    table = pq.read_table(tmp_path / "out1" / "shards")
    kept = [r for r in rows if r[DROP] is None]
    assert sorted(table["origin"].to_pylist()) == sorted(r["origin"] for r in kept)
    assert not (tmp_path / "out1" / "shards" / "_spill").exists()
    for entry in first:
        assert entry["path"].endswith("-t4g.parquet")
        part = pq.read_table(tmp_path / "out1" / "shards" / entry["path"])
        assert 0 < part.num_rows <= 250 and part.num_rows == entry["rows"]
        assert part["id"].to_pylist() == sorted(part["id"].to_pylist()) and set(part["source"].to_pylist()) == {
            entry["source"]
        }
    assert sum(e["rows"] for e in first if e["source"] == "b") == len([r for r in kept if r["source"] == "b"])
