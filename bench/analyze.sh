#!/usr/bin/env bash
# Benchmark: `leakhunt-analyzer analyze` against the seed's method (hexdump | awk | sort | uniq -c)
# on the same core, in the same run. Usage: bench/analyze.sh [MiB of heap, default 300]
# Prints a Markdown table row set; figures go to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-300}
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p leakhunt-analyzer
BIN=$CARGO_TARGET_DIR/release/leakhunt-analyzer
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
g++ -O1 -o "$work/widgets" analyzer/tests/programs/widgets.cpp
mkfifo "$work/in"
"$work/widgets" < "$work/in" > "$work/out" &
pid=$!
exec 3>"$work/in"
# Objects with vtables (what the census counts) plus plain malloc'd memory to reach the size.
echo "widgets 1000000" >&3
echo "malloc $((MIB - 60))" >&3
while [ "$(grep -c ok "$work/out" 2>/dev/null)" -lt 2 ]; do sleep 0.2; done
gcore -o "$work/core" "$pid" >/dev/null 2>&1
core="$work/core.$pid"
size=$(stat -c %s "$core")
echo "core: $((size >> 20)) MiB, $(nproc) cores"

t0=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$work/rss" "$BIN" analyze "$core" --format json > "$work/census.json"
t1=$(date +%s.%N)
ours=$(echo "$t1 - $t0" | bc -l)
peak=$(cat "$work/rss")

t0=$(date +%s.%N)
hexdump "$core" | awk '{printf "%s%s%s%s\n%s%s%s%s\n", $5,$4,$3,$2,$9,$8,$7,$6}' | sort | uniq -c | sort -nr > "$work/seed.txt"
t1=$(date +%s.%N)
seed=$(echo "$t1 - $t0" | bc -l)

printf '| core size | leakhunt analyze | peak RSS | throughput | seed pipeline | speed-up |\n|---|---|---|---|---|---|\n'
printf '| %d MiB | %.2f s | %d MiB | %.0f MiB/s | %.1f s | %.0f× |\n' \
  $((size >> 20)) "$ours" $((peak / 1024)) "$(echo "($size / 1048576) / $ours" | bc -l)" "$seed" "$(echo "$seed / $ours" | bc -l)"
echo "top of leakhunt census:"; "$BIN" analyze "$core" --top 3 | sed -n '3,6p'
echo "top of the seed pipeline:"; head -4 "$work/seed.txt"
