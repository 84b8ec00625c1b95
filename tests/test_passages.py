"""The passage table: negatives by id in checkpoints and shards, every passage once in `corpus/`,
ids stable, readers (datasets, polars, pyarrow, export) working as they are, a kill -9 while the table
is written resumed to the same bytes, and a negative with no passage an error naming its row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from core.passages import MissingPassage, corpus_files, passage_id
from pipeline.api import load_manifest, run
from pipeline.engine.checkpoint import Checkpoint
from tests.conftest import ROOT, kill_tree, passages_manifest, run_cli, shard_digests


def _run(folder: Path) -> Path:
    manifest = folder / "manifest.yaml"  # written once: the input's paths and times are in the run's fingerprint
    run(load_manifest(manifest if manifest.exists() else passages_manifest(folder)), quiet=True, log=lambda _: None)
    return folder / "run"


@pytest.fixture(scope="module")
def passages_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("passages") / "clean")


def test_records_name_passages_that_the_table_holds_once(passages_run):
    shards = pl.read_parquet(passages_run / "shards" / "**" / "*.parquet")
    corpus = pl.read_parquet(passages_run / "corpus" / "*.parquet")
    assert "negatives" not in shards.columns and corpus.columns == ["doc_id", "text", "language", "source"]
    assert corpus["doc_id"].is_unique().all() and corpus["doc_id"].to_list() == sorted(corpus["doc_id"])
    assert corpus["doc_id"].to_list() == [passage_id(t) for t in corpus["text"]]  # ids are content hashes: stable
    named = set(shards["positive_id"].drop_nulls()) | set(shards["negative_ids"].explode().drop_nulls())
    assert named == set(corpus["doc_id"])  # every passage named, nothing else
    text = dict(corpus.select("doc_id", "text").iter_rows())
    assert all(text[p] == t for p, t in shards.select("positive_id", "positive").iter_rows())
    qa = shards.filter(source="qa")
    given = {
        json.loads(line)["question"]: json.loads(line)["negatives"]
        for line in (passages_run.parent / "qa.jsonl").open()
    }
    assert all([text[d] for d in ids] == given[q] for q, ids in qa.select("query", "negative_ids").iter_rows())
    topics = shards.filter(source="topics")
    assert (topics["negative_ids"].list.len() == 3).all()
    # the checkpoint of the step that made them holds ids, the texts are in the run's passage store
    step = Checkpoint(passages_run / "stages", "01-build_pairs")
    made = pl.read_parquet(step.files()).filter(pl.col("source") == "topics", pl.col("_drop").is_null())
    assert made["negatives"].null_count() == made.height and (made["negative_ids"].list.len() == 3).all()
    stored = pl.read_parquet(passages_run / "passages" / "*.parquet")
    assert set(made["negative_ids"].explode()) <= set(stored["doc_id"])


def test_readers_need_no_conversion(passages_run, tmp_path):
    import datasets

    records = datasets.load_dataset(str(passages_run), split="train")
    corpus = datasets.load_dataset(str(passages_run), "corpus", split="train")
    assert len(records) == pq.read_table(passages_run / "shards").num_rows and "negative_ids" in records.column_names
    assert len(corpus) == pl.scan_parquet(passages_run / "corpus" / "*.parquet").select(pl.len()).collect().item()
    assert corpus.column_names == pq.read_table(passages_run / "corpus").column_names
    # exported for sentence-transformers: the given negatives' texts, in their order
    result = run_cli(
        "export",
        str(passages_run),
        str(tmp_path / "st"),
        "--layout",
        "sentence-transformers",
        "--negatives",
        "3",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    qa = datasets.load_from_disk(str(tmp_path / "st"))["qa"]
    given = {
        json.loads(line)["question"]: json.loads(line)["negatives"]
        for line in (passages_run.parent / "qa.jsonl").open()
    }
    assert all(
        [a, b, c] == given[q] for q, a, b, c in zip(qa["anchor"], qa["negative_1"], qa["negative_2"], qa["negative_3"])
    )


KILLED_AFTER_ONE_TABLE_FILE = """
import sys, time
from pipeline.engine import corpus
real = corpus.write_atomic
def pause_after_one(path, write):
    real(path, write)
    print("written", path, flush=True)
    time.sleep(600)  # where the test kills the run (-9, every process)
corpus.write_atomic = pause_after_one
from pipeline.cli import main
sys.exit(main(["run", sys.argv[1], "--quiet"]))
"""


def test_kill_9_while_writing_the_table_resumes_identically_and_a_lost_passage_names_its_row(passages_run, tmp_path):
    clean = shard_digests(_run(tmp_path / "again"))
    shutil.rmtree(tmp_path / "again" / "run")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_ONE_TABLE_FILE, str(tmp_path / "again" / "manifest.yaml")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    written = proc.stdout.readline()  # type: ignore[union-attr]
    kill_tree(proc.pid)
    proc.wait()
    assert written.startswith("written") and "corpus" in written
    assert not (tmp_path / "again" / "run" / "shards" / "_SUCCESS.json").exists()
    resumed = _run(tmp_path / "again")
    assert len(list((resumed / "corpus").iterdir())) > 1 and shard_digests(resumed) == clean
    # another folder, the same input: the same ids, the same passage table (the shards' `origin` names the folder)
    corpus = {p: d for p, d in clean.items() if p.startswith("corpus/")}
    assert sorted(corpus.values()) == sorted(
        d for p, d in shard_digests(passages_run).items() if p.startswith("corpus/")
    )

    (resumed / "shards" / "_SUCCESS.json").unlink()  # shards and table written again, from a store that lost a file
    lost = sorted((resumed / "passages").glob("*.parquet"))[0]
    gone = pl.read_parquet(lost)["doc_id"].to_list()
    lost.unlink()
    with pytest.raises(
        MissingPassage,
        match=r"row [0-9a-f]{32} \(.*topics.*:\d+\) names negative [0-9a-f]{32}, which is not in the passage store",
    ) as err:
        _run(tmp_path / "again")
    assert any(d in str(err.value) for d in gone)


def test_the_table_built_one_id_range_at_a_time_is_the_same_bytes(passages_run, tmp_path):
    """A large run groups its passages one range of the doc-id space at a time, looking stored texts up
    in a store split by the same ranges: the table must not change."""
    from pipeline.engine.corpus import write_corpus
    from pipeline.engine.shards import write_shards
    from pipeline.ops.passage_store import store_files

    settings = load_manifest(passages_run.parent / "manifest.yaml").shards
    last = sorted(p.name for p in (passages_run / "stages").iterdir() if p.is_dir())[-1]
    refs = tmp_path / "refs"
    write_shards(
        Checkpoint(passages_run / "stages", last).files(), tmp_path / "shards", settings, "t", refs, passage_ranges=3
    )
    store = store_files(str(passages_run / "passages"))
    assert store and len(list(refs.glob("*.parquet"))) == 3
    write_corpus(refs, store, tmp_path / "corpus", settings, "t")
    assert (refs / "store").is_dir()  # the store was split by range, and used
    ours = [pq.read_table(p) for p in sorted((tmp_path / "corpus").glob("*.parquet"))]
    theirs = [pq.read_table(p) for p in corpus_files(passages_run)]
    assert len(ours) == len(theirs) > 1 and all(a.equals(b) for a, b in zip(ours, theirs))
