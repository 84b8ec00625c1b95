"""Training pairs from non-retrieval tasks, built within each source (docs/stages.md, `build_pairs`).

- classification: positive = the label's description when the manifest gives one, else another
  text of the same label; negatives = other labels' descriptions (or, without descriptions, texts
  of other labels), `negatives.classification` of them.
- clustering: positive = another text of the same cluster; negatives = texts of other clusters.
- sts: pairs scoring at least `sts_min_score` stay as (query, positive); the others are dropped
  (`sts_low_score`).
- pair_classification (NLI-style): per premise (query), each entailment hypothesis is a positive and
  the contradiction hypotheses are their negatives; the contradiction rows are then dropped
  (`merged_into_pair`, naming the row they went to), and premises without an entailment are
  dropped (`no_entailment`); other labels (neutral) are dropped (`neutral_pair`).
- retrieval and bitext rows pass untouched.
A classification or clustering text whose label has no other text gets no positive and is dropped
(`no_positive`). Choices are seeded per row (by id), so runs are reproducible.

Rows are grouped by source (a shuffle on the source name), so one source's rows must fit one
worker: cap sources first (ML-Embed caps each at 80,000 rows).
"""

from __future__ import annotations

import random
from typing import Literal

import pyarrow as pa
from pydantic import Field

from core.record import DETAIL, DROP, WORK_SCHEMA
from core.settings import example
from pipeline.engine.stage import ShuffleStage, StageConfig
from pipeline.ops.minhash import hash_strings
from pipeline.ops.passage_store import store_negatives


class BuildPairsConfig(StageConfig):
    model_config = example(
        stage="build_pairs",
        negatives={"classification": 1, "clustering": 9},
        label_descriptions={"sib200_topics": {"travel": "The text is about travel."}},
    )

    stage: Literal["build_pairs"]
    negatives: dict[Literal["classification", "clustering"], int] = Field(
        default_factory=lambda: {"classification": 1, "clustering": 7},
        description="Other-label texts kept as negatives, per task.",
    )
    label_descriptions: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per source, label -> description used as the positive (classification)."
    )
    sts_min_score: float = Field(4.0, description="STS pairs scoring at least this are positives (STSb scale 0-5).")
    entailment_labels: list[str] = Field(
        default_factory=lambda: ["entailment", "0"], description="pair_classification labels that mean 'positive'."
    )
    contradiction_labels: list[str] = Field(
        default_factory=lambda: ["contradiction", "2"], description="Labels that mean 'negative'."
    )
    seed: int = 0

    def unknown_sources(self, names: set[str]) -> list[str]:
        return [n for n in self.label_descriptions if n not in names]


class BuildPairs(ShuffleStage[BuildPairsConfig]):
    config_model = BuildPairsConfig
    writes = ("positive", "negatives", "negative_ids")

    def key(self, batch: pa.Table) -> pa.Array:
        return pa.array(hash_strings(batch.column("source")), pa.uint64())

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        by_source_task: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            by_source_task.setdefault((r["source"], r["task"]), []).append(r)
        for (source, task), group in sorted(by_source_task.items()):
            if task in ("classification", "clustering"):
                self._labelled(source, task, group)
            elif task == "sts":
                for r in group:
                    if r["score"] is None or r["score"] < self.config.sts_min_score:
                        r[DROP], r[DETAIL] = "sts_low_score", f"score {r['score']} < {self.config.sts_min_score}"
            elif task == "pair_classification":
                self._nli(group)
        # Rows are dicts here (the grouping logic is per row): a dropped row's reason is set on its dict
        # and taken over as it stands. The negatives made here are stored by reference (ids in the rows).
        return store_negatives(pa.Table.from_pylist(rows, schema=WORK_SCHEMA), self.context.passages)

    def _rng(self, row: dict) -> random.Random:
        return random.Random(f"{self.config.seed}:{row['id']}:{row['origin']}")

    def _labelled(self, source: str, task: str, group: list[dict]) -> None:
        by_label: dict[str, list[dict]] = {}
        for r in sorted(group, key=lambda r: (r["id"], r["origin"])):
            by_label.setdefault(r["label"] or "", []).append(r)
        labels = sorted(by_label)
        descriptions = self.config.label_descriptions.get(source, {}) if task == "classification" else {}
        count = self.config.negatives[task]  # type: ignore[index]
        for label, members in by_label.items():
            others = [lab for lab in labels if lab != label]
            for r in members:
                rng = self._rng(r)
                if label in descriptions:
                    r["positive"] = descriptions[label]
                elif len(members) > 1:
                    r["positive"] = rng.choice([m for m in members if m is not r])["query"]
                else:
                    r[DROP], r[DETAIL] = "no_positive", f"label {label!r} has no other text"
                    continue
                # a description's negatives are other descriptions: the model learns to pick the label, not the
                # text's language
                picks = (
                    [
                        descriptions[lab]
                        if label in descriptions and lab in descriptions
                        else rng.choice(by_label[lab])["query"]
                        for lab in rng.sample(others, min(count, len(others)))
                    ]
                    if others
                    else []
                )
                r["negatives"] = picks or None

    def _nli(self, group: list[dict]) -> None:
        config = self.config
        by_premise: dict[str, list[dict]] = {}
        for r in sorted(group, key=lambda r: (r["id"], r["origin"])):
            by_premise.setdefault(r["query"], []).append(r)
        for members in by_premise.values():
            entail = [r for r in members if r["label"] in config.entailment_labels]
            contra = [r for r in members if r["label"] in config.contradiction_labels]
            for r in members:
                if r not in entail and r not in contra:
                    r[DROP], r[DETAIL] = "neutral_pair", f"label {r['label']!r}"
            if not entail:
                for r in contra:
                    r[DROP], r[DETAIL] = "no_entailment", "no entailment hypothesis for this premise"
                continue
            for r in entail:
                r["negatives"] = [c["positive"] for c in contra] or None
            for r in contra:
                r[DROP], r[DETAIL] = "merged_into_pair", f"negative of {entail[0]['id']}"
