"""Exports that the trainers people run read unchanged: ML-Embed's release (a contract test of what its
published code reads), sentence-transformers and FlagEmbedding (their own loaders and trainer), the
policy for rows with fewer negatives, and the errors a user can make."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.passages import CORPUS_SCHEMA, passage_id
from core.record import SCHEMA
from pipeline.engine.checkpoint import write_marker
from tests.conftest import BUCKET, run_cli, upload_tree

# ML-Embed's release as read for this contract: github codefuse-ai/CodeFuse-Embeddings at commit
# 1c5291549b9cee9eeab1cd9de6a67be4d0295da0 (2026-07-03), folder ML-Embed/ (added in f0abe7c, unchanged
# since): run.py (file discovery, train/validation split, the corpus lookup, the collate function),
# utils.py (the task lists), process_data_qwen.py (the raw layout it tokenizes).
RELEASE_NEGATIVES = 24


def export(run: Path | str, out: Path, layout: str, *extra: str):
    return run_cli("export", str(run), str(out), "--layout", layout, "--quiet", *extra)


def task_lists(folder: Path) -> dict[str, list[str]]:
    """The lists `task_lists.py` adds to (read line by line, never executed), checked against the JSON copy."""
    lines = [line for line in (folder / "task_lists.py").read_text(encoding="utf-8").splitlines() if " += " in line]
    lists = {name: json.loads(value) for name, value in (line.split(" += ") for line in lines)}
    assert lists == json.loads((folder / "task_lists.json").read_text(encoding="utf-8"))
    return lists


def release_reads(folder: Path, tokenizer: Path, cache: Path) -> dict[str, int]:
    """What the release's run.py does with its `train_data_path`, in our own words: every
    `<name>_query.parquet` at the top of the folder is a dataset (anything else is skipped silently),
    loaded with `datasets`, given a `dataset_name` column and split 99/1 with seed 0; the one
    `corpus.parquet` beside them maps doc_id -> input_ids through a dict; a batch of 8 rows takes
    the query's ids, the passage's and negatives' ids by doc id (classification: negative_1;
    clustering: 9 of negative_1..24; anything else, which must be in the retrieval list: 7 of
    them), and every sequence must end with EOS. Returns the rows per dataset."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(tokenizer)).eos_token_id
    lists = task_lists(folder)
    names = [f.split("_query.parquet")[0] for f in sorted(os.listdir(folder)) if f.endswith("_query.parquet")]
    assert names and sorted(names) == sorted(n for names in lists.values() for n in names)
    corpus = load_dataset("parquet", data_files=str(folder / "corpus.parquet"), split="train", cache_dir=str(cache))
    id_to_docs = {doc: i for i, doc in enumerate(corpus["doc_id"])}
    assert len(id_to_docs) == len(corpus)
    rows = {}
    for name in names:
        data = load_dataset(
            "parquet",
            data_files=str(folder / f"{name}_query.parquet"),
            split="train",
            keep_in_memory=True,
            cache_dir=str(cache),
        )
        assert "dataset_name" not in data.column_names  # the release adds it
        split = data.add_column("dataset_name", [name] * len(data)).train_test_split(
            train_size=0.99, shuffle=True, seed=0
        )
        if name in lists["CLASSIFICATION_DATASETS"]:
            picked = [0]
        else:
            assert name in lists["CLUSTERING_DATASETS"] + lists["RETRIEVAL_DATASETS"]  # else "Unknown dataset"
            picked = random.Random(0).sample(range(RELEASE_NEGATIVES), 9 if name in lists["CLUSTERING_DATASETS"] else 7)
            assert {f"negative_{i + 1}_input_ids" for i in range(RELEASE_NEGATIVES)} <= set(data.column_names)
        for row in split["train"].select(range(min(8, len(split["train"])))):
            docs = [row["passage_input_ids"], *(row[f"negative_{i + 1}_input_ids"] for i in picked)]
            sequences = [row["query_input_ids"], *(corpus[id_to_docs[d]]["input_ids"] for d in docs)]
            assert all(ids and ids[-1] == eos and len(ids) <= 2048 for ids in sequences)
        rows[name] = len(data)
    return rows


