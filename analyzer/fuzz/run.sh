#!/usr/bin/env bash
# Fuzz the analyzer: `core_reader` from the synthetic cores of make_seeds.py, `python_heap` with
# patches over a real CPython core (a tests/workloads/shapes.py process, taken by
# `leakhunt-analyzer capture` into seeds/python.core: self-contained, mode 0600). Each target runs FUZZ_SECONDS (default 120). cargo-fuzz is
# installed on first use; the nightly toolchain must exist. Crashes land in artifacts/<target>/:
# a core_reader input goes into analyzer/tests/fuzz-regressions/; a python_heap input replays with
# `cargo +nightly fuzz run python_heap FILE` against the same seed core.
# `hprof` cuts and patches a real heap dump (tests/workloads/Shapes.java on this host's JVM, dumped
# by jcmd into seeds/java.hprof); an input replays with `cargo +nightly fuzz run hprof FILE`.
# Usage: analyzer/fuzz/run.sh [TARGET ...]   (default: core_reader python_heap hprof)
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-120}
py=${PYTHON:-python3}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
rustup run nightly true 2>/dev/null || { echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }

python3 make_seeds.py corpus/core_reader >/dev/null
mkdir -p seeds corpus/python_heap
if [ ! -s seeds/python.core ]; then
  coproc W { exec "$py" ../../tests/workloads/shapes.py nested; }
  read -r _ <&"${W[0]}"
  echo "step 300" >&"${W[1]}"; read -r _ <&"${W[0]}"
  cargo build --release -q -p leakhunt-analyzer --bin leakhunt-analyzer --manifest-path ../Cargo.toml
  "${CARGO_TARGET_DIR:-../../target}/release/leakhunt-analyzer" capture --pid "$W_PID" -o seeds/python.core
  kill "$W_PID"; wait "$W_PID" 2>/dev/null || true
fi
export LEAKHUNT_FUZZ_SEED=$PWD/seeds/python.core
if [ ! -s seeds/java.hprof ]; then
  classes=$(mktemp -d)
  javac -d "$classes" ../../tests/workloads/Shapes.java
  coproc J { exec java -Xmx64m -XX:+UseSerialGC -cp "$classes" Shapes static-map; }
  read -r _ <&"${J[0]}"
  echo "step 300" >&"${J[1]}"; read -r _ <&"${J[0]}"
  jcmd "$J_PID" GC.heap_dump "$PWD/seeds/java.hprof" >/dev/null
  chmod 600 seeds/java.hprof
  kill "$J_PID"; wait "$J_PID" 2>/dev/null || true
  rm -rf "$classes"
fi
export LEAKHUNT_FUZZ_HPROF=$PWD/seeds/java.hprof
mkdir -p corpus/hprof
# Start python_heap from long inputs (patch sets of 8 to 64 words): libFuzzer grows short inputs
# slowly, and a walk of a real heap runs about 15 times a second.
[ -n "$(ls -A corpus/python_heap)" ] || python3 -c '
import os
for i in range(4):
    open("corpus/python_heap/random-%d" % i, "wb").write(os.urandom(12 * (8 << i)))'

for target in "${@:-core_reader python_heap hprof}"; do
  for t in $target; do
    echo "fuzz: $t for ${secs} s"
    # The walker is safe Rust: python_heap trades AddressSanitizer for four times the runs.
    build=() run=()
    [ "$t" = python_heap ] && build=(-s none) run=(-max_len=3072)
    [ "$t" = hprof ] && build=(-s none) run=(-max_len=2052)
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" -- -max_total_time="$secs" \
      "${run[@]}" -rss_limit_mb=4096 -timeout=30
  done
done
