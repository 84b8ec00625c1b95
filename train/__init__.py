"""The 3D Matryoshka trainer (MRL, MLL, MEL) that reads the pipeline's shards."""
