#!/usr/bin/env bash
# Benchmark: `leakhunt-analyzer capture` against gdb's `gcore` on the same ~1 GiB process, same run.
# Prints a Markdown table; with --write, replaces the "capture" section of docs/benchmarks.md.
#
#   bench/capture.sh [--write] [MiB (default 1024)] [rounds (default 3)]
#
# Needs root (ptrace), gcc, gdb. Uses $CARGO_TARGET_DIR like the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
write=0
if [ "${1:-}" = "--write" ]; then write=1; shift; fi
mib=${1:-1024}
rounds=${2:-3}
: "${CARGO_TARGET_DIR:=$HOME/.cache/leakhunt/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p leakhunt-analyzer
bin=$CARGO_TARGET_DIR/release/leakhunt-analyzer

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/leakhunt-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The target: 4 threads and $mib MiB of touched heap in 1 MiB blocks (a realistic mix: half the
# words are small integers, half pseudo-random), then it sleeps.
cat > "$work/target.c" <<'C'
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void *idle(void *a) { (void)a; for (;;) pause(); return NULL; }
int main(int argc, char **argv) {
    size_t mib = (size_t)atol(argv[1]);
    uint64_t x = 88172645463325252ULL;
    for (size_t b = 0; b < mib; b++) {
        uint64_t *p = malloc(1 << 20);
        for (size_t k = 0; k < (1 << 20) / 8; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[k] = (k & 1) ? x : (k & 0xffff);
        }
    }
    pthread_t t;
    for (int i = 0; i < 3; i++) pthread_create(&t, NULL, idle, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
C
gcc -O2 -pthread -o "$work/target" "$work/target.c"
mkfifo "$work/ready"
"$work/target" "$mib" > "$work/ready" &
pid=$!
read -r _ < "$work/ready"
sleep 1
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

# Stop time seen from outside, the same way for both tools: how long the target has a tracer
# (TracerPid != 0 in /proc/PID/status), sampled every millisecond.
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

# run NAME CMD...: wall, CPU (user+sys) and externally observed stop time of one command.
run() {
  local name=$1; shift
  touch "$work/flag"
  python3 "$work/stopwatch.py" "$pid" "$work/flag" > "$work/stop.$name" &
  local sw=$!
  sleep 0.2
  local TIMEFORMAT='%R %U %S'
  { time "$@" > "$work/out.$name" 2>&1 ; } 2> "$work/time.$name"
  rm -f "$work/flag"; wait "$sw"
  read -r wall user sys < "$work/time.$name"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  echo "$name $wall $cpu $(cat "$work/stop.$name")" >> "$work/results"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
: > "$work/results"
for r in $(seq "$rounds"); do
  sync; rm -f "$work"/core*
  run ours "$bin" capture --pid "$pid" --output "$work/core.ours"
  size_ours=$(stat -c %s "$work/core.ours"); rm -f "$work/core.ours"; sync
  run zst "$bin" capture --pid "$pid" --output "$work/core.ours.zst"
  size_zst=$(stat -c %s "$work/core.ours.zst"); rm -f "$work/core.ours.zst"; sync
  run gcore gcore -o "$work/core.gcore" "$pid"
  size_gcore=$(stat -c %s "$work/core.gcore.$pid"); rm -f "$work/core.gcore.$pid"; sync
  tail -3 "$work/results" | sed "s/^/round $r: /" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# med NAME FIELD: median of one column for one tool.
med() { awk -v n="$1" -v f="$2" '$1 == n {print $f}' "$work/results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
for t in ours zst gcore; do
  eval "w_$t=\$(med $t 2) c_$t=\$(med $t 3) s_$t=\$(med $t 4)"
done
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
table=$(cat <<MD
## capture

\`bench/capture.sh\`: one process with $((rss_kib / 1024)) MiB resident (${mib} MiB of touched heap, half of it
random words, 4 threads), captured by \`leakhunt-analyzer capture\` and by gdb's \`gcore\` in the same run,
alternating, $rounds rounds, medians. Wall and CPU time include each tool's start-up; "target stopped" is measured
from outside for both (time the target has a tracer, sampled every ms). Output on $(df --output=fstype "$work" | tail -1)
(\`$(df --output=source "$work" | tail -1)\`). Machine: $(nproc) cores ($cpu), $(free -g | awk '/Mem:/ {print $2}') GiB,
Linux $(uname -r), $(date -u +%Y-%m-%d); load average $load_before before, $load_after after (other jobs shared the machine).

| tool | wall time | CPU time | target stopped | core size | wall vs gcore | stop vs gcore |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| \`leakhunt-analyzer capture\` | ${w_ours} s | ${c_ours} s | ${s_ours} ms | $((size_ours / 1048576)) MiB | $(div "$w_gcore" "$w_ours")× faster | $(div "$s_gcore" "$s_ours")× shorter |
| \`leakhunt-analyzer capture\` to \`.zst\` | ${w_zst} s | ${c_zst} s | ${s_zst} ms | $((size_zst / 1048576)) MiB | $(div "$w_gcore" "$w_zst")× | $(div "$s_gcore" "$s_zst")× shorter |
| \`gcore\` (gdb $(gdb --version | head -1 | awk '{print $NF}')) | ${w_gcore} s | ${c_gcore} s | ${s_gcore} ms | $((size_gcore / 1048576)) MiB | 1× | 1× |

Our core also holds the read-only pages of the ELF objects (self-contained); gcore's does not. The plain
capture is bound by the disk (\`O_DIRECT\` writes) and by the CPU other jobs leave; the target runs again as
soon as its memory is read, while queued chunks are still being written. \`.zst\` is compressed after the
target runs again (zstd level 1, two threads): its wall time is compression of a worst case (half random
words; real heaps compress faster and smaller). On a shared machine the figures vary from run to run:
compare rows of one run, not runs.
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
