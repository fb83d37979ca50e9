#!/usr/bin/env bash
# Create .venv if missing and install serlib with its test/notebook tools. Idempotent and quick when done already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.serlib-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
log=.venv/serlib-install.log
run() { "$@" >>"$log" 2>&1 || { cat "$log"; echo "setup failed: $*" >&2; exit 1; }; }
echo "installing serlib into .venv (log: $log)"
run .venv/bin/python -m pip install --upgrade pip
# A CPU build of torch: pinned exactly, since an open range pulls a multi-GB CUDA build.
# GPU users: install the CUDA wheel of torch 2.5-2.13 into .venv first; it is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  run .venv/bin/python -m pip install "torch==2.13.0"
fi
run .venv/bin/python -m pip install -e ".[dev]"
touch "$stamp"
