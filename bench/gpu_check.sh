#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one call (bench/gpu_check.py), on a GPU box that may have
# torch and transformers only: the wheels in bench/out/wheels (bench/gpu_wheels.sh downloads them)
# are installed first, from disk, then the checks run and print one JSON document.
#   bash bench/gpu_check.sh [--tiny] > gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d bench/out/wheels ] && ls bench/out/wheels/*.whl > /dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps bench/out/wheels/*.whl
  python -m pip install -q --no-deps --no-build-isolation -e . > /dev/null
fi
exec python bench/gpu_check.py "$@"
