"""Hard-negative mining with BM25 and positive-aware filtering.

For each row with a positive, candidates are retrieved from a pool (by default the positives of the
same source and language) and filtered before any is kept, because a "negative" that answers the
query (a false negative) teaches the model the wrong thing:
- the rank window: candidates ranked above `skip_top` or below `max_rank` are not used;
- the positive itself, other known positives of the same query, and near duplicates of the positive
  (MinHash estimated Jaccard >= `near_dup_threshold`, script-aware shingles as in `near_dedup`);
- TopK-PercPos (Moreira et al. 2024, NV-Retriever): candidates scoring above `max_score_ratio` of
  the positive's score; and an absolute `max_score` ceiling.
Then the best `num_negatives` (per task) are kept, or a seeded sample of the survivors.

Each row's removed candidates are counted in the ledger per filter (`negatives_filtered:<filter>`,
flagged kind), so a run reports how much each filter removed, per source and language.

Tokens for BM25 are `pipeline.minhash.tokens`: words for spaced scripts, characters for Han, kana,
Thai and the other unspaced scripts (bm25s's own tokenizer splits on spaces only).
"""

from __future__ import annotations

import random
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.minhash import hash_strings, signatures, tokens
from pipeline.record import FLAGS, WORK_SCHEMA
from pipeline.stage import ShuffleStage, StageConfig, register

FILTERS = ("rank_window", "positive", "known_positive", "near_duplicate", "above_positive_ratio", "above_max_score")


class MineNegativesConfig(StageConfig):
    stage: Literal["mine_negatives"]
    retriever: Literal["bm25"] = "bm25"
    tasks: list[Literal["retrieval", "bitext", "sts", "pair_classification", "classification", "clustering"]] = Field(
        default_factory=lambda: ["retrieval"], description="Tasks whose rows get mined negatives.")
    per_language: bool = Field(True, description="Pool and queries grouped by source and query language (else by source).")
    skip_top: int = Field(5, ge=0, description="Candidates ranked above this are skipped (0-based rank window start).")
    max_rank: int = Field(100, ge=1, description="Candidates ranked below this are not considered.")
    max_score_ratio: float | None = Field(0.95, gt=0, description="Drop candidates scoring above this fraction of the positive's score.")
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    near_dup_threshold: float = Field(0.5, gt=0, le=1, description="Drop candidates this similar (estimated Jaccard) to the positive.")
    num_negatives: int | dict[str, int] = Field(24, description="Negatives kept per row: one number, or per task.")
    sampling: Literal["top", "random"] = Field("top", description="Keep the best-scoring survivors, or a seeded sample of them.")
    keep_existing: bool = Field(True, description="Rows that already carry negatives are left as they are.")
    seed: int = 0

    def count(self, task: str) -> int:
        return self.num_negatives if isinstance(self.num_negatives, int) else self.num_negatives.get(task, 0)


def _top(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the `depth` best scores, best first, ties by index (as a full stable sort gives),
    without sorting the whole pool."""
    kth = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:depth]


@register
class MineNegatives(ShuffleStage):
    name = "mine_negatives"
    config_model = MineNegativesConfig
    config: MineNegativesConfig

    def _group(self, batch: pa.Table) -> pa.Array:
        lang = batch.column("query_lang") if self.config.per_language else pa.nulls(batch.num_rows, pa.string())
        return pc.binary_join_element_wise(batch.column("source"), pc.fill_null(lang, "und"), "\x1f")

    def key(self, batch: pa.Table) -> pa.Array:
        return pa.array(hash_strings(self._group(batch)), pa.uint64())

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(self._group(batch).to_pylist()):
            groups.setdefault(g, []).append(i)
        for members in groups.values():
            self._mine(rows, members)
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)

    def _mine(self, rows: list[dict], members: list[int]) -> None:
        import bm25s

        config = self.config
        pool = sorted({rows[i]["positive"] for i in members if rows[i]["positive"]})
        targets = [i for i in members if rows[i]["positive"] and rows[i]["task"] in config.tasks and config.count(rows[i]["task"]) > 0
                   and not (config.keep_existing and rows[i]["negatives"])]
        if len(pool) < 2 or not targets:
            return
        index = {text: k for k, text in enumerate(pool)}
        retriever = bm25s.BM25()
        retriever.index(tokens(pa.array(pool), "auto")[0].to_pylist(), show_progress=False)
        pool_sig = signatures(pa.array(pool))
        positives_of: dict[str, set[int]] = {}
        for i in members:
            if rows[i]["positive"]:
                positives_of.setdefault(rows[i]["query"], set()).add(index[rows[i]["positive"]])
        query_tokens = tokens(pa.array([rows[i]["query"] for i in targets]), "auto")[0].to_pylist()
        depth = min(config.max_rank, len(pool))
        rng = random.Random(config.seed)
        for i, q in zip(targets, query_tokens):
            if not q:
                continue
            scores = retriever.get_scores(q)
            ranked = _top(scores, depth)
            pos = index[rows[i]["positive"]]
            removed = dict.fromkeys(FILTERS, 0)
            survivors = []
            for rank, cand in enumerate(ranked.tolist()):
                reason = self._filter(rank, cand, pos, positives_of[rows[i]["query"]], scores, pool_sig)
                if reason:
                    removed[reason] += 1
                else:
                    survivors.append(cand)
            n = config.count(rows[i]["task"])
            chosen = survivors[:n] if config.sampling == "top" else sorted(rng.sample(survivors, min(n, len(survivors))), key=lambda c: -scores[c])
            rows[i]["negatives"] = [pool[c] for c in chosen]
            rows[i]["negative_scores"] = [float(scores[c]) for c in chosen]
            rows[i]["positive_score"] = float(scores[pos])
            lang = rows[i]["query_lang"] or "und"
            rows[i][FLAGS] = [{"reason": f"negatives_filtered:{k}", "language": lang, "count": v} for k, v in removed.items() if v] or None

    def _filter(self, rank: int, cand: int, pos: int, known: set[int], scores: np.ndarray, pool_sig: np.ndarray) -> str | None:
        """The first filter that removes candidate `cand` at `rank`, or None."""
        config = self.config
        if cand == pos:
            return "positive"
        if cand in known:
            return "known_positive"
        if rank < config.skip_top:
            return "rank_window"
        if (pool_sig[cand] == pool_sig[pos]).mean() >= config.near_dup_threshold:
            return "near_duplicate"
        if config.max_score_ratio is not None and scores[cand] > config.max_score_ratio * scores[pos]:
            return "above_positive_ratio"
        if config.max_score is not None and scores[cand] > config.max_score:
            return "above_max_score"
        return None

