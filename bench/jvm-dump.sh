#!/usr/bin/env bash
# Benchmark: JVM heap dumps. One JVM (tests/workloads/Shapes.java, static-map: ENTRIES quotes in a
# static HashMap, G1) is dumped ROUNDS times by leakhunt (`leakhunt-analyzer heap-dump`: -all, gzip 1)
# and by `jmap -dump:live` in turn; the JVM logs every safepoint (-Xlog:safepoint), so each dump's
# pause is the JVM's own figure for its HeapDumper operation, not a wall time seen from outside.
# Then `diff` of leakhunt's two last dumps (the JVM grew by ENTRIES/10 between them): wall time and
# peak anonymous memory (RssAnon every 10 ms; the mapped dumps are file memory), and the dumps' sizes.
# Then the same diff under a memory budget (BUDGET, default 2G: the loads one after the other where
# both cannot fit), `analyze` of one dump, and hprof-analyzer on it where installed (HPROF_ANALYZER,
# HPROF_ANALYZER_ARGS).
# Usage: bench/jvm-dump.sh [ENTRIES] [ROUNDS]   (default 2000000 3: about 600 MiB of heap)
# Figures go to docs/benchmarks.md (section "JVM heap dumps").
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-2000000}
rounds=${2:-3}
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
cargo build --release -q -p leakhunt-analyzer --bin leakhunt-analyzer
BIN=$CARGO_TARGET_DIR/release/leakhunt-analyzer
work=$(mktemp -d "${TMPDIR:-/var/tmp}/leakhunt-jvm.XXXXXX")
cleanup() { [ -n "${J_PID:-}" ] && kill "$J_PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
javac -d "$work/classes" tests/workloads/Shapes.java
coproc J { exec java -Xmx4g -XX:+UseG1GC "-Xlog:safepoint:file=$work/safepoints.log" -cp "$work/classes" Shapes static-map; }
read -r _ <&"${J[0]}"
step() { echo "step $1" >&"${J[1]}"; read -r _ <&"${J[0]}"; }
step "$entries"

# The last HeapDumper safepoint's total, in ms.
last_pause() {
  sleep 0.5
  grep 'HeapDumper' "$work/safepoints.log" | tail -1 | sed -n 's/.*Total: \([0-9]*\) ns.*/\1/p' | awk '{printf "%.0f", $1 / 1e6}'
}
echo "JVM $J_PID: $entries entries; $(java -version 2>&1 | head -1)"
"$BIN" jvm-stats --pid "$J_PID" | sed -n 2p
printf '%-6s %14s %14s %12s\n' round leakhunt_ms jmap_live_ms hprof_MiB
for r in $(seq "$rounds"); do
  rm -f "$work/a.hprof.zst" "$work/jmap.hprof"
  "$BIN" heap-dump --pid "$J_PID" -o "$work/a.hprof.zst" >/dev/null
  ours=$(last_pause)
  jmap "-dump:live,format=b,file=$work/jmap.hprof" "$J_PID" >/dev/null
  theirs=$(last_pause)
  printf '%-6s %14s %14s %12s\n' "$r" "$ours" "$theirs" "$(($(stat -c %s "$work/jmap.hprof") >> 20))"
done
rm -f "$work/jmap.hprof"
step $((entries / 10))
"$BIN" heap-dump --pid "$J_PID" -o "$work/b.hprof.zst" >/dev/null

# Runs "$@", prints "wall_s peak_anon_MiB".
measure() {
  local t0 peak=0 a pid
  t0=$(date +%s.%N)
  "$@" >"$work/out" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    a=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${a:-0}" -gt "$peak" ] && peak=$a
    sleep 0.01
  done
  wait "$pid"
  echo "$(echo "$(date +%s.%N) - $t0" | bc) $((peak >> 10))"
}
echo "dumps: A $(($(stat -c %s "$work/a.hprof.zst") >> 20)) MiB, B $(($(stat -c %s "$work/b.hprof.zst") >> 20)) MiB (zstd)"
echo "diff A B (wall s, peak anonymous MiB): $(measure "$BIN" diff "$work/a.hprof.zst" "$work/b.hprof.zst")"
head -2 "$work/out"
# Under a memory budget that cannot hold both loads at once, they run one after the other.
budget=${BUDGET:-2G}
echo "diff A B --memory-budget $budget (wall s, peak anonymous MiB): $(measure "$BIN" diff --memory-budget "$budget" "$work/a.hprof.zst" "$work/b.hprof.zst")"
head -2 "$work/out"
echo "analyze A alone (wall s, peak anonymous MiB): $(measure "$BIN" analyze "$work/a.hprof.zst")"
# hprof-analyzer (crates.io, `cargo install hprof-analyzer`) on the same dump, plain HPROF.
if command -v "${HPROF_ANALYZER:-hprof-analyzer}" >/dev/null; then
  zstd -q -d "$work/a.hprof.zst" -o "$work/a.hprof"
  echo "hprof-analyzer A (wall s, peak anonymous MiB): $(measure "${HPROF_ANALYZER:-hprof-analyzer}" ${HPROF_ANALYZER_ARGS:-} "$work/a.hprof")"
  tail -3 "$work/out"
  echo "analyze A, plain HPROF (wall s, peak anonymous MiB): $(measure "$BIN" analyze "$work/a.hprof")"
fi
