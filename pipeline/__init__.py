"""The corpus pipeline: manifest -> Ray Data stages -> Parquet shards."""

__version__ = "0.2.0"  # feeds every step's fingerprint: a run folder of another version is not resumed
