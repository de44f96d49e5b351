#!/usr/bin/env bash
# Benchmark: `leakhunt-analyzer capture` (pre-copy, the default), the same with --stop-the-world
# (the old way) and gdb's `gcore`, on the same process, same run, while a writer thread in it
# dirties memory at 0, 50 and 200 MiB/s. Prints a Markdown table; with --write, replaces the
# "capture" section of docs/benchmarks.md.
#
#   bench/capture.sh [--write] [MiB... (default 1024 4096)] [-r rounds (default 3)]
#
# Needs root (ptrace), gcc, gdb. Uses $CARGO_TARGET_DIR like the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
write=0
rounds=3
sizes=()
while [ $# -gt 0 ]; do
  case $1 in
    --write) write=1 ;;
    -r) rounds=$2; shift ;;
    *) sizes+=("$1") ;;
  esac
  shift
done
[ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)
rates=(0 50 200)
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p leakhunt-analyzer
bin=$CARGO_TARGET_DIR/release/leakhunt-analyzer

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/leakhunt-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; exec 3>&- 4<&- || true; rm -rf "$work"; }
trap cleanup EXIT

# The target: $1 MiB of touched heap in 1 MiB blocks (half the words small integers, half
# pseudo-random), 3 idle threads, a writer thread that dirties random pages at the rate it is told
# ("rate MiB/s"), and a ticker thread that wakes every millisecond and keeps the longest gap it saw
# beyond that: the longest pause the process felt ("reset", "max" → microseconds).
cat > "$work/target.c" <<'C'
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static uint64_t **blocks;
static size_t nblocks;
static volatile double rate;
static volatile int64_t max_gap;
static int64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}
static void *idle(void *a) { (void)a; for (;;) pause(); return NULL; }
static void *ticker(void *a) {
    (void)a;
    struct timespec ms = {0, 1000000};
    for (;;) {
        int64_t t = now_ns();
        nanosleep(&ms, NULL);
        int64_t gap = now_ns() - t - 1000000;
        if (gap > max_gap) max_gap = gap;
    }
    return NULL;
}
static void *writer(void *a) {
    (void)a;
    uint64_t x = 0x9E3779B97F4A7C15ULL, n = 0;
    struct timespec ms = {0, 1000000};
    for (;;) {
        nanosleep(&ms, NULL);
        long pages = (long)(rate * 256.0 / 1000.0);
        for (long i = 0; i < pages; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t *b = blocks[x % nblocks];
            b[((x >> 20) % 256) * 512] = ++n;
        }
    }
    return NULL;
}
int main(int argc, char **argv) {
    nblocks = (size_t)atol(argv[1]);
    blocks = calloc(nblocks, sizeof *blocks);
    uint64_t x = 88172645463325252ULL;
    for (size_t b = 0; b < nblocks; b++) {
        uint64_t *p = blocks[b] = malloc(1 << 20);
        for (size_t k = 0; k < (1 << 20) / 8; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[k] = (k & 1) ? x : (k & 0xffff);
        }
    }
    pthread_t t;
    for (int i = 0; i < 3; i++) pthread_create(&t, NULL, idle, NULL);
    pthread_create(&t, NULL, ticker, NULL);
    pthread_create(&t, NULL, writer, NULL);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "rate ", 5)) { rate = atof(line + 5); printf("ok\n"); }
        else if (!strncmp(line, "reset", 5)) { max_gap = 0; printf("ok\n"); }
        else if (!strncmp(line, "max", 3)) printf("%lld\n", (long long)(max_gap / 1000));
        fflush(stdout);
    }
    return 0;
}
C
gcc -O2 -pthread -o "$work/target" "$work/target.c"

# Time the target has a tracer (TracerPid != 0), sampled every millisecond: the stop as seen
# from outside.
cat > "$work/stopwatch.py" <<'PY'
import os, sys, time
pid, flag = sys.argv[1], sys.argv[2]
traced = 0.0
since = None
while os.path.exists(flag):
    try:
        with open(f"/proc/{pid}/status") as f:
            on = any(l.startswith("TracerPid:") and l.split()[1] != "0" for l in f)
    except OSError:
        break
    now = time.monotonic()
    if on and since is None:
        since = now
    elif not on and since is not None:
        traced += now - since
        since = None
    time.sleep(0.001)
if since is not None:
    traced += time.monotonic() - since
print(f"{traced * 1000:.0f}")
PY

ask() { echo "$1" >&3; read -r reply <&4; echo "$reply"; }

