"""The trainer on small real data (XQuAD-R and SIB-200 samples written as shards): MEL factorisation,
the batch stream, resume, export to sentence-transformers, and 2-process torchrun against 1 process."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from core.passages import CORPUS_DIR, CORPUS_SCHEMA, MissingPassage
from core.record import SCHEMA
from core.settings import ConfigError
from tests.conftest import ROOT, SAMPLES, by_reference
from train.config import load_config
from train.data import Batches, rank_slice
from train.model import FactorizedEmbedding

TOPICS = ["science", "travel", "politics", "sports", "health"]
# XQuAD-R rows: Greek a small group
LANGS = {"en": ("eng_Latn", 60), "de": ("deu_Latn", 60), "es": ("spa_Latn", 60), "el": ("ell_Grek", 5)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A run folder's shards/: XQuAD-R retrieval pairs (3 languages) and a classification source."""
    root = tmp_path_factory.mktemp("train") / "run"
    rows = []
    for code, (lang, n) in LANGS.items():
        with gzip.open(SAMPLES / "xquad_r" / f"{code}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in list(f)[:n]:
                r = json.loads(line)
                rows.append(
                    {
                        "source": "xquad_r",
                        "task": "retrieval",
                        "query": r["question"],
                        "positive": r["context"],
                        "negatives": None,
                        "instruction": None,
                        "query_lang": lang,
                        "positive_lang": lang,
                    }
                )
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows[:90]):
        topic = TOPICS[i % 5]
        rows.append(
            {
                "source": "topics",
                "task": "classification",
                "query": r["positive"][:200],
                "positive": f"The text is about {topic}.",
                "query_lang": r["query_lang"],
                "positive_lang": "eng_Latn",
                "negatives": [f"The text is about {t}." for t in rng.permutation([t for t in TOPICS if t != topic])],
                "instruction": "Classify the topic",
            }
        )
    rows, passages = by_reference(rows)  # negatives by id, their texts once in the run's passage table
    for source in ("xquad_r", "topics"):
        part = [
            dict({f: None for f in SCHEMA.names}, id=str(i), origin=str(i), licence="x", **r)
            for i, r in enumerate(rows)
            if r["source"] == source
        ]
        (root / "shards" / source).mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(part, schema=SCHEMA),
            root / "shards" / source / "part-00000-test.parquet",
            row_group_size=50,
        )
    (root / CORPUS_DIR).mkdir()
    pq.write_table(pa.Table.from_pylist(passages, schema=CORPUS_SCHEMA), root / CORPUS_DIR / "part-00000-test.parquet")
    return root


def _config(folder, shards, model_dir, **over) -> str:
    data = {
        "out": str(folder / "out"),
        "data": {"shards": [str(shards)], "negatives": {"classification": 2}, "max_length": 48, "shuffle_buffer": 40},
        "model": {"path": str(model_dir) if model_dir else None, "dropout": 0.0},
        "batch_size": 8,
        "steps": 4,
        "log_every": 1,
        "save_every": 2,
        "lr": 1e-3,
        "seed": 3,
        "matryoshka": {"dims": [8, 16, 32], "layers": [1, 2], "ranks": [8, 32]},
    }
    data.update(over)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, shards):
    from train.small_model import build_small_model

    texts = [t for t in pq.read_table(shards / "shards" / "xquad_r").column("positive").to_pylist()]
    return build_small_model(
        texts, tmp_path_factory.mktemp("tiny") / "model", vocab_size=1500, hidden=32, layers=2, heads=2, max_length=64
    )


