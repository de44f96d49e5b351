#!/usr/bin/env bash
# Benchmark: what tracemalloc (what --allocation-sites starts at snapshot A) costs the seed's Flask
# service under CPython 3.14 (Debian's, chrooted; make pyroot): requests per second from one client
# and memory per request, untraced and traced (4 frames, as leakhunt starts it), in the same run,
# ROUNDS fresh processes each (default 3), medians. Tracing is started as the hunt starts it
# (analyzer/examples/trace_start.rs: remote::start_tracing, 4 frames).
# Usage: bench/allocation-sites.sh [SECONDS per phase, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=${1:-15}
ROUNDS=${ROUNDS:-3}
ROOT=$(tests/workloads/pyroot.sh)
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
cargo build --release -q -p leakhunt-analyzer --example trace_start
TRACE_START=$CARGO_TARGET_DIR/release/examples/trace_start
dir=tmp/leakhunt-bench-$$
mkdir -p "$ROOT/$dir"
cp examples/leaky-flask/app.py "$ROOT/$dir/app.py"
pid=
trap 'rm -rf "${ROOT:?}/$dir"' EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# phase TRACED: a fresh service; with TRACED=1 tracemalloc is started first. Prints
# "requests_per_second kib_per_request".
phase() {
  local traced=$1 port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  PORT=$port PROFILER_LAPS=4 chroot "$ROOT" python3.14 "/$dir/app.py" >/dev/null 2>&1 &
  pid=$!
  # This runs in a subshell ($(phase …)): its service is stopped by its own trap, whatever happens.
  trap 'kill $pid 2>/dev/null' EXIT
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break; sleep 0.1; done
  python3 examples/leaky-flask/load.py --port "$port" --threads 1 --seconds 3 2>/dev/null  # warm-up
  if [ "$traced" = 1 ]; then
    rm -f "$ROOT/$dir/started"
    "$TRACE_START" "$pid" 4 >/dev/null
  fi
  local before after answered
  before=$(rss_kib $pid)
  answered=$(python3 examples/leaky-flask/load.py --port "$port" --threads 1 --seconds "$SECONDS_PER" 2>&1 | sed -n 's/.*, \([0-9]*\) answered/\1/p')
  after=$(rss_kib $pid)
  kill $pid; wait $pid 2>/dev/null || true; pid=
  awk -v n="$answered" -v s="$SECONDS_PER" -v a="$before" -v b="$after" 'BEGIN { printf "%.1f %.3f\n", n / s, (b - a) / n }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

off=(); on=()
for _ in $(seq "$ROUNDS"); do
  off+=("$(phase 0)")
  on+=("$(phase 1)")
done
rps_off=$(printf '%s\n' "${off[@]}" | cut -d' ' -f1 | median)
rps_on=$(printf '%s\n' "${on[@]}" | cut -d' ' -f1 | median)
mem_off=$(printf '%s\n' "${off[@]}" | cut -d' ' -f2 | median)
mem_on=$(printf '%s\n' "${on[@]}" | cut -d' ' -f2 | median)
echo "CPython $(chroot "$ROOT" python3.14 -c 'import platform; print(platform.python_version())'), $(nproc) cores, $ROUNDS rounds of ${SECONDS_PER}s, medians"
echo "| | requests/s | RSS KiB per request |"
echo "|---|---|---|"
echo "| untraced | $rps_off | $mem_off |"
echo "| tracemalloc, 4 frames | $rps_on | $mem_on |"
awk -v a="$rps_off" -v b="$rps_on" -v c="$mem_off" -v d="$mem_on" 'BEGIN { printf "| traced / untraced | %.2f× | %.2f× |\n", b / a, d / c }'
