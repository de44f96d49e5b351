#!/usr/bin/env bash
# Benchmark: CPython diff of two snapshots of a process holding ~2 million objects (our capture),
# wall time and peak RSS of the diff, against guppy3's hpy().heap() on the same heap inside the
# same process, in the same run. Usage: bench/python-diff.sh [CPython version] [records]
# Figures go to docs/benchmarks.md (section "python diff").
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.12.1}
RECORDS=${2:-500000}
PY="$HOME/.cache/leakhunt/venvs/$VERSION/bin/python"
[ -x "$PY" ] || { echo "no venv for $VERSION: run tests/workloads/setup-venvs.sh" >&2; exit 1; }
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p leakhunt-analyzer --bin leakhunt-analyzer --example pydiff
BIN=$CARGO_TARGET_DIR/release/leakhunt-analyzer
PYDIFF=$CARGO_TARGET_DIR/release/examples/pydiff
work=$(mktemp -d)
coproc W { exec "$PY" tests/workloads/bench_heap.py "$RECORDS"; }
pid=$W_PID
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
read -r line <&"${W[0]}"
echo "step 1000" >&"${W[1]}"; read -r line <&"${W[0]}"
"$BIN" capture --pid "$pid" --output "$work/a.core" >/dev/null
echo "step 50000" >&"${W[1]}"; read -r line <&"${W[0]}"
"$BIN" capture --pid "$pid" --output "$work/b.core" >/dev/null
echo "guppy" >&"${W[1]}"; read -r line <&"${W[0]}"
guppy_s=$(echo "$line" | awk '{print $2}')
guppy_n=$(echo "$line" | awk '{print $3}')

/usr/bin/time -f "%e %U %S %M" -o "$work/time" "$PYDIFF" "$work/a.core" "$work/b.core" > "$work/diff.txt" 2> "$work/err.txt"
read -r wall user sys peak_kib < "$work/time"
cpu=$(echo "$user + $sys" | bc -l)
objects=$(grep -m1 -o 'loaded [0-9]* objects' "$work/err.txt" | awk '{print $2}')
# The product command: generic census + CPython diff, text report.
/usr/bin/time -f "%e %U %S %M" -o "$work/time-cli" "$BIN" diff "$work/a.core" "$work/b.core" > "$work/cli.txt"
read -r cli_wall cli_user cli_sys cli_peak_kib < "$work/time-cli"
cli_cpu=$(echo "$cli_user + $cli_sys" | bc -l)
echo "CPython $VERSION, $(nproc) cores; core sizes: $(($(stat -c %s "$work/a.core") >> 20)) MiB, $(($(stat -c %s "$work/b.core") >> 20)) MiB"
head -3 "$work/diff.txt"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
head -5 "$work/cli.txt"
printf '| CPython | objects (A) | CPython diff wall (CPU) | peak RSS | `leakhunt-analyzer diff` wall (CPU) | peak RSS | guppy3 hpy().heap() in-process | guppy3 objects |\n|---|---|---|---|---|---|---|---|\n'
printf '| %s | %s | %.2f s (%.2f s) | %d MiB | %.2f s (%.2f s) | %d MiB | %.2f s | %s |\n' "$VERSION" "$objects" "$wall" "$cpu" $((peak_kib / 1024)) "$cli_wall" "$cli_cpu" $((cli_peak_kib / 1024)) "$guppy_s" "$guppy_n"
