"""Language identification: fastText models with labels mapped to ISO 639-3 + ISO 15924 script."""

from langid.labels import CODE_PREFIX, UNDETERMINED, canonical, language_name
from langid.tagger import LanguageTagger

__all__ = ["CODE_PREFIX", "LanguageTagger", "UNDETERMINED", "canonical", "language_name"]
