"""The corpus pipeline: manifest -> Ray Data stages -> Parquet shards."""

__version__ = "0.1.0"
