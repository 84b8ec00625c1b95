"""Mixing: per-source caps and language temperature, planned from counts and applied by seeded
hashing on a real Ray dataset; the realised mixture follows the plan."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa

from core.record import DROP, WORK_SCHEMA
from pipeline.engine.stage import RunContext
from pipeline.ops import exchange
from pipeline.ops.tasks import InProcess
from pipeline.stages.mix import Mix, MixConfig, plan_rates


def test_rates_cap_sources_and_flatten_languages():
    counts = [
        {"source": "big", "language": "eng_Latn", "rows": 90_000},
        {"source": "big", "language": "fra_Latn", "rows": 10_000},
        {"source": "small", "language": "swh_Latn", "rows": 1_000},
    ]
    capped = plan_rates([dict(c) for c in counts], MixConfig(stage="mix", max_rows_per_source=50_000))
    assert [round(c["cap_rate"], 3) for c in capped] == [0.5, 0.5, 1.0] and all(
        c["language_rate"] == 1.0 for c in capped
    )
    flat = plan_rates([dict(c) for c in counts], MixConfig(stage="mix", temperature_alpha=0.3))
    shares = {c["language"]: c["target_share"] for c in flat}
    assert shares["swh_Latn"] > 1_000 / 101_000 and shares["eng_Latn"] < 90_000 / 101_000
    assert flat[0]["rate"] < 1.0 and flat[2]["rate"] == 1.0  # only what is over its target shrinks


def test_without_temperature_and_under_the_cap_every_rate_is_exactly_one():
    # Counts whose shares do not round-trip in floating point (total * n / total / n != 1).
    counts = [
        {"source": f"s{i % 2}", "language": f"l{i}", "rows": n} for i, n in enumerate([3076, 15987, 929, 12774, 14181])
    ]
    total = float(sum(c["rows"] for c in counts))
    assert total * (3076 / total) / 3076 < 1.0
    planned = plan_rates(counts, MixConfig(stage="mix", max_rows_per_source=80_000))
    assert all(c["rate"] == 1.0 for c in planned)


def test_sampling_follows_the_plan_and_is_seeded(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {
            "id": f"{i:08x}",
            "source": "big" if i % 4 else "small",
            "task": "retrieval",
            "query": f"text {i}",
            "licence": "x",
            "origin": f"f:{i}",
            "query_lang": ["eng_Latn", "eng_Latn", "eng_Latn", "fra_Latn", "swh_Latn"][int(rng.integers(5))],
        }
        for i in range(40_000)
    ]
    pool = [
        {
            "id": f"c{i:07x}",
            "source": "wiki",
            "task": "corpus",
            "query": f"passage {i}",
            "licence": "x",
            "origin": f"w:{i}",
            "query_lang": "eng_Latn",
        }
        for i in range(3000)
    ]  # a mining pool: not part of the mixture
    table = pa.Table.from_pylist(rows + pool, schema=WORK_SCHEMA)
    config = MixConfig(stage="mix", max_rows_per_source=20_000, temperature_alpha=0.5, seed=3)

    def run(blocks: int) -> pl.DataFrame:
        pieces = [table.take(pa.array(c)) for c in np.array_split(np.arange(table.num_rows), blocks)]
        rounds = exchange.Rounds(str(tmp_path / "scratch"), InProcess())
        out = Mix(config, RunContext(tmp_path, ("big", "small"))).plan(pieces, table.num_rows, rounds)
        return pl.from_arrow(pa.concat_tables([exchange.get(b) for b in out])).sort("id")

    out = run(3)
    assert out.select("id", DROP).equals(run(7).select("id", DROP))  # independent of blocking
    plan = json.loads((tmp_path / "mix_plan.json").read_text())
    kept = out.filter(pl.col(DROP).is_null())
    for entry in plan:
        group = out.filter(source=entry["source"], query_lang=entry["language"])
        expected = entry["rows"] * entry["rate"]
        got = kept.filter(source=entry["source"], query_lang=entry["language"]).height
        assert group.height == entry["rows"] and abs(got - expected) <= 4 * np.sqrt(expected) + 1, entry
    assert out.filter(source="big").height == 30_000 and kept.filter(source="big").height <= 20_000 + 4 * np.sqrt(
        20_000
    )  # capped
    assert set(out[DROP].drop_nulls()) == {"mix_source_cap", "mix_language_temperature"}
    assert kept.filter(source="wiki").height == 3000 and "wiki" not in {e["source"] for e in plan}
