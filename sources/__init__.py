"""Sources: read local files or `datasets` and map their rows onto the canonical record."""
