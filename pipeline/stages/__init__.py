"""Built-in stages. Importing this package registers them."""

from pipeline.stages import exact_dedup, langtag, normalize

__all__ = ["exact_dedup", "langtag", "normalize"]
