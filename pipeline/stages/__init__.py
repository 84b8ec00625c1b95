"""Built-in stages. Importing this package registers them."""

from pipeline.stages import build_pairs, decontaminate, exact_dedup, instruct, langtag, mine_negatives, mix, near_dedup, normalize

__all__ = ["build_pairs", "decontaminate", "exact_dedup", "instruct", "langtag", "mine_negatives", "mix", "near_dedup", "normalize"]
