"""Exports of a finished run for the trainers people run: ML-Embed's release (`ml-embed`, tokenized,
and `flat`, its raw layout), sentence-transformers and FlagEmbedding (`pipeline/export/layouts.py`)."""

from pipeline.export.exporter import ExportReport, export
from pipeline.export.run import ExportError

__all__ = ["ExportError", "ExportReport", "export"]
