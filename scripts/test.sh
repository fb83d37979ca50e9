#!/usr/bin/env bash
# The test command: unit, integration and real-data tests (skipped without data), then the notebooks under nbval.
# Every run starts from a fresh results folder (build/test/): the notebooks never reuse records of earlier runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SERLIB_CACHE="${SERLIB_CACHE:-$PWD/build/cache}"
export MPLBACKEND=Agg PYTHONHASHSEED=0
rm -rf build/test
export SERLIB_RESULTS="$PWD/build/test/results"
.venv/bin/python -m ruff check -q serlib tests benchmarks
.venv/bin/python -m pytest -q -rs -p no:cacheprovider tests notebooks \
  --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900 "$@"
