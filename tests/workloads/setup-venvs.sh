#!/usr/bin/env bash
# Creates one virtualenv per installed CPython 3.8+ under $HOME/.cache/leakhunt/venvs/<version> with Flask
# (for the seed workload) and guppy3 (the in-process anchor of bench/python-diff.sh). Idempotent.
set -euo pipefail
root="${PYENV_ROOT:-$HOME/.pyenv}/versions"
dest="$HOME/.cache/leakhunt/venvs"
mkdir -p "$dest"
[ -d "$root" ] || { echo "setup-venvs: no CPython under $root; Python tests will fail" >&2; exit 0; }
for dir in "$root"/3.*; do
  v="$(basename "$dir")"
  case "$v" in 3.[0-7].*) continue ;; esac        # leakhunt reads CPython 3.8+
  py="$(ls "$dir"/bin/python3.[0-9]* 2>/dev/null | grep -E 'python3\.[0-9]+$' | head -1)"
  [ -x "$py" ] || continue
  venv="$dest/$v"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import flask' 2>/dev/null; then
    continue
  fi
  echo "setup-venvs: $v"
  "$py" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q flask
  # guppy3 is only for the benchmark; it may lack a wheel for some versions.
  "$venv/bin/python" -m pip install -q guppy3 || echo "setup-venvs: guppy3 unavailable for $v" >&2
done