@pytest.mark.slow
def test_ml_embed_layout_is_what_the_release_reads(stage1_run, stage2_run, eos_tokenizer, tmp_path):
    for name, run in (("stage1", stage1_run), ("stage2", stage2_run / "run")):
        out = tmp_path / name
        result = export(run, out, "ml-embed", "--tokenizer", str(eos_tokenizer))
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((out / "export_report.json").read_text())
        assert release_reads(out, eos_tokenizer, tmp_path / "cache") == {
            d["name"]: d["rows_written"] for d in report["datasets"]
        }
        shard_rows = sum(s["rows"] for s in json.loads((run / "shards" / "_SUCCESS.json").read_text())["shards"])
        assert report["rows_written"] + sum(report["dropped"].values()) == report["rows_in"] == shard_rows
    # Stage 1 has no negatives: the pool policy fills all 24 from the dataset's own passages.
    stage1 = json.loads((tmp_path / "stage1" / "export_report.json").read_text())
    assert all(d["filled_rows"] == d["rows_written"] and d["negatives"] == 24 for d in stage1["datasets"])
    # The query's text is the instruction joined by the template: its ids start as the joined text's do.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(eos_tokenizer))
    shards = pl.read_parquet(stage2_run / "run" / "shards" / "xquad_r" / "*.parquet").sort("id")
    exported = pl.read_parquet(tmp_path / "stage2" / "xquad_r_query.parquet").sort("id")
    first = shards.row(0, named=True)
    joined = f"Instruct: {first['instruction']}\nQuery: {first['query']}"
    assert exported["query_input_ids"][0].to_list() == tokenizer(joined, max_length=2047, truncation=True)[
        "input_ids"
    ] + [tokenizer.eos_token_id]
    assert exported["passage_input_ids"][0] == first["positive_id"]


@pytest.mark.slow
def test_flat_layout_is_what_the_release_tokenizer_script_reads(stage2_run, tmp_path):
    out = tmp_path / "flat"
    assert export(stage2_run / "run", out, "flat").returncode == 0
    files = sorted((out / "raw_training_data").glob("*.parquet"))
    assert {f.stem for f in files} == {n for names in task_lists(out).values() for n in names}
    for file in files:  # process_data_qwen.py: num_neg = 24 if 'negative_2' in df else 1; every text tokenized
        df = pq.read_table(file).to_pandas()
        num_neg = 24 if "negative_2" in df.keys() else 1
        texts = df[["query", "passage", *(f"negative_{i}" for i in range(1, num_neg + 1))]]
        assert texts.map(lambda t: isinstance(t, str) and t != "").all().all(), file.name
        assert num_neg == (1 if file.stem == "sib200_topics" else 24)
        assert not (df["passage"] == df["negative_1"]).any()  # a row's positive is never its negative


@pytest.mark.slow
def test_sentence_transformers_trains_on_the_export(stage1_run, stage2_run, small_model, tmp_path):
    from datasets import DatasetDict, load_from_disk
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    try:
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MatryoshkaLoss,
            MultipleNegativesRankingLoss,
        )
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import (
            CachedMultipleNegativesRankingLoss,
            MatryoshkaLoss,
            MultipleNegativesRankingLoss,
        )

    model = SentenceTransformer(str(small_model), device="cpu")
    for name, run in (("stage1", stage1_run), ("stage2", stage2_run / "run")):
        out = tmp_path / name
        assert export(run, out, "sentence-transformers").returncode == 0
        data = load_from_disk(str(out))
        assert isinstance(data, DatasetDict)
        for split in data.values():
            assert split.column_names[:2] == ["anchor", "positive"] and all(
                c.startswith("negative_") for c in split.column_names[2:]
            )
            assert not any(None in split[c] for c in split.column_names)
        prompts = json.loads((out / "prompts.json").read_text())
        small = DatasetDict({k: v.select(range(min(8, len(v)))) for k, v in data.items()})
        for loss in (
            MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [128, 64]),
            CachedMultipleNegativesRankingLoss(model, mini_batch_size=4),
        ):
            args = SentenceTransformerTrainingArguments(
                output_dir=str(tmp_path / "st"),
                max_steps=2,
                per_device_train_batch_size=4,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                disable_tqdm=True,
                seed=0,
                prompts=prompts or None,
                multi_dataset_batch_sampler="round_robin",
            )
            assert (
                SentenceTransformerTrainer(model=model, args=args, train_dataset=small, loss=loss).train().global_step
                == 2
            )
    assert set(prompts) == set(data) and prompts["xquad_r"]["anchor"].startswith("Instruct: Given a question")
    assert len(data["xquad_r"].column_names) == 2 + 7 and len(data["sib200_topics"].column_names) == 3