def _train(*args: str, env: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    cmd = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={torchrun}",
            "--master-port=29533",
            "-m",
            "train",
        ]
        if torchrun
        else [sys.executable, "-m", "train"]
    )
    return subprocess.run(
        cmd + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_mel_factorisation_starts_at_the_embedding_and_gathers_then_projects():
    torch.manual_seed(0)
    weight = torch.randn(300, 24)
    mel = FactorizedEmbedding.from_embedding(weight, 24)
    assert torch.allclose(mel.merged(24), weight, atol=1e-4)
    ids = torch.randint(0, 300, (5, 7))
    for rank in (4, 12, 24):
        mel.rank = rank
        assert torch.allclose(mel(ids), mel.merged(rank)[ids], atol=1e-5)
    errors = [torch.linalg.norm(mel.merged(r) - weight) for r in (4, 12, 24)]
    assert errors[0] > errors[1] > errors[2]  # the leading ranks carry the most


def test_batches_one_source_each_deterministic_and_split_across_ranks(tmp_path, shards, tiny_model):
    config = load_config(_config(tmp_path, shards, tiny_model))
    a = iter(Batches(config.data, 8, seed=1))
    b = iter(Batches(config.data, 8, seed=1))
    sources = set()
    for _ in range(12):
        x, y = next(a), next(b)
        assert (x.source, x.queries, x.negatives, x.owner) == (y.source, y.queries, y.negatives, y.owner)
        sources.add(x.source)
        if x.task == "classification":
            assert x.owner == sorted(x.owner) and all(x.owner.count(i) == 2 for i in range(8)) and not x.in_batch
            assert all(q.startswith("Instruct: Classify the topic\nQuery: ") for q in x.queries)
            # pooled without it (include_prompt: false)
            assert x.prompts == ["Instruct: Classify the topic\nQuery: "] * 8
        else:
            assert x.negatives == [] and x.in_batch and x.prompts == [""] * 8
        halves = [rank_slice(x, r, 2) for r in (0, 1)]
        assert halves[0].queries + halves[1].queries == x.queries
        assert [x.negatives[i] for i, o in enumerate(x.owner) if o >= 4] == halves[1].negatives
    assert sources == {"xquad_r", "topics"}
    config.data.sampling, config.data.alpha = "temperature", 0.5
    t = Batches(config.data, 8)
    assert np.allclose(t.probabilities, np.sqrt([90, 185]) / np.sqrt([90, 185]).sum())  # topics, xquad_r (sorted)
    config.data.weights = {"topics": 3.0}  # a mixture weight multiplies the source's chance
    assert np.allclose(
        Batches(config.data, 8).probabilities,
        np.array([3, 1]) * np.sqrt([90, 185]) / (np.array([3, 1]) * np.sqrt([90, 185])).sum(),
    )
    config.data.weights = {"topics": 0}
    assert {b.source for b, _ in zip(Batches(config.data, 8), range(20))} == {"xquad_r"}
    again = [b.queries for b, _ in zip(Batches(config.data, 8), range(5))]
    first = Batches(config.data, 8)
    # each pass from the seed
    assert [b.queries for b, _ in zip(first, range(5))] == again == [b.queries for b, _ in zip(first, range(5))]
    config.data.weights = {"topic": 1.0}
    with pytest.raises(
        ValueError,
        match=r"data.weights names sources that the shards do not hold: \['topic'\] "
        r"\(they hold \['topics', 'xquad_r'\]\)",
    ):
        Batches(config.data, 8)


def test_batches_resolve_negative_ids_through_the_passage_table_and_name_a_missing_one(tmp_path, shards, tiny_model):
    config = load_config(_config(tmp_path, shards, tiny_model))
    batches = [b for b, _ in zip(Batches(config.data, 8, seed=2), range(16)) if b.task == "classification"]
    assert batches and all(len(b.negatives) == 16 for b in batches)
    for b in batches:  # texts of the passage table, other topics than the query's own
        assert all(n.startswith("The text is about ") and n != b.positives[o] for n, o in zip(b.negatives, b.owner))
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    corpus = broken / CORPUS_DIR / "part-00000-test.parquet"
    pq.write_table(pq.read_table(corpus).slice(1), corpus)  # a passage lost
    config = load_config(_config(tmp_path / "b", broken, tiny_model))
    with pytest.raises(
        MissingPassage,
        match=r"topics/part-00000-test.parquet: row group \d+, row \d+: passage [0-9a-f]{32} "
        r"is not in the passage table \(4 passages\)",
    ):
        for _ in zip(Batches(config.data, 8), range(40)):
            pass


def test_batches_by_language_pool_small_groups_and_key_shared_positives(tmp_path, shards, tiny_model):
    config = load_config(
        _config(
            tmp_path,
            shards,
            tiny_model,
            data={"shards": [str(shards)], "batch_by": ["source", "query_lang"], "sampling": "temperature"},
        )
    )
    table = pq.read_table(shards / "shards", columns=["source", "query", "query_lang"]).to_pylist()
    lang_of = {(r["source"], r["query"]): r["query_lang"] for r in table}
    batches = Batches(config.data, 8, seed=0)
    # Greek (5 rows) cannot fill a batch: pooled into its source's "*" group, never dropped
    assert batches.sizes == {
        ("topics", "deu_Latn"): 30,
        ("topics", "eng_Latn"): 60,
        ("xquad_r", "*"): 5,
        ("xquad_r", "deu_Latn"): 60,
        ("xquad_r", "eng_Latn"): 60,
        ("xquad_r", "spa_Latn"): 60,
    }
    seen, shared = set(), 0
    for batch in (b for b, _ in zip(batches, range(100))):
        langs = {lang_of[(batch.source, q.split("Query: ")[-1])] for q in batch.queries}
        seen |= langs
        assert len(langs) == 1 or langs == {"ell_Grek"}, langs  # one language per batch (the pool: all of Greek)
        for i, key in enumerate(batch.keys):  # a key names the first row with the same positive
            assert batch.positives[key] == batch.positives[i] and batch.positives.index(batch.positives[i]) == key
            shared += key != i
    assert seen == {lang for lang, _ in LANGS.values()} and shared > 0
    by_source = {
        s: sum(p for g, p in zip(batches.sizes, batches.probabilities) if g[0] == s) for s in ("topics", "xquad_r")
    }
    # grouping keeps the sources' shares
    assert by_source["xquad_r"] / by_source["topics"] == pytest.approx(np.sqrt(185 / 90))
    relaid = tmp_path / "polars"  # the same shards written by polars (large_string columns) group the same way
    for f in (shards / "shards").rglob("*.parquet"):
        (relaid / f.parent.name).mkdir(parents=True, exist_ok=True)
        pl.read_parquet(f).write_parquet(relaid / f.parent.name / f.name)
    config.data.shards = [str(relaid)]
    assert Batches(config.data, 8, seed=0).sizes == batches.sizes
    bad = _config(tmp_path / "bad", shards, tiny_model, data={"shards": [str(shards)], "batch_by": ["query_lang"]})
    with pytest.raises(ConfigError, match="batch_by"):
        load_config(bad)


def test_small_model_starts_as_a_lexical_retriever_with_spread_similarities(tmp_path, shards):
    from train.checkpoint import build_model
    from train.evaluate import encode
    from train.model import normalize

    texts = pq.read_table(shards / "shards" / "xquad_r", columns=["positive"]).column("positive").to_pylist()[:60:5]
    sims = {}
    for init in ("pass_through", "random"):
        config = load_config(
            _config(
                tmp_path / init,
                shards,
                None,
                model={"small": {"vocab_size": 800, "hidden": 32, "layers": 2, "heads": 2}, "small_init": init},
            )
        )
        model, tokenizer = build_model(config, Path(config.out))
        reps = normalize(encode(model, tokenizer, texts, None, 2))
        sims[init] = (reps @ reps.T)[~torch.eye(len(texts), dtype=torch.bool)]
        # the last layer's output is each token's normalised vector: mean pooling is a bag of words
        if init == "pass_through":
            layer = model.backbone.encoder.layer[-1]
            assert (
                not layer.output.dense.weight.any() and not model.backbone.embeddings.position_embeddings.weight.any()
            )
    assert sims["random"].min() > 0.9  # every text nearly the same: a flat softmax at temperature 0.05
    assert sims["pass_through"].mean() < sims["random"].mean() - 0.1


def test_small_model_tokenizer_learns_words_and_leaves_no_script_unknown(small_model, shared_data):
    """Trained on English, German and Chinese: frequent words are single tokens (a WordPiece vocabulary
    once spent itself on the alphabet and split every word into characters), a prompt tokenizes the
    same alone as before a query, and no text of any UDHR language (about 360, in dozens of scripts
    the tokenizer never saw) becomes [UNK]."""
    import zipfile

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_model)
    assert [t.lstrip("Ġ") for t in tok.tokenize("What is the name of the city?")] == [
        "what",
        "is",
        "the",
        "name",
        "of",
        "the",
        "city",
        "?",
    ]
    prompt = "Instruct: Given a question, retrieve passages that answer it\nQuery: "
    alone = tok(prompt)["input_ids"][:-1]  # without [SEP]
    assert tok(prompt + "Wer baute die Stadt?")["input_ids"][: len(alone)] == alone
    with zipfile.ZipFile(shared_data / "udhr2.zip") as z:
        texts = {n: z.read(n).decode("utf-8")[:2000] for n in z.namelist() if n.endswith(".txt")}
    assert len(texts) > 300
    unknown = [n for n, ids in zip(texts, tok(list(texts.values()))["input_ids"]) if tok.unk_token_id in ids]
    assert unknown == []


