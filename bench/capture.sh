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
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
ours=() ; theirs=() ; stops=() ; zst=() ; zst_stops=()
for r in $(seq "$rounds"); do
  sync; rm -f "$work"/core*
  t0=$(now); line=$("$bin" capture --pid "$pid" --output "$work/core.ours"); t1=$(now)
  ours+=("$(sub "$t1" "$t0")")
  stops+=("$(echo "$line" | sed -E 's/.*stopped ([0-9.]+) ms.*/\1/')")
  size_ours=$(stat -c %s "$work/core.ours")
  rm -f "$work/core.ours"; sync
  t0=$(now); line=$("$bin" capture --pid "$pid" --output "$work/core.ours.zst"); t1=$(now)
  zst+=("$(sub "$t1" "$t0")")
  zst_stops+=("$(echo "$line" | sed -E 's/.*stopped ([0-9.]+) ms.*/\1/')")
  size_zst=$(stat -c %s "$work/core.ours.zst")
  rm -f "$work/core.ours.zst"; sync
  t0=$(now); gcore -o "$work/core.gcore" "$pid" > /dev/null 2>&1; t1=$(now)
  theirs+=("$(sub "$t1" "$t0")")
  size_gcore=$(stat -c %s "$work/core.gcore.$pid")
  rm -f "$work/core.gcore.$pid"
  echo "round $r: leakhunt ${ours[-1]} s (stopped ${stops[-1]} ms), .zst ${zst[-1]} s (stopped ${zst_stops[-1]} ms), gcore ${theirs[-1]} s" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_ours=$(median "${ours[@]}"); m_theirs=$(median "${theirs[@]}"); m_stop=$(median "${stops[@]}")
m_zst=$(median "${zst[@]}"); m_zst_stop=$(median "${zst_stops[@]}")
ratio=$(div "$m_theirs" "$m_ours")
ratio_zst=$(div "$m_theirs" "$m_zst")
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
table=$(cat <<MD
## capture

\`bench/capture.sh\`: one process with $((rss_kib / 1024)) MiB resident (${mib} MiB of touched heap, 4 threads),
captured by \`leakhunt-analyzer capture\` and by gdb's \`gcore\` in the same run, $rounds rounds, median wall time
(including process start-up). Machine: $(nproc) cores ($cpu), $(uname -r), $(date -u +%Y-%m-%d).

| tool | wall time | target stopped | core size | vs gcore |
| --- | ---: | ---: | ---: | ---: |
| \`leakhunt-analyzer capture\` | ${m_ours} s | ${m_stop} ms | $((size_ours / 1048576)) MiB | ${ratio}× faster |
| \`leakhunt-analyzer capture\` (.zst) | ${m_zst} s | ${m_zst_stop} ms | $((size_zst / 1048576)) MiB | ${ratio_zst}× faster |
| \`gcore\` (gdb $(gdb --version | head -1 | awk '{print $NF}')) | ${m_theirs} s | ≈ wall time | $((size_gcore / 1048576)) MiB | 1× |

Our core also holds the read-only pages of the ELF objects (self-contained); gcore's does not.
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
