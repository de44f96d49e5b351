#!/usr/bin/env bash
# Creates (or reuses) a Python venv with Flask and gunicorn for the demo and the hunt tests.
# Usage: examples/setup-venv.sh [DIR]   (default: $HOME/.cache/leakhunt/venvs/demo). Prints DIR.
# Idempotent and quick when the venv is already complete.
set -euo pipefail
dir="${1:-${LEAKHUNT_VENV:-$HOME/.cache/leakhunt/venvs/demo}}"
python="${PYTHON:-python3}"
if ! "$dir/bin/python" -c 'import flask, gunicorn' >/dev/null 2>&1; then
  mkdir -p "$(dirname "$dir")"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check 'flask>=3,<4' 'gunicorn>=22,<24' >&2
fi
echo "$dir"
