"""Language ID's effect on a finished run: the share of queries tagged `und` and the per-language
mining pools (source x query language, as `mine_negatives` groups them) with fewer than 10 distinct
passages, plus the ledger's `language_from_pair` and `language_from_prior` counts. Run it on two runs
of one manifest (say `model: lid176, fallback: null` and the defaults) to compare.

    python bench/langid_pools.py runs/stage1 [runs/stage1-lid176 ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.stages.langid import PAIR_FLAG  # noqa: E402
from pipeline.stages.langid_prior import PRIOR_FLAG  # noqa: E402

SMALL_POOL = 10
MOVED = (PAIR_FLAG, PRIOR_FLAG)  # ledger flags of texts whose language a rule changed


def figures(run: Path) -> dict[str, float]:
    rows = pl.scan_parquet(str(run / "shards" / "**" / "*.parquet"))
    queries = (
        rows.select(pl.len().alias("n"), (pl.col("query_lang").fill_null("und") == "und").sum().alias("und"))
        .collect()
        .row(0, named=True)
    )
    pools = (
        rows.group_by("source", pl.col("query_lang").fill_null("und"))
        .agg(pl.col("positive").n_unique().alias("passages"))
        .collect()
    )
    ledger = pl.read_parquet(run / "ledger.parquet")
    flagged = ledger.filter(pl.col("kind") == "flagged")
    moved = {reason: int(flagged.filter(pl.col("reason") == reason)["rows"].sum() or 0) for reason in MOVED}
    return {
        "queries": queries["n"],
        "und_share": queries["und"] / max(queries["n"], 1),
        "pools": pools.height,
        "pools_under_10": int((pools["passages"] < SMALL_POOL).sum()),
        **moved,
    }


def main() -> None:
    for run in sys.argv[1:]:
        f = figures(Path(run))
        print(
            f"{run}: {f['queries']:,} queries, {f['und_share']:.2%} tagged und; "
            f"{f['pools']} pools (source x language), "
            f"{f['pools_under_10']} with fewer than {SMALL_POOL} passages; "
            + ", ".join(f"{reason}: {f[reason]}" for reason in MOVED)
        )


if __name__ == "__main__":
    main()