# run SIZE RATE NAME CMD...: wall time, peak RSS of the tool, the pause the target felt (ms), the
# time it had a tracer (ms), and the tool's own stopped figure when it prints one.
run() {
  local size=$1 rate=$2 name=$3; shift 3
  touch "$work/flag"
  python3 "$work/stopwatch.py" "$pid" "$work/flag" > "$work/stop" &
  local sw=$!
  sleep 0.3
  ask reset > /dev/null
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/out" 2>&1
  t1=$(date +%s.%N)
  sleep 0.05
  local felt
  felt=$(ask max)
  rm -f "$work/flag"; wait "$sw"
  local own
  own=$(sed -n 's/.*, stopped \([0-9.]*\) ms.*/\1/p' "$work/out")
  echo "$size $rate $name $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $(( $(tail -1 "$work/rss") / 1024 )) $(awk -v f="$felt" 'BEGIN { printf "%.1f", f / 1000 }') $(cat "$work/stop") ${own:--}" >> "$work/results"
  tail -1 "$work/results" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
: > "$work/results"
for mib in "${sizes[@]}"; do
  mkfifo "$work/in.$mib" "$work/outp.$mib"
  "$work/target" "$mib" < "$work/in.$mib" > "$work/outp.$mib" &
  pid=$!
  exec 3> "$work/in.$mib" 4< "$work/outp.$mib"
  read -r _ <&4
  for rate in "${rates[@]}"; do
    ask "rate $rate" > /dev/null
    sleep 1
    for r in $(seq "$rounds"); do
      sync; rm -f "$work"/core*
      run "$mib" "$rate" pre "$bin" capture --pid "$pid" --output "$work/core.pre"
      grep -o '(pre-copied[^)]*)' "$work/out" >> "$work/methods.$mib.$rate" || true
      rm -f "$work/core.pre"; sync
      run "$mib" "$rate" stw "$bin" capture --stop-the-world --pid "$pid" --output "$work/core.stw"
      rm -f "$work/core.stw"; sync
      run "$mib" "$rate" gcore gcore -o "$work/core.gcore" "$pid"
      rm -f "$work/core.gcore.$pid"; sync
    done
  done
  exec 3>&- 4<&-
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# med SIZE RATE NAME FIELD: median of one column.
med() {
  awk -v s="$1" -v r="$2" -v n="$3" -v f="$4" '$1 == s && $2 == r && $3 == n {print $f}' "$work/results" \
    | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f×", a / b; else print "—" }'; }
rows=""
for mib in "${sizes[@]}"; do
  for rate in "${rates[@]}"; do
    w_pre=$(med "$mib" "$rate" pre 4); w_stw=$(med "$mib" "$rate" stw 4); w_g=$(med "$mib" "$rate" gcore 4)
    f_pre=$(med "$mib" "$rate" pre 6); f_stw=$(med "$mib" "$rate" stw 6); f_g=$(med "$mib" "$rate" gcore 6)
    o_pre=$(med "$mib" "$rate" pre 8); o_stw=$(med "$mib" "$rate" stw 8)
    t_g=$(med "$mib" "$rate" gcore 7)
    m_pre=$(med "$mib" "$rate" pre 5)
    how=$(sort "$work/methods.$mib.$rate" 2>/dev/null | awk 'NR == 1' | sed 's/^(//; s/)$//')
    rows+="| $mib MiB | $rate MiB/s | ${o_pre} ms | ${f_pre} ms | ${o_stw} ms | ${f_stw} ms | ${t_g} ms | ${f_g} ms | $(div "$f_g" "$f_pre") | $(div "$f_stw" "$f_pre") | ${w_pre} s | ${w_stw} s | ${w_g} s | $(div "$w_pre" "$w_stw") | ${m_pre} MiB | ${how} |
"
  done
done
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
table=$(cat <<MD
## capture

\`bench/capture.sh\`: one process per size (that many MiB of touched heap, half of it random words; 3 idle
threads, a ticker thread, and a writer thread dirtying random pages at the rate shown), captured by
\`leakhunt-analyzer capture\` (pre-copy, the default), by the same with \`--stop-the-world\` (how it captured
before pre-copy) and by gdb's \`gcore\`, alternating, $rounds rounds, medians. "Felt" is the longest pause the
target's own ticker thread saw during the capture (it wakes every millisecond; scheduling noise on this
shared machine is part of it), the same measure for all three. "Own" is the stop time the capture reports; for
gcore, the time the target had a tracer (sampled every ms). Wall time includes start-up; peak RSS is the
capture's own. Output on $(df --output=fstype "$work" | tail -1). Machine: $(nproc) cores ($cpu),
$(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), $(date -u +%Y-%m-%d); load average $load_before
before, $load_after after.

| target | dirtied | pre-copy: own stop | felt | stop-the-world: own | felt | gcore: traced | felt | felt, gcore ÷ pre-copy | felt, stop-the-world ÷ pre-copy | wall: pre-copy | stop-the-world | gcore | wall, pre-copy ÷ stop-the-world | pre-copy peak RSS | how (first round) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
$rows
MD
)
echo "$table"
if [ "$write" = 1 ]; then
  f=docs/benchmarks.md
  mkdir -p docs
  [ -f "$f" ] || printf '# Benchmarks\n\nFigures from the scripts in `bench/`, on the machine named in each section.\n' > "$f"
  # Replace the "## capture" section (up to the next "## " heading) or append it.
  python3 - "$f" "$table" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2].rstrip() + "\n"
text = open(path).read()
pat = re.compile(r"^## capture\n.*?(?=^## |\Z)", re.S | re.M)
text = pat.sub(lambda m: section + "\n", text) if pat.search(text) else text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
  echo "wrote $f" >&2
fi
