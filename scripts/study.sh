#!/usr/bin/env bash
# The main job: execute every notebook headless (papermill) into build/notebooks/ and write run records.
# Usage: bash scripts/study.sh [DATA_ROOT] [--profile quick|cpu|full] [other `serlib study` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SERLIB_CACHE="${SERLIB_CACHE:-$PWD/build/cache}"
export MPLBACKEND=Agg
args=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then args+=(--data-root "$1"); shift; fi
.venv/bin/python -m serlib study "${args[@]}" "$@"
