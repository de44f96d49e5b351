#!/usr/bin/env bash
# `make demo`: the whole hunt on this host. Runs the seed's leaky Flask service under a small
# memory limit with `leakhunt hunt`, drives loopback traffic at it, and lets leakhunt snapshot
# it near the limit, name what grows (Profiler.results) and report the OOM kill that follows.
# Ends by itself; leakhunt removes its cgroup, this script stops the load loop.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
leakhunt="${LEAKHUNT:-${CARGO_TARGET_DIR:-$HOME/.cache/leakhunt/target}/release/leakhunt}"
limit="${DEMO_MEMORY_LIMIT:-128Mi}"
report="${DEMO_REPORT:-${TMPDIR:-/tmp}/leakhunt-demo-leakreport.yaml}"
html="${report%.yaml}.html"

if [ "$(id -u)" != 0 ]; then
  echo "demo: leakhunt creates a memory cgroup: run as root (or with a delegated cgroup tree)" >&2
  exit 3
fi
venv="$("$here/setup-venv.sh")"
port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# Bounded load: stops after 10 minutes, or 5 s after the service is gone (OOM-killed).
"$venv/bin/python" "$here/leaky-flask/load.py" --port "$port" --threads 4 --seconds 600 --give-up 5 &
load=$!
trap 'kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true' EXIT

echo "demo: leaky Flask service on 127.0.0.1:$port under a $limit limit; load running (pid $load)" >&2
start=$(date +%s)
set +e
PORT="$port" "$leakhunt" hunt --memory-limit "$limit" --report "$report" --html "$html" \
  -- "$venv/bin/python" "$here/leaky-flask/app.py"
rc=$?
set -e
echo >&2
echo "demo: done in $(( $(date +%s) - start ))s (leakhunt exit $rc); LeakReport: $report" >&2
echo "demo: the report as a page (timeline, suspects, types; opens offline): $html" >&2
exit "$rc"
