"""The corpus pipeline: manifest -> stages run as tasks (in process or on Ray) -> Parquet shards."""

__version__ = "0.3.0"  # feeds every step's fingerprint: a run folder of another version is not resumed
