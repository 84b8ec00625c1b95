"""Sources: every format reads, and every bad row ends in quarantine with its place and reason."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sources.reader as reader
from core.record import DROP, INGEST_SCHEMA
from sources.config import SourceConfig
from sources.reader import SourceError, plan_units, read_unit
from tests.conftest import SAMPLES


def _source(tmp_path, path, **kw) -> SourceConfig:
    cfg = {
        "name": "s",
        "task": "retrieval",
        "path": str(path),
        "columns": {"query": "q", "positive": "p"},
        "licence": "CC0-1.0",
        **kw,
    }
    return SourceConfig.model_validate(cfg, context={"base_dir": tmp_path})


def _read_all(source: SourceConfig) -> pa.Table:
    return pa.concat_tables([read_unit(u, source) for u in plan_units(source)])


def test_bad_jsonl_rows_are_quarantined_with_line_and_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    huge = json.dumps({"q": "x" * (20 << 20), "p": "y"}).encode()
    lines = [
        json.dumps({"q": "Wie heißt die Hauptstadt?", "p": "Berlin ist die Hauptstadt."}).encode(),  # 1 good
        b'{"q": "broken", "p": ',  # 2 bad json
        '{"q": "caf\u00e9 latin-1", "p": "x"}'.encode("latin-1"),  # 3 not utf-8
        json.dumps({"q": "   ", "p": "x"}).encode(),  # 4 empty text
        json.dumps({"p": "no query"}).encode(),  # 5 missing column
        json.dumps({"q": 42, "p": "x"}).encode(),  # 6 wrong type
        huge,  # 7 20 MB line
        b"",  # 8 blank: not a row
        b'["a", "list"]',  # 9 not an object
        json.dumps({"q": "短い質問", "p": "答え"}, ensure_ascii=False).encode(),  # 10 good
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    table = _read_all(_source(tmp_path, path))
    assert table.schema == INGEST_SCHEMA
    rows = {r["origin"].rsplit(":", 1)[1]: r for r in table.to_pylist()}
    assert rows["1"][DROP] is None and rows["1"]["query"] == "Wie heißt die Hauptstadt?"
    assert rows["10"][DROP] is None and rows["10"]["query"] == "短い質問"
    expected = {
        "2": "bad_json",
        "3": "invalid_encoding",
        "4": "empty_text",
        "5": "missing_field",
        "6": "wrong_type",
        "7": "oversize",
        "9": "not_an_object",
    }
    assert {k: rows[k][DROP] for k in expected} == expected
    assert "8" not in rows and table.num_rows == 9
    assert rows["3"]["_raw"] == lines[2]  # the original bytes, not a mangled decode
    assert rows["7"]["_raw"] == huge
    assert "at byte" in rows["3"]["_detail"] and "column 'q'" in rows["5"]["_detail"]
    assert all(r["origin"].startswith(str(path)) for r in table.to_pylist())


def test_declared_legacy_encoding_decodes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"q": "café crème", "p": "déjà vu"}\n'.encode("latin-1"))
    row = _read_all(_source(tmp_path, path, encoding="latin-1")).to_pylist()[0]
    assert row[DROP] is None and row["query"] == "café crème"


def test_compressed_csv_and_tsv_samples(tmp_path):
    sts = _source(
        tmp_path,
        SAMPLES / "stsb" / "stsb-de-dev.csv.zst",
        task="sts",
        columns={"query": "s1", "positive": "s2", "score": "score"},
        csv={"header": False, "column_names": ["s1", "s2", "score"]},
    )
    table = _read_all(sts)
    assert table.num_rows == 1500 and table.filter(pa.compute.is_valid(table[DROP])).num_rows == 0
    assert table["score"].to_pylist()[0] == 5.0 and table["query"][0].as_py() == "Ein Mann mit einem Schutzhelm tanzt."
    bitext = _source(
        tmp_path,
        SAMPLES / "sib200_bitext" / "eng_Latn-tha_Thai.tsv.gz",
        task="bitext",
        columns={"query": "source", "positive": "target"},
    )
    table = _read_all(bitext)
    assert table.num_rows == 250 and table["origin"][0].as_py().endswith(".tsv.gz:2")  # line 1 is the header


def test_csv_row_with_wrong_cell_count_and_bad_bytes(tmp_path):
    path = tmp_path / "x.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"q,p\nfirst,ok\nonly-one-cell\n\xff\xfe,broken\nlast,ok\n")
    table = _read_all(_source(tmp_path, path))
    reasons = {r["origin"].rsplit(":", 1)[1]: r[DROP] for r in table.to_pylist()}
    assert reasons == {"2": None, "3": "bad_csv", "4": "invalid_encoding", "5": None}


def test_parquet_with_lists_and_a_wrong_type(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"q": ["a", "b"], "p": ["pa", "pb"], "n": [["n1", "n2"], None], "s": [0.5, None]}), path)
    source = _source(tmp_path, path, columns={"query": "q", "positive": "p", "negatives": "n", "positive_score": "s"})
    rows = _read_all(source).to_pylist()
    assert rows[0]["negatives"] == ["n1", "n2"] and rows[0]["positive_score"] == 0.5 and rows[1]["negatives"] is None
    bad = _source(tmp_path, path, columns={"query": "q", "positive": "n"})
    assert [r[DROP] for r in _read_all(bad).to_pylist()] == ["wrong_type", "missing_field"]


def test_corrupt_parquet_is_one_quarantine_row(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    rows = _read_all(_source(tmp_path, path)).to_pylist()
    assert len(rows) == 1 and rows[0][DROP] == "unreadable_file" and rows[0]["origin"] == str(path)


def test_big_jsonl_is_split_without_losing_or_doubling_lines(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"q": f"question {i}", "p": f"passage {i}"}) + "\n" for i in range(5000)))
    monkeypatch.setattr(reader, "CHUNK_BYTES", 20_000)
    source = _source(tmp_path, path)
    units = plan_units(source)
    assert len(units) > 5
    table = pa.concat_tables([read_unit(u, source) for u in units])
    assert table["query"].to_pylist() == [f"question {i}" for i in range(5000)]
    assert [o.rsplit(":", 1)[1] for o in table["origin"].to_pylist()] == [str(i + 1) for i in range(5000)]


def test_hf_saved_dataset_and_offline_hub_id(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"q": ["¿Dónde?", "Где?"], "p": ["Aquí.", "Здесь."]}).save_to_disk(
        str(tmp_path / "saved")
    )
    source = _source(tmp_path, "saved", format="hf")
    rows = _read_all(source).to_pylist()
    assert [r["query"] for r in rows] == ["¿Dónde?", "Где?"] and rows[1]["origin"].endswith(":row=1")
    with pytest.raises(
        SourceError, match=r"source 's': cannot load dataset 'nobody/no-such-dataset' \(not a local folder.*offline"
    ):
        plan_units(_source(tmp_path, "nobody/no-such-dataset", format="hf", split="train"))
