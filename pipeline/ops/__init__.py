"""Algorithms the stages use, with no knowledge of the engine: MinHash, connected components, all-to-all exchange,
retrieval, embedding, Arrow and file helpers."""
