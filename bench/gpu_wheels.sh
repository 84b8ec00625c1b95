#!/usr/bin/env bash
# Wheels a GPU box needs beside its torch, transformers, sentence-transformers, tokenizers, pyarrow and
# numpy to run bench/gpu_check.sh (the trainer's settings, the pipeline's mining path), for its Python
# (default 3.12) on x86_64 Linux, into bench/out/wheels; pass that folder with the device call's `carry`.
#   bash bench/gpu_wheels.sh [3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
mkdir -p bench/out/wheels
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d bench/out/wheels \
  pydantic pydantic-core annotated-types typing-inspection polars polars-runtime-32 plotly narwhals pycountry xxhash \
  regex bm25s fasttext-numpy2-wheel psutil datasets
du -sh bench/out/wheels