@pytest.mark.slow
def test_flagembedding_builds_batches_from_the_export(stage2_run, eos_tokenizer, tmp_path):
    from FlagEmbedding.abc.finetune.embedder import (
        AbsEmbedderCollator,
        AbsEmbedderDataArguments,
        AbsEmbedderTrainDataset,
    )
    from transformers import AutoTokenizer

    out = tmp_path / "fe"
    assert export(stage2_run / "run", out, "flagembedding").returncode == 0
    report = json.loads((out / "export_report.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(eos_tokenizer))
    args = AbsEmbedderDataArguments(
        train_data=[str(out / "data")],
        train_group_size=8,
        query_max_len=32,
        passage_max_len=64,
        query_instruction_for_retrieval="",
        cache_path=str(tmp_path / "cache"),
    )
    data = AbsEmbedderTrainDataset(args=args, tokenizer=tokenizer)
    assert len(data) == report["rows_written"]
    query, passages, _ = data[0]
    assert query.startswith("Instruct: ") and len(passages) == 8
    batch = AbsEmbedderCollator(
        tokenizer=tokenizer, query_max_len=32, passage_max_len=64, padding=True, return_tensors="pt"
    )([data[i] for i in range(4)])
    assert batch["queries"]["input_ids"].shape[0] == 4 and batch["passages"]["input_ids"].shape[0] == 32


def write_run(folder: Path, rows: list[dict], passages: list[dict]) -> Path:
    """A finished run folder (shards, passage table, their marker) holding `rows` and `passages`."""
    (folder / "shards" / "s").mkdir(parents=True)
    (folder / "corpus").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "shards" / "s" / "part-00000-t.parquet")
    pq.write_table(
        pa.Table.from_pylist(sorted(passages, key=lambda p: p["doc_id"]), schema=CORPUS_SCHEMA),
        folder / "corpus" / "part-00000-t.parquet",
    )
    write_marker(
        folder / "shards",
        {
            "fingerprint": "t",
            "shards": [{"path": "s/part-00000-t.parquet", "rows": len(rows), "source": "s"}],
            "corpus": [{"path": "part-00000-t.parquet", "rows": len(passages)}],
        },
    )
    return folder


def retrieval_run(folder: Path, scored: bool = False) -> Path:
    """30 retrieval rows: 10 without negatives, 10 with 2, 10 with 25."""
    texts = [f"passage number {i} about topic {i % 7}" for i in range(80)]
    passages = [{"doc_id": passage_id(t), "text": t, "language": "eng_Latn", "source": "s"} for t in texts]
    rows = []
    for i in range(30):
        negatives = [] if i < 10 else [passage_id(texts[40 + (i + j) % 40]) for j in range(2 if i < 20 else 25)]
        rows.append(
            {
                "id": f"{i:032x}",
                "source": "s",
                "task": "retrieval",
                "query": f"question {i}",
                "positive": texts[i],
                "positive_id": passage_id(texts[i]),
                "negative_ids": negatives,
                "licence": "x",
                "origin": f"f:{i}",
                "query_lang": "eng_Latn",
                "instruction": "Find it",
                "positive_score": 9.0 if scored else None,
                "negative_scores": [1.0] * len(negatives) if scored else None,
            }
        )
    return write_run(folder, rows, passages)


@pytest.mark.parametrize(
    ("policy", "written", "dropped"),
    [("pool", 30, {}), ("repeat", 20, {"no_negatives": 10}), ("drop", 10, {"too_few_negatives": 20})],
)
def test_rows_with_fewer_negatives_follow_the_policy(tmp_path, policy, written, dropped):
    run = retrieval_run(tmp_path / "run")
    out = tmp_path / "out"
    result = export(run, out, "flat", "--fill", policy)
    assert result.returncode == 0, result.stderr
    table = pl.read_parquet(out / "raw_training_data" / "s.parquet")
    negatives = [f"negative_{i}" for i in range(1, 25)]
    assert table.height == written and table.select(negatives).null_count().sum_horizontal().item() == 0
    for row in table.iter_rows(named=True):
        own = [row[c] for c in negatives]
        assert row["passage"] not in own
        if policy == "pool":  # distinct: the pool has enough passages for 24
            assert len(set(own)) == 24
    report = json.loads((out / "export_report.json").read_text())
    assert report["rows_in"] == 30 and report["rows_written"] == written and report["dropped"] == dropped
    again = tmp_path / "again"
    assert export(run, again, "flat", "--fill", policy).returncode == 0  # the same draw every time
    assert (again / "raw_training_data" / "s.parquet").read_bytes() == (
        out / "raw_training_data" / "s.parquet"
    ).read_bytes()


def test_flagembedding_scores_only_where_every_row_keeps_its_own(tmp_path):
    run = retrieval_run(tmp_path / "run", scored=True)
    for policy, scored in (("pool", False), ("drop", True)):
        out = tmp_path / policy
        assert export(run, out, "flagembedding", "--fill", policy).returncode == 0
        rows = [json.loads(line) for line in (out / "data" / "s.jsonl").read_text().splitlines()]
        assert all(("neg_scores" in r) == scored and r["prompt"] == "Instruct: Find it\nQuery: " for r in rows)
        assert all(
            len(r["neg_scores"]) == len(r["neg"]) and isinstance(r["pos_scores"][0], float) for r in rows if scored
        )
        assert len(rows) == (30 if policy == "pool" else 10) and min(len(r["neg"]) for r in rows) >= 7


def test_export_errors_are_clear(tmp_path, small_model):
    run = retrieval_run(tmp_path / "run")
    unknown = export(run, tmp_path / "a", "llama-factory")
    assert unknown.returncode == 2 and "invalid choice: 'llama-factory'" in unknown.stderr
    no_tokenizer = export(run, tmp_path / "b", "ml-embed")
    assert no_tokenizer.returncode == 1 and "give --tokenizer DIR" in no_tokenizer.stderr
    no_eos = export(run, tmp_path / "c", "ml-embed", "--tokenizer", str(small_model))
    assert no_eos.returncode == 1 and "has no EOS token" in no_eos.stderr
    assert export(run, tmp_path / "d", "flat").returncode == 0
    exists = export(run, tmp_path / "d", "flat")
    assert exists.returncode == 1 and "exists; remove it or pass --overwrite" in exists.stderr
    # A doc id with no passage: the file and row named, and no output (nor a half-written one).
    pq.write_table(
        pq.read_table(run / "corpus" / "part-00000-t.parquet").slice(1), run / "corpus" / "part-00000-t.parquet"
    )
    lost = export(run, tmp_path / "e", "sentence-transformers")
    assert (
        lost.returncode == 1
        and "shards/s/part-00000-t.parquet: row " in lost.stderr
        and "is not in the passage table" in lost.stderr
    )
    assert not (tmp_path / "e").exists()
    (run / "shards" / "_SUCCESS.json").write_text(json.dumps({"shards": []}))
    no_table = export(run, tmp_path / "f", "flat")
    assert no_table.returncode == 1 and "has no passage table" in no_table.stderr
    not_a_run = export(tmp_path / "nothing", tmp_path / "g", "flat")
    assert not_a_run.returncode == 1 and "not a finished run" in not_a_run.stderr


def test_a_run_in_object_storage_exports_as_on_disk(tmp_path, s3_endpoint):
    run = retrieval_run(tmp_path / "run")
    upload_tree(run, f"s3://{BUCKET}/exports/run")
    assert export(run, tmp_path / "local", "flat").returncode == 0
    result = export(f"s3://{BUCKET}/exports/run", tmp_path / "remote", "flat")
    assert result.returncode == 0, result.stderr
    local, remote = (tmp_path / d / "raw_training_data" / "s.parquet" for d in ("local", "remote"))
    assert local.read_bytes() == remote.read_bytes()
