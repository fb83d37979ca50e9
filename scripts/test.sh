#!/usr/bin/env bash
# The test command: unit, integration and real-data tests (skipped without data), then the notebooks under nbval.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SERLIB_CACHE="${SERLIB_CACHE:-$PWD/build/cache}"
export MPLBACKEND=Agg PYTHONHASHSEED=0
.venv/bin/python -m ruff check -q serlib tests benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider tests notebooks \
  --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900 "$@"
