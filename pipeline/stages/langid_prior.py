"""Short texts revised with their source's own language distribution as the prior (`langid/prior.py`).

A model trained on language-balanced data spreads short Spanish queries over Asturian and Galician,
and short Hindi ones over Bhojpuri and Awadhi; the source they come from says which is likely. Two
rounds of tasks, no rows on the driver: each block counts the sure labels (`query_lang`,
`positive_lang`: what `langid` kept above its thresholds) per source and field (a bitext source's
queries and positives are in different languages), those of texts of 6 words or more apart (the
prior is counted on them where a source has 100, `langid/prior.py`); then each block's short texts
(up to `max_words`) take the label that maximises the model's probability x the source's prior
among their best candidates, where that label holds at least `share` of the candidates' weighted
mass. A changed text is flagged `language_from_prior` (counted in the ledger under its new
language) and `cross_lingual` is recomputed (the ledger's `cross_lingual` count stays `langid`'s). A
field whose language is declared (trusted or verified) is left as `langid` set it. The priors are
written to `langid_prior.json` in the run folder.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from core.record import DECLARED_LANG, FLAGS
from core.settings import example
from langid.fragments import BUCKET_NAMES, bucket_indices
from langid.prior import CANDIDATES, COUNTED_FROM, CorpusPrior, language_mask, revise
from langid.tagger import DEFAULT_MODEL, LanguageTagger
from pipeline.engine.stage import DatasetStage, StageConfig
from pipeline.ops import exchange
from pipeline.ops.arrow import flag_lists, replace_column
from pipeline.stages.langid import bucket_name, cross_lingual, resolve_model

PRIOR_FLAG = "language_from_prior"
TextField = Literal["query", "positive"]


class LangPriorConfig(StageConfig):
    model_config = example(stage="langid_prior", fields=["query"], max_words="6-15")

    stage: Literal["langid_prior"]
    model: str = Field(
        DEFAULT_MODEL, description="The model whose candidates the prior weighs: the `langid` stage's `model`."
    )
    fields: list[TextField] = Field(["query", "positive"], min_length=1, description="The text fields revised.")
    max_words: str = Field("6-15", description=f"Longest length bucket revised ({', '.join(BUCKET_NAMES)}).")
    candidates: int = Field(CANDIDATES, ge=1, le=50, description="How many of the model's best labels compete.")
    max_odds: float = Field(
        100.0, ge=1.0, description="The most the prior may favour one label over another (1: the model alone)."
    )
    share: float = Field(
        0.5, gt=0.0, le=1.0, description="Least share of the candidates' weighted mass the new label must hold."
    )

    @field_validator("max_words")
    @classmethod
    def _bucket(cls, bucket: str) -> str:
        return bucket_name(bucket)

    @field_validator("model")
    @classmethod
    def _model_exists(cls, model: str, info: ValidationInfo) -> str | None:
        return resolve_model(model, info)


class LangPrior(DatasetStage[LangPriorConfig]):
    config_model = LangPriorConfig
    version = "2"  # 2: counted on 6+-word texts; candidates mapped keeping the more probable
    reads = ("query_lang", "positive_lang")
    writes = ("query_lang", "query_lang_conf", "positive_lang", "positive_lang_conf", "cross_lingual")

    def plan(self, blocks: list[Any], rows: int, rounds: exchange.Rounds) -> list[Any]:
        fields = self.config.fields
        per_block = rounds.submit(_count_task, [(b, fields) for b in blocks], 1, description="langid_prior: counts")
        tables = [pl.from_arrow(exchange.get(out[0])) for out in per_block]  # (source, label) pairs: small
        every: dict[tuple[str, str], dict[str, int]] = {}  # (source, field) -> label -> sure texts
        reliable: dict[tuple[str, str], dict[str, int]] = {}  # the same, of COUNTED_FROM words or more
        if tables:
            grouped = (
                pl.concat(tables)
                .group_by("source", "field", "label")
                .agg(pl.col("n", "reliable").sum())
                .sort("source", "field", "label")
            )
            for source, field, label, n, long in grouped.iter_rows():
                every.setdefault((source, field), {})[label] = int(n)
                if long:
                    reliable.setdefault((source, field), {})[label] = int(long)
        counts: dict[str, dict[str, dict[str, int]]] = {}  # source -> field -> label -> the prior's counts
        for (source, field), labels in every.items():
            counts.setdefault(source, {})[field] = dict(
                CorpusPrior.counted(reliable.get((source, field), {}), labels).counts
            )
        self.context.run_dir.mkdir(parents=True, exist_ok=True)
        (self.context.run_dir / "langid_prior.json").write_text(
            json.dumps(counts, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        # What `langid` took from a declaration (trusted or verified) stays; an ignored one did not count there either.
        ignoring = sorted(name for name, src in self.context.sources.items() if src.language_policy == "ignored")
        declared = {
            f: sorted(n for n, src in self.context.sources.items() if n not in ignoring and src.declared_language(f))
            for f in fields
        }
        revised = rounds.submit(
            _revise_task,
            [(b, counts, declared, ignoring, self.config) for b in blocks],
            1,
            description="langid_prior: revising",
        )
        out = [out[0] for out in revised]
        _tagger.cache_clear()  # in process, the model would otherwise outlive the step
        return out


def _count_task(block: pa.Table, fields: list[str]) -> list[pa.Table]:
    """Sure labels of a block per (source, field, label): all (`n`) and those of texts of
    `COUNTED_FROM` words or more (`reliable`)."""
    frames = []
    for f in fields:
        labels = block.column(f"{f}_lang")
        sure = pa.table({"source": block.column("source"), "label": labels, "text": block.column(f)}).filter(
            language_mask(labels)
        )
        reliable = bucket_indices(sure.column("text").combine_chunks()) >= BUCKET_NAMES.index(COUNTED_FROM)
        frames.append(pl.from_arrow(sure.drop(["text"])).with_columns(field=pl.lit(f), reliable=pl.Series(reliable)))  # type: ignore[union-attr]
    counts = (
        pl.concat(frames)
        .group_by("source", "field", "label")
        .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("reliable").sum().cast(pl.Int64))
    )
    return [counts.to_arrow()]


@lru_cache(maxsize=4)
def _tagger(model: str) -> LanguageTagger:
    """One model per worker process (Ray reuses its workers from task to task)."""
    return LanguageTagger(model, detect_code=False, rules=False)


def _revise_task(
    block: pa.Table,
    counts: dict[str, dict[str, dict[str, int]]],
    declared: dict[str, list[str]],
    ignoring: list[str],
    config: LangPriorConfig,
) -> list[pa.Table]:
    tagger = _tagger(config.model)
    sources = block.column("source").to_pylist()
    # A row's own declaration counts unless its source ignores declarations (as in `langid`).
    row_declared = block.column(DECLARED_LANG).is_valid().to_numpy(zero_copy_only=False) & ~np.isin(sources, ignoring)
    flags: list[tuple[int, str]] = []
    for field in config.fields:
        declaring = set(declared[field])
        priors = {
            source: CorpusPrior(by_field[field], config.max_odds)
            for source, by_field in counts.items()
            if field in by_field
        }
        labels = block.column(f"{field}_lang").to_pylist()
        conf = block.column(f"{field}_lang_conf").to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
        field_priors = [None if s in declaring or row_declared[i] else priors.get(s) for i, s in enumerate(sources)]
        texts = block.column(field).to_pylist()
        changed = revise(
            tagger,
            texts,
            labels,
            np.nan_to_num(conf),
            field_priors,
            BUCKET_NAMES.index(config.max_words),
            config.candidates,
            config.share,
        )
        for i, (label, p) in changed.items():
            labels[i], conf[i] = label, p
            flags.append((i, label))
        lang = pa.array(labels, pa.string())
        block = replace_column(block, f"{field}_lang", lang)
        block = replace_column(
            block,
            f"{field}_lang_conf",
            pa.array(conf, pa.float32(), mask=lang.is_null().to_numpy(zero_copy_only=False)),
        )
    block = replace_column(
        block,
        "cross_lingual",
        cross_lingual(block.column("query_lang").combine_chunks(), block.column("positive_lang").combine_chunks()),
    )
    rows = np.array([i for i, _ in flags], dtype=np.int64)
    reasons, languages = (
        pa.array([PRIOR_FLAG] * len(flags), pa.string()),
        pa.array([label for _, label in flags], pa.string()),
    )
    return [replace_column(block, FLAGS, flag_lists(block.num_rows, rows, reasons, languages))]
