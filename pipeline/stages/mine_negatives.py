"""Hard-negative mining (BM25 or dense retrieval) with positive-aware filtering, resumable by shard.

For each row with a positive, candidates are retrieved from a pool and filtered before any is kept,
because a "negative" that answers the query (a false negative) teaches the model the wrong thing.
The pool (`pool`) is the positives of the same source and language, the positives of every source
of the language, or a named corpus: a source of task `corpus` (passages with no queries, such as a
Wikipedia dump, the text in `query`), whose rows are used as the pool and then leave the records
(dropped as `mining_pool_passage`). Filters:
- the rank window: candidates ranked above `skip_top` or below `max_rank` are not used;
- the positive itself, other known positives of the same query, and near duplicates of the positive
  (MinHash estimated Jaccard >= `near_dup_threshold`, script-aware shingles as in `near_dedup`);
- the positive's `positive_neighbours` nearest pool passages (the positive as the query; BM25 by
  default whatever the retriever, `neighbours_by`): passages that close to the positive tend to share
  its content, answer included;
- TopK-PercPos (Moreira et al. 2024, NV-Retriever): candidates scoring above `max_score_ratio` of
  the positive's score; and an absolute `max_score` ceiling. A positive outside the pool (a named
  corpus) is still scored against its query, so these hold whatever the pool.
Then the best `num_negatives` (per task) are kept, or a seeded sample of the survivors.

How it runs: rows are grouped by pool (source and language, or language alone; a shuffle), and each
group's queries are mined in shards of `shard_queries` against its pool (`pipeline/ops/retrieval.py`:
BM25, exact dense search, or faiss IVF for dense pools of `ann_min_pool` passages or more). With
`retriever: dense`, the group's distinct passages and queries are embedded first, each distinct text
once, in batches sorted by token length, on a GPU where the worker has one (`pipeline/ops/embed.py`).
Finished embedding chunks and mining shards are written to the step's work folder, so a run killed
during mining re-runs only the unfinished work; rows taken from a finished shard are counted in
the ledger as flagged `mining_resumed`. A progress bar counts queries per second.

Each row's removed candidates are counted in the ledger per filter (`negatives_filtered:<filter>`,
flagged kind), so a run reports how much each filter removed, per source and language.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, ValidationInfo, field_validator, model_validator

from core.record import DETAIL, DROP, FLAGS, WORK_SCHEMA
from core.settings import example, from_manifest
from core.tasks import TaskName
from pipeline.engine.stage import Resources, ShuffleStage, StageConfig
from pipeline.ops.embed import Embedder, device, is_model_dir, load_encoder
from pipeline.ops.files import write_atomic
from pipeline.ops.minhash import hash_strings, signatures
from pipeline.ops.passage_store import store_negatives
from pipeline.ops.retrieval import AnnSearch, Bm25Search, DenseSearch, Search

FILTERS = (
    "rank_window",
    "positive",
    "known_positive",
    "near_duplicate",
    "positive_neighbour",
    "above_positive_ratio",
    "above_max_score",
)
POOL_PASSAGE = "mining_pool_passage"  # a named corpus's rows leave the records once they are the pool
SHARD_SCHEMA = pa.schema(
    [
        ("origin", pa.string()),
        ("negatives", pa.list_(pa.string())),
        ("negative_scores", pa.list_(pa.float32())),
        ("positive_score", pa.float32()),
        ("removed", pa.list_(pa.int32())),
    ]
)


class MineNegativesConfig(StageConfig):
    model_config = example(stage="mine_negatives", tasks=["retrieval"], num_negatives={"retrieval": 24}, pool="source")

    stage: Literal["mine_negatives"]
    retriever: Literal["bm25", "dense"] = Field(
        "bm25", description="bm25 (offline, no model) or dense (needs `model`)."
    )
    model: str | None = Field(
        None,
        description="Local model folder for dense retrieval "
        "(sentence-transformers or transformers format, or `python -m train export` output).",
    )
    query_prompt: str = Field("", description="Prepended to queries before embedding (e.g. 'query: ' for E5 models).")
    passage_prompt: str = Field("", description="Prepended to pool passages before embedding.")
    embed_batch_size: int | None = Field(
        None,
        ge=1,
        description="Texts per embedding batch (default: 64 on a CPU, 256 on a GPU, where 256 embedded 1.8-2x "
        "more texts/s than 64; bench/embedding.py).",
    )
    max_seq_length: int | None = Field(
        None, ge=8, description="Truncate texts to this many tokens when embedding (default: the model's)."
    )
    pool: Literal["source", "language", "corpus"] = Field(
        "source",
        description="Candidates come from the positives of the query's source (and language), of every source "
        "of its language, or from the `corpus` source (of the query's language, with `per_language`).",
    )
    corpus: str | None = Field(None, description="With `pool: corpus`: the source (task `corpus`) that is the pool.")
    tasks: list[TaskName] = Field(
        default_factory=lambda: ["retrieval"], description="Tasks whose rows get mined negatives."
    )
    per_language: bool = Field(
        True, description="Pool and queries grouped by source and query language (else by source)."
    )
    skip_top: int = Field(5, ge=0, description="Candidates ranked above this are skipped (0-based rank window start).")
    max_rank: int = Field(100, ge=1, description="Candidates ranked below this are not considered.")
    max_score_ratio: float | None = Field(
        0.95, gt=0, description="Drop candidates scoring above this fraction of the positive's score."
    )
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    near_dup_threshold: float = Field(
        0.5, gt=0, le=1, description="Drop candidates this similar (estimated Jaccard) to the positive."
    )
    positive_neighbours: int = Field(
        8, ge=0, description="Drop candidates among the positive's this many nearest pool passages (0: off)."
    )
    neighbours_by: Literal["lexical", "retriever"] = Field(
        "lexical",
        description="Find the positive's neighbours with BM25 (lexical) or with the mining retriever. Lexical "
        "by default: passages sharing the positive's rarest words share its topic whatever the model's quality "
        "(XQuAD-R, dense with the stage-1 sample model, hardest false negatives: Arabic 1.20% -> 0.77%, Hindi 1.38% "
        "-> 1.30%).",
    )
    num_negatives: int | dict[str, int] = Field(24, description="Negatives kept per row: one number, or per task.")
    sampling: Literal["top", "random"] = Field(
        "top", description="Keep the best-scoring survivors, or a seeded sample of them."
    )
    keep_existing: bool = Field(True, description="Rows that already carry negatives are left as they are.")
    shard_queries: int = Field(2048, ge=1, description="Queries per mining shard: the unit of progress and of resume.")
    pool_shard_rows: int = Field(100_000, ge=1, description="Dense search scores the pool this many vectors at a time.")
    ann_min_pool: int = Field(
        200_000, ge=1, description="Dense pools of at least this many passages are searched with an approximate index."
    )
    ann_nprobe: int = Field(64, ge=1, description="Approximate index: clusters scanned per query (recall vs time).")
    seed: int = 0

    @field_validator("model")
    @classmethod
    def _model_dir(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None:
            return None
        local = from_manifest(path, info)
        if not is_model_dir(local):
            raise ValueError(f"{path!r} is not a model folder (no config.json or modules.json in {local.absolute()})")
        return str(local.absolute())

    @model_validator(mode="after")
    def _dense_needs_model(self) -> MineNegativesConfig:
        if self.retriever == "dense" and not self.model:
            raise ValueError("retriever: dense needs `model` (a local model folder)")
        if (self.pool == "corpus") != (self.corpus is not None):
            raise ValueError("`pool: corpus` and `corpus: SOURCE` go together")
        if self.pool == "language" and not self.per_language:
            raise ValueError("`pool: language` needs `per_language: true`")
        return self

    def unknown_sources(self, names: set[str]) -> list[str]:
        return [self.corpus] if self.corpus and self.corpus not in names else []

    def corpora(self) -> list[str]:
        return [self.corpus] if self.corpus else []

    def count(self, task: str) -> int:
        return self.num_negatives if isinstance(self.num_negatives, int) else self.num_negatives.get(task, 0)

    @property
    def mined_tasks(self) -> list[str]:
        """The tasks that get negatives (named in `tasks`, with a count above 0)."""
        return [t for t in self.tasks if self.count(t) > 0]

    def wants(self, row: dict[str, Any]) -> bool:
        """Whether this row gets negatives mined."""
        return (
            bool(row["positive"])
            and row["task"] in self.mined_tasks
            and not (self.keep_existing and (row["negatives"] or row["negative_ids"]))
        )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class MineNegatives(ShuffleStage[MineNegativesConfig]):
    version = "2"  # neighbours by BM25 by default; the mined negatives' language
    config_model = MineNegativesConfig
    writes = ("negatives", "negative_ids", "negative_scores", "positive_score", "negatives_lang", "negatives_lang_conf")
    resources = Resources(cpus=1, gpus=1)  # dense mining embeds in its tasks, on a GPU where the cluster has one

    @classmethod
    def columns_read(cls, config: MineNegativesConfig) -> tuple[str, ...]:
        """The query's language (the pool's when pools are per language) and the positive's: they label
        the mined negatives' language."""
        return ("query_lang", "positive_lang")

    def report(self, files: list[str]) -> Any:
        """Per source and language: queries mined, negatives per query, score distributions of the
        positives and the hardest kept negatives, the margin between them, candidates each filter removed."""
        import polars as pl

        flags = pl.col(FLAGS).explode()
        # negatives leave the step as ids in a run (see store_negatives), as texts outside one
        count = pl.coalesce(pl.col("negative_ids"), pl.col("negatives")).list.len()
        score = {"positive": pl.col("positive_score"), "hardest_negative": pl.col("negative_scores").list.first()}
        table = (
            pl.scan_parquet(files)
            .filter(pl.col(DROP).is_null(), pl.col("task").is_in(self.config.mined_tasks))
            .group_by("source", pl.col("query_lang").fill_null("und").alias("language"))
            .agg(
                pl.len().alias("queries"),
                (count == 0).sum().alias("queries_without_negatives"),
                count.mean().alias("negatives_per_query"),
                *[
                    e.quantile(q).alias(f"{name}_score_p{int(q * 100)}")
                    for name, e in score.items()
                    for q in (0.5, 0.1, 0.9)
                ],
                (score["positive"] - score["hardest_negative"]).median().alias("margin_p50"),
                *[
                    flags.struct.field("count")
                    .filter(flags.struct.field("reason") == f"negatives_filtered:{f}")
                    .sum()
                    .alias(f"removed_{f}")
                    for f in FILTERS
                ],
            )
            .sort("source", "language")
            .collect()
        )
        first = [
            "source",
            "language",
            "queries",
            "queries_without_negatives",
            "negatives_per_query",
            "positive_score_p50",
            "hardest_negative_score_p50",
            "margin_p50",
        ]  # what the terminal summary shows
        return table.select(first + [c for c in table.columns if c not in first])

    def _pool_key(self, batch: pa.Table) -> pa.Array:
        """The pool a row belongs to: its source and language, or (wider pools) its language alone."""
        config = self.config
        lang = batch.column("query_lang") if config.per_language else pa.nulls(batch.num_rows, pa.string())
        lang = pc.fill_null(lang, "und")
        if config.pool == "source":
            return pc.binary_join_element_wise(batch.column("source"), lang, "\x1f")
        return lang

    def key(self, batch: pa.Table) -> pa.Array:
        return pa.array(hash_strings(self._pool_key(batch)), pa.uint64())

    @cached_property
    def embedder(self) -> Embedder:
        """Dense mining's texts to vectors; the model loads on first use, the cache lives in the
        step's work folder (so a re-run after a crash embeds nothing twice)."""
        config, cache = self.config, self.context.work_dir / "embeddings" if self.context.work_dir else None
        where = device()
        batch = config.embed_batch_size or (256 if where == "cuda" else 64)
        return Embedder(lambda: load_encoder(config.model, where, config.max_seq_length), batch, cache)  # type: ignore[arg-type]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(WORK_SCHEMA.names).to_pylist()
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(self._pool_key(batch).to_pylist()):
            groups.setdefault(g, []).append(i)
        with _progress(sum(self.config.wants(r) for r in rows)) as bar:
            for group, members in sorted(groups.items()):
                self._mine(group, rows, members, bar)
        # Every row's negatives leave the step as ids, their texts once in the run's passage store.
        return store_negatives(pa.Table.from_pylist(rows, schema=WORK_SCHEMA), self.context.passages)

    def _pool(self, rows: list[dict], members: list[int], targets: list[int]) -> tuple[list[str], int, dict[str, str]]:
        """The pool's texts, how many of them may be candidates, and their languages: the members'
        distinct positives, or the corpus's distinct passages followed by the targets' positives
        outside it (scored only). The corpus rows leave the records here, counted."""
        config = self.config
        language: dict[str, str] = {}  # a passage's language as its first row (by origin) tagged it
        if config.pool != "corpus":
            for i in members:
                if rows[i]["positive"]:
                    language.setdefault(rows[i]["positive"], rows[i]["positive_lang"] or rows[i]["query_lang"])
            pool = sorted(language)
            return pool, len(pool), language
        for i in members:
            if rows[i]["source"] == config.corpus:
                language.setdefault(rows[i]["query"], rows[i]["query_lang"])
                rows[i][DROP], rows[i][DETAIL] = POOL_PASSAGE, f"a passage of the pool of {config.corpus!r}"
        outside = sorted({rows[i]["positive"] for i in targets} - language.keys())
        return sorted(language) + outside, len(language), language

    def _mine(self, group: str, rows: list[dict], members: list[int], bar: Any) -> None:
        config = self.config
        members = sorted(members, key=lambda i: rows[i]["origin"])  # rows arrive in any order after the shuffle
        targets = [i for i in members if config.wants(rows[i])]
        pool, candidates, language = self._pool(rows, members, targets)
        if candidates < 2 or not targets:  # e.g. the only query of its language: nothing to mine from, kept and counted
            reason = "mining_skipped:empty_pool" if not candidates else "mining_skipped:pool_too_small"
            for i in targets:
                rows[i][FLAGS] = [{"reason": reason, "language": rows[i]["query_lang"] or "und", "count": 1}]
            bar.update(len(targets))
            return
        index = {text: k for k, text in enumerate(pool)}
        positives = np.array([index[rows[i]["positive"]] for i in targets])
        known: dict[str, set[int]] = {}
        for i in members:
            if rows[i]["positive"] in index:
                known.setdefault(rows[i]["query"], set()).add(index[rows[i]["positive"]])
        state: dict[str, Any] = {}  # built on the first shard that is not already in the work folder

        def search() -> tuple[Search, np.ndarray, Search]:
            if not state:
                queries = [rows[i]["query"] for i in targets]
                if config.retriever == "dense":
                    passages = self.embedder(pool, config.passage_prompt)
                    vectors = self.embedder(queries, config.query_prompt)
                    state["search"] = (
                        AnnSearch(passages, vectors, candidates, config.ann_nprobe, config.seed)
                        if candidates >= config.ann_min_pool
                        else DenseSearch(passages, vectors, config.pool_shard_rows, candidates)
                    )
                else:
                    state["search"] = Bm25Search(pool, queries, candidates)
                state["signatures"] = signatures(pa.array(pool))
                lexical = (
                    config.neighbours_by == "lexical" and config.retriever == "dense" and config.positive_neighbours
                )
                state["neighbours"] = Bm25Search(pool, [], candidates) if lexical else state["search"]
            return state["search"], state["signatures"], state["neighbours"]

        for start in range(0, len(targets), config.shard_queries):
            chunk = list(range(start, min(start + config.shard_queries, len(targets))))
            name = _digest(group, *(rows[targets[k]]["origin"] for k in chunk))
            path = self.context.work_dir / "mined" / f"{name}.parquet" if self.context.work_dir else None
            resumed = bool(path and path.exists())
            if resumed:
                mined = pq.read_table(path)
            else:
                mined = self._mine_shard(chunk, name, targets, rows, positives, known, pool, candidates, *search())
                if path:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(path, lambda tmp, mined=mined: pq.write_table(mined, tmp))
            for k, m in zip(chunk, mined.to_pylist()):
                row = rows[targets[k]]
                lang = row["query_lang"] or "und"
                flags = [{"reason": "mining_resumed", "language": lang, "count": 1}] if resumed else []
                if m["negatives"] is not None:
                    row["negatives"], row["negative_scores"], row["positive_score"] = (
                        m["negatives"],
                        m["negative_scores"],
                        m["positive_score"],
                    )
                    # as `langid` labels a row's negatives: their most common language
                    labels = Counter(language[t] for t in m["negatives"] if language.get(t))
                    row["negatives_lang"] = labels.most_common(1)[0][0] if labels else None
                    row["negatives_lang_conf"] = None
                    flags += [
                        {"reason": f"negatives_filtered:{f}", "language": lang, "count": n}
                        for f, n in zip(FILTERS, m["removed"])
                        if n
                    ]
                row[FLAGS] = flags or None
            bar.update(len(chunk))

    def _mine_shard(
        self,
        chunk: list[int],
        name: str,
        targets: list[int],
        rows: list[dict],
        positives: np.ndarray,
        known: dict[str, set[int]],
        pool: list[str],
        candidates: int,
        search: Search,
        pool_sig: np.ndarray,
        near: Search,
    ) -> pa.Table:
        config = self.config
        ranked, scored, pos_scores = search(chunk, positives[chunk], min(config.max_rank, candidates))
        distinct = np.unique(positives[chunk])
        neighbours = (
            dict(zip(distinct.tolist(), near.neighbours(distinct, config.positive_neighbours)))
            if config.positive_neighbours
            else {}
        )
        rng = random.Random(f"{config.seed}:{name}")  # per shard: the same sample whichever shards ran before
        out = []
        for k, cands, scores, pos_score in zip(chunk, ranked, scored, pos_scores):
            row = rows[targets[k]]
            if not len(cands):
                out.append(
                    {
                        "origin": row["origin"],
                        "negatives": None,
                        "negative_scores": None,
                        "positive_score": None,
                        "removed": None,
                    }
                )
                continue
            pos = int(positives[k])
            reasons = self._filter(
                cands, scores, pos, pos_score, known[row["query"]], pool_sig, neighbours.get(pos, ())
            )
            keep = reasons < 0
            survivors = list(zip(cands[keep].tolist(), scores[keep].tolist()))
            removed = np.bincount(reasons[~keep], minlength=len(FILTERS))
            n = config.count(row["task"])
            chosen = (
                survivors[:n]
                if config.sampling == "top"
                else sorted(rng.sample(survivors, min(n, len(survivors))), key=lambda c: -c[1])
            )
            out.append(
                {
                    "origin": row["origin"],
                    "negatives": [pool[c] for c, _ in chosen],
                    "negative_scores": [s for _, s in chosen],
                    "positive_score": float(pos_score),
                    "removed": removed.tolist(),
                }
            )
        return pa.Table.from_pylist(out, schema=SHARD_SCHEMA)

    def _filter(
        self,
        cands: np.ndarray,
        scores: np.ndarray,
        pos: int,
        pos_score: float,
        known: set[int],
        pool_sig: np.ndarray,
        neighbours: Any,
    ) -> np.ndarray:
        """Per candidate (in rank order), the number in FILTERS of the first filter that removes it, or -1."""
        config = self.config
        never = np.zeros(len(cands), bool)
        removed_by = np.stack(
            [
                np.arange(len(cands)) < config.skip_top,  # rank_window
                cands == pos,  # positive
                np.isin(cands, list(known)),  # known_positive
                (pool_sig[cands] == pool_sig[pos]).mean(axis=1) >= config.near_dup_threshold,  # near_duplicate
                np.isin(cands, np.asarray(neighbours, np.int64)),  # positive_neighbour
                scores > config.max_score_ratio * pos_score
                if config.max_score_ratio is not None
                else never,  # above_positive_ratio
                scores > config.max_score if config.max_score is not None else never,  # above_max_score
            ]
        )
        # The positive and known positives are named as such even inside the skipped window.
        removed_by[0] &= ~(removed_by[1] | removed_by[2])
        return np.where(removed_by.any(axis=0), removed_by.argmax(axis=0), -1)


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A queries/s bar drawn by the driver for work inside a Ray task (Ray's tqdm_ray); a disabled
    tqdm when the run is quiet or outside Ray."""
    import ray
    import ray.data

    if total and ray.is_initialized() and ray.data.DataContext.get_current().enable_progress_bars:
        from ray.experimental import tqdm_ray

        bar = tqdm_ray.tqdm(total=total, desc="mining negatives", unit="query")
    else:
        from tqdm import tqdm

        bar = tqdm(total=total, disable=True)
    try:
        yield bar
    finally:
        bar.close()
