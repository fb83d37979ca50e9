#!/usr/bin/env bash
# The main job: execute every notebook headless (papermill) into build/notebooks/ and write run records.
# Usage: bash scripts/study.sh [DATA_ROOT] [--profile quick|cpu|full] [other `serlib study` options]
# Paths (DATA_ROOT, --data-root, --out, --results) are taken relative to the directory you run this from.
set -euo pipefail
caller=$PWD
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$caller/$1" ;; esac; }
args=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then args+=(--data-root "$(abs "$1")"); shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --data-root|--out|--results)
      [ $# -ge 2 ] || { echo "study.sh: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$(abs "$2")"); shift 2 ;;
    --data-root=*|--out=*|--results=*) args+=("${1%%=*}" "$(abs "${1#*=}")"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SERLIB_CACHE="${SERLIB_CACHE:-$PWD/build/cache}"
export MPLBACKEND=Agg
.venv/bin/python -m serlib study ${args[@]+"${args[@]}"}
