#!/usr/bin/env bash
# Benchmark: the analyzer on big CPython heaps. For each size, a CPython process holds N records
# of 5 objects (tests/workloads/records.py: 1.5 M records = 7.5 M objects, a ~390 MB core); gcore
# takes A, the process appends N/10 more, gcore takes B. Then `analyze A` and `diff A B`: wall
# time, peak anonymous memory (RssAnon sampled every 10 ms: what a memory cgroup charges and
# kills for; the mapped core is file memory), the allocator's own peak (--stats), bytes per
# object; and gcore's time for A, measured in the same run, as the baseline.
# With BASE=<git commit>, that commit's analyzer is built and measured on the same cores.
# Usage: bench/python-scale.sh [RECORDS ...]   (default: 1500000 3000000 6000000)
# Figures go to docs/benchmarks.md (section "big heaps").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(ls -d "$HOME"/.pyenv/versions/3.11.*/bin/python3.11 | head -1)}
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p leakhunt-analyzer --bin leakhunt-analyzer
BIN=$CARGO_TARGET_DIR/release/leakhunt-analyzer
work=$(mktemp -d "${TMPDIR:-/tmp}/leakhunt-scale.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
BASEBIN=${BASEBIN:-}
if [ -z "$BASEBIN" ] && [ -n "${BASE:-}" ]; then
  git worktree add -f "$work/base" "$BASE" >/dev/null 2>&1
  (cd "$work/base" && CARGO_TARGET_DIR="$HOME/.cache/leakhunt/target-base" cargo build --release -q -p leakhunt-analyzer --bin leakhunt-analyzer)
  BASEBIN=$HOME/.cache/leakhunt/target-base/release/leakhunt-analyzer
fi

# Runs "$@", prints "wall_s peak_anon_kib".
measure() {
  local start end peak=0 kib
  start=$(date +%s.%N)
  "$@" > "$work/out" 2> "$work/err" &
  local p=$!
  while kill -0 "$p" 2>/dev/null; do
    kib=$(awk '/^RssAnon:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    [ "${kib:-0}" -gt "$peak" ] && peak=$kib
    sleep 0.01
  done
  wait "$p" || { echo "failed: $* $(cat "$work/err")" >&2; return 1; }
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc -l) $peak"
}

echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $("$PY" -V); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| objects | core | gcore A | analyze | peak anon | B/object | diff | peak anon | B/object |%s\n' "${BASEBIN:+ base analyze | base peak | base diff | base peak |}"
printf '|---|---|---|---|---|---|---|---|---|%s\n' "${BASEBIN:+---|---|---|---|}"
for records in "${@:-1500000 3000000 6000000}"; do
  for n in $records; do
    coproc W { exec "$PY" tests/workloads/records.py "$n"; }
    pid=$W_PID
    cpid=$pid
    read -r _ <&"${W[0]}"
    t0=$(date +%s.%N); gcore -o "$work/a" "$pid" >/dev/null 2>&1; t1=$(date +%s.%N)
    gcore_s=$(echo "$t1 - $t0" | bc -l)
    echo more >&"${W[1]}"; read -r _ <&"${W[0]}"
    gcore -o "$work/b" "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    a=$work/a.$cpid b=$work/b.$cpid
    read -r an_s an_kib < <(measure "$BIN" analyze "$a" --top 1 --stats)
    objects=$(grep -o '[0-9]* objects' "$work/out" | head -1 | awk '{print $1}')
    read -r df_s df_kib < <(measure "$BIN" diff "$a" "$b" --stats)
    base=""
    if [ -n "$BASEBIN" ]; then
      read -r ba_s ba_kib < <(measure "$BASEBIN" analyze "$a" --top 1)
      read -r bd_s bd_kib < <(measure "$BASEBIN" diff "$a" "$b")
      base=$(printf ' %.2f s | %d MiB | %.2f s | %d MiB |' "$ba_s" $((ba_kib / 1024)) "$bd_s" $((bd_kib / 1024)))
    fi
    printf '| %s | %d MiB | %.2f s | %.2f s | %d MiB | %.0f | %.2f s | %d MiB | %.0f |%s\n' \
      "$objects" $(($(stat -c %s "$a") >> 20)) "$gcore_s" "$an_s" $((an_kib / 1024)) \
      "$(echo "$an_kib * 1024 / $objects" | bc -l)" "$df_s" $((df_kib / 1024)) \
      "$(echo "$df_kib * 1024 / $objects" | bc -l)" "$base"
    grep -m1 'grew from' "$work/out" | sed 's/^/    diff: /' || true
    rm -f "$a" "$b"
  done
done
