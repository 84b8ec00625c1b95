"""Built-in stages. Importing this package registers them."""

from pipeline.stages import decontaminate, exact_dedup, instruct, langtag, mine_negatives, near_dedup, normalize

__all__ = ["decontaminate", "exact_dedup", "instruct", "langtag", "mine_negatives", "near_dedup", "normalize"]
