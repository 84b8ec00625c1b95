"""Language identification: fastText models with labels mapped to ISO 639-3 + ISO 15924 script."""

from langid.tagger import LanguageTagger, UNDETERMINED

__all__ = ["LanguageTagger", "UNDETERMINED"]
