"""Mixing: per-source caps and per-language temperature sampling, seeded, without gathering rows.

Counts per (source, language) are aggregated first (a small table). Each row then gets a uniform
number from a hash of (seed, id, origin) and is kept when it falls below its group's keep rate, so
the choice is reproducible, independent of blocking, and needs no second pass over the data.
Caps and targets are met in expectation (a binomial spread of about sqrt(n) rows).

- `max_rows_per_source` (ML-Embed caps every source at 80,000 rows): rate cap / n for a larger source.
- `temperature_alpha`: target language shares p_l ~ n_l^alpha (alpha < 1 flattens the mixture).
  Rows are never repeated, so a language can only shrink: rates are min(1, T p_l / n_l) with T the
  total after caps, and the realised shares (in the ledger) approach the targets from above for
  small languages. The plan (counts, targets, rates) is written to `mix_plan.json` in the run folder.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from core.record import DROP
from core.settings import example
from core.tasks import POOL_TASKS
from pipeline.engine.stage import DatasetStage, Stage, StageConfig
from pipeline.ops import exchange
from pipeline.ops.minhash import hash_strings


class MixConfig(StageConfig):
    model_config = example(stage="mix", max_rows_per_source=80000, temperature_alpha=0.5)

    stage: Literal["mix"]
    max_rows_per_source: int | None = Field(None, ge=1, description="Cap per source (rows kept in expectation).")
    temperature_alpha: float | None = Field(
        None, gt=0, le=1, description="Language shares ~ n^alpha; none: keep shares."
    )
    seed: int = 0


def plan_rates(counts: list[dict[str, Any]], config: MixConfig) -> list[dict[str, Any]]:
    """Keep rates per (source, language) from their row counts; each entry gains `cap_rate`,
    `language_rate`, `target_share` (of its language) and `rate`."""
    per_source: dict[str, int] = {}
    for c in counts:
        per_source[c["source"]] = per_source.get(c["source"], 0) + c["rows"]
    for c in counts:
        cap = config.max_rows_per_source
        c["cap_rate"] = min(1.0, cap / per_source[c["source"]]) if cap else 1.0
    capped: dict[str, float] = {}
    for c in counts:
        capped[c["language"]] = capped.get(c["language"], 0.0) + c["rows"] * c["cap_rate"]
    total = sum(capped.values())
    alpha = config.temperature_alpha or 1.0
    weights = {lang: n**alpha for lang, n in capped.items()}
    norm = sum(weights.values())
    for c in counts:
        n = capped[c["language"]]
        target = weights[c["language"]] / norm if norm else 0.0
        c["target_share"] = target
        # Without a temperature every language keeps its share: rate exactly 1, not a float that
        # rounds to 0.9999999 and drops a row or two.
        sampled = config.temperature_alpha is not None and n > 0
        c["language_rate"] = min(1.0, total * target / n) if sampled else 1.0
        c["rate"] = c["cap_rate"] * c["language_rate"]
    return counts


def _uniform(batch: pa.Table, seed: int) -> np.ndarray:
    keys = pc.binary_join_element_wise(pa.scalar(str(seed)), batch.column("id"), batch.column("origin"), "\x1f")
    return (hash_strings(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _sample(batch: pa.Table, rates: dict[tuple[str, str], tuple[float, float]], seed: int) -> pa.Table:
    u = _uniform(batch, seed)
    langs = pc.fill_null(batch.column("query_lang"), "und").to_pylist()
    pool = _pool_rows(batch).to_pylist()  # a mining pool's rows are kept whole
    keys = zip(batch.column("source").to_pylist(), langs, pool)
    cap, lang = np.array([(1.0, 1.0) if p else rates[(s, l)] for s, l, p in keys]).reshape(-1, 2).T
    over_cap = u >= cap
    over_language = ~over_cap & (u >= cap * lang)
    reasons = np.where(over_cap, "mix_source_cap", np.where(over_language, "mix_language_temperature", None))
    return Stage.drop(batch, reasons.tolist())


class Mix(DatasetStage[MixConfig]):
    version = "2"  # a mining pool's rows are kept whole
    config_model = MixConfig
    reads = ("query_lang",)

    def plan(self, blocks: list[Any], rows: int, rounds: exchange.Rounds) -> list[Any]:
        per_block = rounds.submit(_count_task, [(b,) for b in blocks], 1, description="mix: counts")
        counts = (
            (
                pl.concat([pl.from_arrow(exchange.get(out[0])) for out in per_block])  # (source, language) pairs: small
                .group_by("source", "language")
                .agg(pl.col("rows").sum())
                .sort("source", "language")
                .to_dicts()
            )
            if blocks
            else []
        )
        planned = plan_rates(counts, self.config)
        self.context.run_dir.mkdir(parents=True, exist_ok=True)
        (self.context.run_dir / "mix_plan.json").write_text(json.dumps(planned, indent=1), encoding="utf-8")
        rates = {(c["source"], c["language"]): (c["cap_rate"], c["language_rate"]) for c in planned}
        sampled = rounds.submit(
            _sample_task, [(b, rates, self.config.seed) for b in blocks], 1, description="mix: sampling"
        )
        return [out[0] for out in sampled]

    def report(self, files: list[str]) -> Any:
        """The mixture per language before and after sampling, against the planned target shares."""
        plan = json.loads((self.context.run_dir / "mix_plan.json").read_text(encoding="utf-8"))
        targets = pl.DataFrame([{"language": p["language"], "target_share": p["target_share"]} for p in plan]).unique(
            "language"
        )
        counts = (
            pl.scan_parquet(files)
            .filter(~pl.col("task").is_in(POOL_TASKS))
            .group_by(pl.col("query_lang").fill_null("und").alias("language"))
            .agg(pl.len().alias("rows_before"), pl.col(DROP).is_null().sum().alias("rows_after"))
            .collect()
        )
        return (
            counts.with_columns(
                (pl.col("rows_before") / pl.col("rows_before").sum()).alias("share_before"),
                (pl.col("rows_after") / pl.col("rows_after").sum()).alias("share_after"),
            )
            .join(targets, on="language", how="left")
            .select("language", "rows_before", "share_before", "target_share", "rows_after", "share_after")
            .sort("rows_before", descending=True)
        )


def _pool_rows(batch: pa.Table) -> pa.Array:
    return pc.is_in(batch.column("task"), pa.array(POOL_TASKS, pa.string()))


def _count_task(block: pa.Table) -> list[pa.Table]:
    """Records of a block per (source, language); a mining pool's rows are not part of the mixture."""
    frame = pl.from_arrow(block.filter(pc.invert(_pool_rows(block))).select(["source", "query_lang"]))
    counts = frame.group_by("source", pl.col("query_lang").fill_null("und").alias("language")).agg(
        pl.len().cast(pl.Int64).alias("rows")
    )
    return [counts.to_arrow()]  # type: ignore[union-attr]


def _sample_task(block: pa.Table, rates: dict[tuple[str, str], tuple[float, float]], seed: int) -> list[pa.Table]:
    return [_sample(block, rates, seed)]