def test_infonce_never_counts_a_copy_of_the_positive_as_a_negative():
    from train.losses import InfoNCE, Pairing

    torch.manual_seed(0)
    q, p = torch.randn(4, 16), torch.randn(4, 16)
    p[2] = p[0]  # rows 0 and 2 share their positive (several questions on one passage)
    keys = torch.tensor([0, 1, 0, 3])
    loss = InfoNCE(0.05)(q, p, torch.zeros(0, 16), Pairing(torch.zeros(0, dtype=torch.long), True, keys, keys))
    sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T / 0.05
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(
                sims[i, [j for j in range(4) if j == i or keys[j] != keys[i]]][None],
                torch.tensor([[j for j in range(4) if j == i or keys[j] != keys[i]].index(i)]),
            )
            for i in range(4)
        ]
    ).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    unmasked = InfoNCE(0.05)(
        q, p, torch.zeros(0, 16), Pairing(torch.zeros(0, dtype=torch.long), True, torch.arange(4), torch.arange(4))
    )
    assert unmasked > loss
    both = InfoNCE(0.05, symmetric=True)(
        q, p, torch.zeros(0, 16), Pairing(torch.zeros(0, dtype=torch.long), True, keys, keys)
    )
    back = InfoNCE(0.05)(p, q, torch.zeros(0, 16), Pairing(torch.zeros(0, dtype=torch.long), True, keys, keys))
    # each positive vs every query, copies masked the same way
    assert torch.allclose(both, (loss + back) / 2, atol=1e-5)


def test_resume_continues_the_same_trajectory_and_export_matches_sentence_transformers(tmp_path, shards, tiny_model):
    straight = _train("fit", _config(tmp_path / "a", shards, tiny_model))
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _train("fit", _config(tmp_path / "b", shards, tiny_model), "--until", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _train("fit", _config(tmp_path / "b", shards, tiny_model))  # same folder: resumes at step 2
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log_a = [json.loads(x) for x in (tmp_path / "a" / "out" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_b] == [1, 2, 3, 4]
    assert [e["loss"] for e in log_a] == pytest.approx([e["loss"] for e in log_b], abs=1e-5)
    # same `out`, other settings: refused
    other = _train("fit", _config(tmp_path / "b", shards, tiny_model, lr=5e-4, steps=6))
    assert other.returncode == 1 and "of other settings (lr, steps)" in " ".join(other.stderr.split()), other.stderr[
        -2000:
    ]

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from train.checkpoint import latest, load
    from train.evaluate import encode
    from train.model import normalize

    ckpt = latest(tmp_path / "a" / "out")
    out = tmp_path / "export"
    exported = _train("export", str(ckpt), str(out), "--rank", "8", "--layers", "1", "--dims", "16")
    assert exported.returncode == 0, exported.stderr[-3000:]
    texts = ["Wer hat das Spiel gewonnen?", "The Broncos defeated the Panthers 24-10.", "¿Dónde está la playa?"]
    model, tokenizer = load(ckpt)
    ours = normalize(encode(model, tokenizer, texts, rank=8, layer=1)[:, :16])
    st = SentenceTransformer(str(out), device="cpu")
    theirs = torch.tensor(st.encode(texts))
    assert theirs.shape == (3, 16) and (ours - theirs).abs().max() < 1e-4
    # trained with include_prompt false (the default): a query is pooled over its own tokens, the instruction excluded
    assert not model.include_prompt
    prompt = "Instruct: Given a question, retrieve passages that answer it\nQuery: "
    ours = normalize(encode(model, tokenizer, texts, rank=8, layer=1, prompt=prompt)[:, :16])
    theirs = torch.tensor(st.encode(texts, prompt=prompt))
    assert (ours - theirs).abs().max() < 1e-4
    whole = normalize(encode(model, tokenizer, [prompt + t for t in texts], rank=8, layer=1)[:, :16])
    assert (whole - theirs).abs().max() > 1e-3  # pooling over the prompt too gives other embeddings
    plain = AutoModel.from_pretrained(out)
    assert plain.config.num_hidden_layers == 1 and plain.get_input_embeddings().weight.shape[1] == 32


def test_two_process_torchrun_matches_one_process(tmp_path, shards, tiny_model):
    runs = {}
    for procs in (1, 2):
        folder = tmp_path / f"p{procs}"
        result = _train("fit", _config(folder, shards, tiny_model, steps=3), torchrun=procs)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[procs] = [json.loads(x) for x in (folder / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["source"] for e in runs[1]] == [e["source"] for e in runs[2]]
    # Same global batch, positives gathered across ranks, gradients averaged: the same curves up to
    # float noise (dropout is off, so nothing random differs between the two).
    for one, two in zip(runs[1], runs[2]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)


def test_mel_ranks_are_drawn_by_their_weights(tmp_path, shards):
    from types import SimpleNamespace

    from train.loop import Grid

    sizes = SimpleNamespace(width=32, num_layers=2, mel=SimpleNamespace(full_rank=32))  # what Grid reads of a model
    for weights, share_of_8 in ((None, 0.2), ([1, 1], 0.5)):  # default: proportional to the rank
        config = load_config(
            _config(tmp_path, shards, None, matryoshka={"dims": [8, 32], "ranks": [8, 32], "rank_weights": weights})
        )
        drawn = [Grid(config, sizes).for_step(step)[0] for step in range(2000)]
        assert drawn.count(8) / len(drawn) == pytest.approx(share_of_8, abs=0.03)


def test_eval_scores_every_grid_point_and_draws_a_heatmap_per_rank(tmp_path, small_model, browser):
    import shutil

    from tests.conftest import open_page
    from train.evaluate import retrieval_scores

    # Exact figures on a hand-made case: the gold passage first, third, and twelfth (outside the top 10).
    passages = torch.eye(12)
    queries = torch.stack(
        [passages[0], 3 * passages[4] + 2 * passages[7] + passages[1], sum((12 - i) * passages[i] for i in range(11))]
    )
    assert retrieval_scores(queries, passages, [0, 1, 11]) == pytest.approx(
        {"ndcg@10": (1 + 0.5 + 0) / 3, "recall@1": 1 / 3, "recall@10": 2 / 3}
    )

    data = tmp_path / "heldout"
    data.mkdir()
    for lang in ("de", "en"):
        shutil.copy(SAMPLES / "xquad_r_heldout" / f"{lang}.jsonl.gz", data)
    done = _train(
        "eval",
        str(small_model),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "eval"),
        "--ranks",
        "16",
        "128",
        "--layers",
        "1",
        "2",
        "--dims",
        "16",
        "128",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = pl.read_csv(tmp_path / "eval" / "eval.csv")
    assert table.height == 2 * 2 * 2 * 2 and set(table["language"]) == {"de", "en"}
    assert table.select(pl.col("ndcg@10", "recall@1", "recall@10").is_between(0, 1).all()).row(0) == (True, True, True)
    mean = {
        (r, l, d): v
        for r, l, d, v in table.group_by("rank", "layers", "dims").agg(pl.col("ndcg@10").mean()).iter_rows()
    }
    # The untrained pass-through model ranks lexically: far above chance (~0.15 for 1 of 30 passages),
    # and worse cut to rank 16 and 16 dims.
    assert mean[(128, 2, 128)] > 0.3 and mean[(16, 2, 16)] < mean[(128, 2, 128)]
    page, errors = open_page(browser, tmp_path / "eval" / "eval.html")
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id, d.data[0].type, d.data[0].z])"
    )
    assert [(name, kind) for name, kind, _ in drawn] == [("fig-rank16", "heatmap"), ("fig-rank128", "heatmap")]
    for name, _, z in drawn:  # rows: layers 1, 2; columns: dims 16, 128
        rank = int(name.removeprefix("fig-rank"))
        assert np.allclose(z, [[mean[(rank, layer, dim)] for dim in (16, 128)] for layer in (1, 2)])
    assert errors == []


def test_invalid_config_names_the_line(tmp_path, shards):
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"out: o\ndata:\n  shards: [{shards}]\n  negatives: {{retreival: 7}}\nbatch_size: 9\ngrad_accum: 2\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.yaml:4: data.negatives: Value error, tasks ['retreival'] are unknown" in str(err.value)
    path.write_text(f"out: o\ndata:\n  shards: [{shards}]\nmatryoshka:\n  ranks: [8, 32]\n  rank_weights: [1]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (
        "bad.yaml:4: matryoshka: Value error, `rank_weights` needs `ranks` set and one positive weight per entry"
        in str(err.value)
    )
    from train.cli import (
        main,  # the eval command's --template follows a config's rule, before any model loads
    )

    assert main(["eval", str(tmp_path), "--data", str(tmp_path), "--template", "Instruct: find it"]) == 2


def test_grad_cache_and_checkpointing_give_the_same_step_as_the_whole_batch(tmp_path, shards, tiny_model):
    from train.loop import Trainer

    steps = {}
    for name, setting in {
        "whole": {},
        "grad_cache": {"grad_cache_chunk": 4},
        "small_pieces": {"data": {"piece_tokens": 64}},
        "checkpointing": {"model": {"gradient_checkpointing": True}},
    }.items():
        folder = tmp_path / name
        base = yaml.safe_load(Path(_config(folder, shards, tiny_model, steps=2)).read_text())
        for key, value in setting.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) else value
        (folder / "train.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
        steps[name] = Trainer(load_config(folder / "train.yaml")).fit()
    for name in ("grad_cache", "small_pieces", "checkpointing"):
        for whole, other in zip(steps["whole"], steps[name]):
            assert other["loss"] == pytest.approx(whole["loss"], rel=1e-5), name
            assert other["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4), name


class HostReads:
    """Counts reads of a tensor's value on the host during a block: on a GPU each one waits for the
    device (`aten._local_scalar_dense` is what `.item()`, `float()`, `bool()` and `int()` run; the
    function mode sees `.tolist()`, `.numpy()` and `.cpu()`, which copy whole tensors back)."""

    def __init__(self):
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts = {"scalar": 0, "copy": 0}
        copies = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}

        class Scalars(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counts["scalar"] += func is torch.ops.aten._local_scalar_dense.default
                return func(*args, **(kwargs or {}))

        class Copies(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                counts["copy"] += func in copies
                return func(*args, **(kwargs or {}))

        self.modes = [Scalars(), Copies()]

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


@pytest.mark.parametrize("setting", [{}, {"grad_cache_chunk": 4, "grad_accum": 2}])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, shards, tiny_model, setting):
    """Only logging steps read values (the loss, its parts, the gradient norm): three steps and a log
    read exactly what one step and a log read, with MEL, MLL, hard negatives and instructions on."""
    from train.loop import Trainer

    config = load_config(_config(tmp_path, shards, tiny_model, steps=8, log_every=100, **setting))
    trainer = Trainer(config)
    trainer.fit(until=1)  # warm up: the first step builds the optimizer's state
    with HostReads() as one:
        (entry,) = trainer.fit(until=2)
    with HostReads() as three:
        trainer.fit(until=5)
    assert one.counts["copy"] == three.counts["copy"] == 0
    assert three.counts["scalar"] == one.counts["scalar"] <= sum(isinstance(v, float) for v in entry.values())
    assert {"padding", "tflops_per_s", "samples_per_s"} <= set(entry)


def test_mixed_precision_casts_each_weight_once_per_step_whatever_the_pieces(tmp_path, shards, tiny_model):
    """Under bf16 autocast a pass's pieces share one context, so each weight is cast to bf16 once per
    pass, here once per step (a kernel launch forward and back per cast: per piece, they made a GPU
    step host-bound)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from train.loop import Trainer

    config = load_config(
        _config(
            tmp_path,
            shards,
            tiny_model,
            steps=3,
            log_every=100,
            precision="bf16",
            data={
                "shards": [str(shards)],
                "negatives": {"classification": 2},
                "max_length": 48,
                "shuffle_buffer": 40,
                "piece_tokens": 64,
            },
        )
    )
    trainer = Trainer(config)
    trainer.fit(until=1)
    # whole weights (MEL's rank slice of V is a view, cast per piece)
    weights = {p.data_ptr(): p.shape for p in trainer.model.parameters()}
    casts = []

    class Casts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if (
                func is torch.ops.aten._to_copy.default
                and (kwargs or {}).get("dtype") == torch.bfloat16
                and weights.get(args[0].data_ptr()) == args[0].shape
            ):
                casts.append(args[0].data_ptr())
            return func(*args, **(kwargs or {}))

    pieces = []
    forward = trainer._forward
    trainer._forward = lambda piece, layers: pieces.append(piece) or forward(piece, layers)
    with Casts():
        (entry,) = trainer.fit(until=2)
    assert len(pieces) > 3  # queries, positives and classification negatives in several pieces each
    assert casts and len(casts) == len(set(casts)) <= len(weights)
    assert np.isfinite(entry["loss"])


def test_pieces_cut_padding_and_embed_as_one_padded_batch(shards, tiny_model):
    """Length-sorted pieces: less padding than padding to the longest, the same embeddings in the
    texts' order, and instructions left out of mean pooling as sentence-transformers counts them."""
    from transformers import AutoModel, AutoTokenizer

    from train.model import Embedder
    from train.pieces import Tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = pq.read_table(shards / "shards" / "xquad_r").column("positive").to_pylist()[::7][:20]
    texts = [t[: 20 + 37 * i] for i, t in enumerate(texts)]  # lengths from a few tokens to the limit
    prompts = ["Instruct: find it\nQuery: " if i % 3 else "" for i in range(len(texts))]
    texts = [p + t for p, t in zip(prompts, texts)]
    side = Tokenize(tokenizer, 64, piece_tokens=160, include_prompt=False)(texts, prompts)
    assert len(side.pieces) > 2 and all(p.input_ids.numel() <= 160 for p in side.pieces)
    whole = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert side.tokens == int(whole["attention_mask"].sum())
    assert side.padded - side.tokens < 0.5 * (whole["input_ids"].numel() - side.tokens)  # padding more than halved

    torch.manual_seed(0)
    model = Embedder(AutoModel.from_pretrained(tiny_model), "mean", None, include_prompt=False).eval()
    with torch.no_grad():
        pieces = torch.cat([model(layers=[2], **p.to(torch.device("cpu")))[2] for p in side.pieces])[side.restore]
        skip = [len(tokenizer(p)["input_ids"]) - 1 if p else 0 for p in prompts]
        pool = whole["attention_mask"].clone()
        for i, n in enumerate(skip):
            pool[i, :n] = 0
        padded = model(whole["input_ids"], whole["attention_mask"], [2], pool)[2]
    assert (pieces - padded).abs().max() < 1e-5


def test_prefetch_hands_over_items_in_order_raises_the_feeds_error_and_stops():
    from train.feed import Prefetch

    def items():
        yield from range(5)
        raise ValueError("bad row in shard x.parquet")

    feed = Prefetch(items(), depth=2)
    assert [next(feed) for _ in range(5)] == list(range(5))
    with pytest.raises(ValueError, match="bad row in shard x.parquet"):
        next(feed)
    endless = Prefetch(iter(int, 1), depth=3)  # never ends by itself
    next(endless)
    endless.close()
    assert not endless.thread.is_alive()
