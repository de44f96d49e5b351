#!/usr/bin/env bash
# Benchmark of the cluster side (not a test: no pass/fail on timing), against a real kube-apiserver and
# a real node (kubelet, containerd, runc; tests/testenv.sh), with the operator and the agent run as local
# processes on the host:
#   1. the kernel's OOM kill → the pod status (kubelet, containerd) → the LeakReport's status.oomKills
#      updated (the operator), first 3 kills of a 64Mi Python hog; median and max       goal ≤ 2 s
#   2. operator memory (VmRSS, VmHWM) with 5,000 pods in the cluster: one operator started after they
#      exist (initial list), one running while they are created; at the end of the list and 30 s later
#                                                                                        goal ≤ 64 MiB
#   3. agent CPU with 100 containers sampled every second, over 60 s, against a shell loop that `cat`s
#      the same 100 memory.usage_in_bytes files once a second (and a Python loop that reads them)
#                                                                                        goal ≤ 2 %
# The near-limit → analysed report timings need the whole chart: bench/e2e-timings.sh reads them from the
# LeakReport the e2e test leaves.
#
#   bench/operator.sh [RESULTS_FILE]      prints a Markdown table; appends it to RESULTS_FILE if given
#
# Uses already-built binaries (no cargo here): LEAKHUNT_BIN (default /tmp/bench-leakhunt, else the release
# build); kube-testenv and kubectl from ~/.cache/leakhunt/tools/bin (make tools), the node's programs and
# images (make node-tools node-images). Root, like the test environment. Knobs: BENCH_PODS (5000),
# BENCH_SLEEPERS (100), BENCH_WINDOW (60 s), BENCH_KILLS (3), BENCH_KEEP=1 keeps the state directory.
# Everything started is stopped on exit, failure or Ctrl-C. About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=bench
# shellcheck source=tests/lib.sh
. tests/lib.sh   # hog_deployment; this script's own wait_for below replaces lib's
ROOT=$(pwd)
T_START=$SECONDS

RESULTS=${1:-}
PODS=${BENCH_PODS:-5000}
SLEEPERS=${BENCH_SLEEPERS:-100}
WINDOW=${BENCH_WINDOW:-60}
KILLS=${BENCH_KILLS:-3}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/leakhunt/target}/release
pick() { if [ -x "$1" ]; then echo "$1"; else echo "$2"; fi; }
LEAKHUNT_BIN=${LEAKHUNT_BIN:-$(pick /tmp/bench-leakhunt "$TARGET/leakhunt")}
export NODE_IMAGES=${NODE_IMAGES:-$HOME/.cache/leakhunt/images/oci}
export NODE_BIN=${NODE_BIN:-$HOME/.cache/leakhunt/tools/node}
PY_IMAGE=leakhunt.local/python:3-flask
BB_IMAGE=leakhunt.local/busybox:1
[ -d "$HOME/.cache/leakhunt/tools/bin" ] && PATH=$HOME/.cache/leakhunt/tools/bin:$PATH

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[%3ds] %s\n' $((SECONDS - T_START)) "$*" >&2; }

# --- prerequisites: a missing one is an error ----------------------------------------------------------
for tool in kube-testenv kubectl python3 curl getconf setsid awk find; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (kube-testenv/kubectl: make tools, then PATH=~/.cache/leakhunt/tools/bin:\$PATH)"
done
[ -x "$LEAKHUNT_BIN" ] || die "LEAKHUNT_BIN=$LEAKHUNT_BIN is not an executable (cargo build --release -p leakhunt-operator, then copy it)"
[ -f "$NODE_IMAGES/python.tar" ] || die "no node images in $NODE_IMAGES (make node-tools node-images)"
[ "$(id -u)" = 0 ] || die "must run as root (the node makes cgroups, a bridge, an iptables rule)"
[ -z "$RESULTS" ] || touch "$RESULTS" || die "cannot write the results file $RESULTS"
for n in "$PODS" "$SLEEPERS" "$WINDOW" "$KILLS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_* must be positive integers (got $n)"
done
HZ=$(getconf CLK_TCK)

DIR=$(mktemp -d /tmp/leakhunt-bench.XXXXXX)
PIDS=()      # processes this script started (besides the test environment), stopped on exit
OK=0

stop() {     # stop PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

forget() {   # forget PID: it has ended and was reaped; its number may be reused
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop "$pid"; done
  if [ "$OK" != 1 ]; then
    echo "bench: failed (exit $rc); logs in $DIR (operator-*.log, agent.log, node/logs, kube-testenv.log)" >&2
  fi
  tests/testenv.sh down "$DIR" >/dev/null 2>&1 || echo "bench: testenv down failed for $DIR" >&2
  if [ "$OK" = 1 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2; exit }'; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }   # utime + stime, all threads
now() { date +%s.%N; }
alive() { kill -0 "$1" 2>/dev/null || { tail -20 "$2" >&2; die "process $1 exited (log: $2)"; }; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls every 0.5 s until COMMAND succeeds.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt "$end" ] || die "timed out after ${secs}s waiting for: $what"
    sleep 0.5
  done
}

metric_at_least() { local v; v=$(metric "$1" "$2"); [ -n "$v" ] && awk -v v="$v" -v m="$3" 'BEGIN { exit !(v >= m) }'; }

new_namespace() {
  kubectl create namespace "$1" >/dev/null
  wait_for "default ServiceAccount in $1" 60 kubectl -n "$1" get serviceaccount default
}

# start_operator NAME PORT: prints its pid.
start_operator() {
  setsid "$LEAKHUNT_BIN" operator --namespace leakhunt --leader-election=false --metrics-addr "127.0.0.1:$2" \
    >"$DIR/operator-$1.log" 2>&1 </dev/null &
  echo $!
}

LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
log "state in $DIR; leakhunt=$LEAKHUNT_BIN; load average $LOAD_BEFORE"
# Room on the node for the sleepers, the hog and the sandboxes' addresses (the pod range is a /24).
TESTENV_NODE=real NODE_MAX_PODS=$((SLEEPERS + 10)) tests/testenv.sh up "$DIR" >"$DIR/testenv-up.out" 2>&1 || { cat "$DIR/testenv-up.out" >&2; die "test environment did not start"; }
export KUBECONFIG=$DIR/admin.kubeconfig
log "$(grep '^testenv: control plane' "$DIR/testenv-up.out")"
kubectl apply -f crds/leakhunt.dev.yaml >/dev/null
kubectl wait --for=condition=Established crd/leakreports.leakhunt.dev crd/leakwatches.leakhunt.dev --timeout=60s >/dev/null
new_namespace leakhunt

# --- 1. OOMKilled → LeakReport ----------------------------------------------------------------------------
OP_A_PORT=$(free_port)
OP_A=$(start_operator a "$OP_A_PORT")
PIDS+=("$OP_A")
wait_for "operator /readyz" 60 curl -sf "http://127.0.0.1:$OP_A_PORT/readyz"
alive "$OP_A" "$DIR/operator-a.log"
new_namespace bench-oom
log "1. OOM kill → LeakReport: watching the hog's pod and deployment-hog for $KILLS kills"
python3 bench/oom_latency.py bench-oom app=hog deployment-hog "$KILLS" 240 >"$DIR/oom.out" 2>&1 &
WATCHER=$!
PIDS+=("$WATCHER")
sleep 2   # both watches connected before the first kill can happen
hog_deployment $PY_IMAGE | kubectl -n bench-oom apply -f - >/dev/null
wait "$WATCHER" || { cat "$DIR/oom.out" >&2; die "OOM latency: no result (operator log: $DIR/operator-a.log)"; }
forget "$WATCHER"
sed 's/^/  /' "$DIR/oom.out" | grep -v RESULT >&2
read -r _ OOM_MEDIAN OOM_MAX OOM_ALL KERNEL_STATUS KERNEL_REPORT < <(grep '^RESULT' "$DIR/oom.out")
kubectl delete namespace bench-oom --wait=false >/dev/null

# --- 3. agent CPU with 100 containers ---------------------------------------------------------------------
log "3. agent CPU: starting $SLEEPERS sleeping containers (32Mi limit each)"
new_namespace bench-agent
kubectl -n bench-agent apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepers}
spec:
  replicas: $SLEEPERS
  selector: {matchLabels: {app: sleepers}}
  template:
    metadata: {labels: {app: sleepers}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: sleep
          image: $BB_IMAGE
          command: ["sleep", "3600"]
          resources:
            limits: {memory: 32Mi}
YAML
kubectl -n bench-agent rollout status deployment/sleepers --timeout=300s >/dev/null \
  || die "the $SLEEPERS sleepers did not all run (kubelet log: $DIR/node/logs/kubelet.log)"
CGROOT=$(cat "$DIR/cgroup-root")
# Container cgroups (ROOT/kubepods[/QOS]/pod<uid>/<id>) of the sleepers' containers (not their pods'
# sandboxes, which the agent does not sample either).
kubectl -n bench-agent get pods -l app=sleepers \
  -o jsonpath='{range .items[*]}{.status.containerStatuses[0].containerID}{"\n"}{end}' | sed 's|^.*://|/|; s|$|/|' >"$DIR/sleeper-ids"
find "$CGROOT/kubepods" -mindepth 3 -maxdepth 4 -path '*/pod*/*/memory.usage_in_bytes' | grep -F -f "$DIR/sleeper-ids" >"$DIR/usage-files" || true
NFILES=$(wc -l <"$DIR/usage-files")
[ "$NFILES" -ge "$SLEEPERS" ] || die "found $NFILES container cgroups of the sleepers under $CGROOT, want $SLEEPERS"

AGENT_PORT=$(free_port)
mkdir -p "$DIR/snapshots"
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
# The host's cgroup tree, as the chart mounts it: the agent finds the kubelet's pods below it.
setsid "$LEAKHUNT_BIN" agent --node-name "$NODE" --cgroup-root /sys/fs/cgroup --snapshot-dir "$DIR/snapshots" \
  --metrics-addr "127.0.0.1:$AGENT_PORT" --interval 1s >"$DIR/agent.log" 2>&1 </dev/null &
AGENT=$!
PIDS+=("$AGENT")
wait_for "agent /readyz" 60 curl -sf "http://127.0.0.1:$AGENT_PORT/readyz"
wait_for "agent leakhunt_watched_pods >= $SLEEPERS" 60 metric_at_least "$AGENT_PORT" leakhunt_watched_pods "$SLEEPERS"
alive "$AGENT" "$DIR/agent.log"
AGENT_WATCHED=$(metric "$AGENT_PORT" leakhunt_watched_pods)
sleep 3   # past start-up
log "3. agent ready, watching $AGENT_WATCHED containers; measuring its CPU over ${WINDOW}s"
c0=$(cpu_ticks "$AGENT"); t0=$(now)
sleep "$WINDOW"
c1=$(cpu_ticks "$AGENT"); t1=$(now)
alive "$AGENT" "$DIR/agent.log"
AGENT_RSS=$(status_kib "$AGENT" VmRSS)
AGENT_HWM=$(status_kib "$AGENT" VmHWM)
AGENT_CPU=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", 100 * c / hz / (b - a) }')
AGENT_TICKS=$((c1 - c0))
stop "$AGENT"
forget "$AGENT"

# Floors, in the same run, one after the other at the same time (each is light): a shell loop that
# forks `cat` for each file once a second, and a Python loop that reads them without forking.
log "3. floors: shell cat loop and Python read loop over the same $NFILES files, ${WINDOW}s"
bash -c '
  mapfile -t files <"$1"
  end=$((${EPOCHREALTIME/./} + $2 * 1000000)); next=${EPOCHREALTIME/./}; passes=0
  t0=${EPOCHREALTIME/./}
  while [ "$next" -lt "$end" ]; do
    for f in "${files[@]}"; do cat "$f" >/dev/null; done
    passes=$((passes + 1)); next=$((next + 1000000)); now=${EPOCHREALTIME/./}
    if [ "$now" -lt "$next" ]; then
      printf -v d "%d.%06d" $(((next - now) / 1000000)) $(((next - now) % 1000000)); sleep "$d"
    fi
  done
  t1=${EPOCHREALTIME/./}
  read -r -a st </proc/$$/stat   # comm is "bash": no spaces; utime stime cutime cstime = fields 14-17
  echo "$((st[13] + st[14] + st[15] + st[16])) $(((t1 - t0) / 1000)) $passes"
' _ "$DIR/usage-files" "$WINDOW" >"$DIR/floor-shell.out" &
FLOOR_SH=$!
PIDS+=("$FLOOR_SH")
python3 - "$DIR/usage-files" "$WINDOW" >"$DIR/floor-python.out" <<'PY' &
import os, sys, time
files = open(sys.argv[1]).read().split()
window = float(sys.argv[2])
c0, t0 = os.times(), time.monotonic()
passes, nxt = 0, t0
while nxt < t0 + window:
    for f in files:
        with open(f, "rb") as fh:
            fh.read()
    passes += 1
    nxt += 1.0
    time.sleep(max(0.0, nxt - time.monotonic()))
c1, t1 = os.times(), time.monotonic()
print(f"{(c1.user + c1.system - c0.user - c0.system):.3f} {(t1 - t0) * 1000:.0f} {passes}")
PY
FLOOR_PY=$!
PIDS+=("$FLOOR_PY")
wait "$FLOOR_SH" || die "shell floor loop failed"
wait "$FLOOR_PY" || die "python floor loop failed"
forget "$FLOOR_SH"; forget "$FLOOR_PY"
read -r sh_ticks sh_ms sh_passes <"$DIR/floor-shell.out"
read -r py_cpu py_ms py_passes <"$DIR/floor-python.out"
SHELL_CPU=$(awk -v c="$sh_ticks" -v hz="$HZ" -v ms="$sh_ms" 'BEGIN { printf "%.2f", 100 * c / hz / (ms / 1000) }')
PY_CPU=$(awk -v c="$py_cpu" -v ms="$py_ms" 'BEGIN { printf "%.2f", 100 * c / (ms / 1000) }')
RATIO=$(awk -v a="$AGENT_CPU" -v s="$SHELL_CPU" 'BEGIN { if (s > 0) printf "%.2f", a / s; else print "n/a" }')
RATIO_PY=$(awk -v a="$AGENT_CPU" -v s="$PY_CPU" 'BEGIN { if (s > 0) printf "%.1f", a / s; else print "n/a" }')
kubectl delete namespace bench-agent --wait=false >/dev/null

# --- 2. operator memory with 5,000 pods ---------------------------------------------------------------------
# Pods carry a scheduling gate: they stay Pending, unscheduled, with no node to run them.
NS_COUNT=10
PER_NS=$(((PODS + NS_COUNT - 1) / NS_COUNT))
log "2. operator memory: creating $PODS gated pods in $NS_COUNT namespaces (operator a is running)"
OP_A_RSS0=$(status_kib "$OP_A" VmRSS)
for i in $(seq 0 $((NS_COUNT - 1))); do new_namespace "bench-p$i"; done
python3 - "$DIR" "$PODS" "$NS_COUNT" "$PER_NS" <<'PY'
import sys
d, total, nns, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
made = 0
for i in range(nns):
    with open(f"{d}/pods-{i}.yaml", "w") as f:
        for j in range(per):
            if made == total:
                break
            made += 1
            f.write(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: filler-{j:04d}, namespace: bench-p{i}, labels: {{app: filler}}}}
spec:
  schedulingGates: [{{name: bench.leakhunt.dev/hold}}]
  automountServiceAccountToken: false
  containers:
  - {{name: c, image: "leakhunt.local/busybox:1", command: [sleep, "3600"], resources: {{limits: {{memory: 32Mi}}}}}}
""")
PY
tc0=$(now)
CREATORS=()
for i in $(seq 0 $((NS_COUNT - 1))); do
  [ -s "$DIR/pods-$i.yaml" ] || continue
  kubectl create -f "$DIR/pods-$i.yaml" >/dev/null 2>"$DIR/create-$i.err" &
  CREATORS+=($!)
done
for pid in "${CREATORS[@]}"; do wait "$pid" || { cat "$DIR"/create-*.err >&2; die "creating pods failed"; }; done
tc1=$(now)
CREATED=$(kubectl get pods -A -l app=filler -o name | wc -l)
[ "$CREATED" -ge "$PODS" ] || die "only $CREATED of $PODS pods exist"
CREATE_S=$(awk -v a="$tc0" -v b="$tc1" 'BEGIN { printf "%.1f", b - a }')
log "2. $CREATED pods created in ${CREATE_S}s; starting operator b"
sleep 2
alive "$OP_A" "$DIR/operator-a.log"
OP_A_RSS1=$(status_kib "$OP_A" VmRSS); OP_A_HWM1=$(status_kib "$OP_A" VmHWM)

OP_B_PORT=$(free_port)
tb0=$(now)
OP_B=$(start_operator b "$OP_B_PORT")
PIDS+=("$OP_B")
wait_for "operator b leakhunt_watched_pods >= $PODS" 180 metric_at_least "$OP_B_PORT" leakhunt_watched_pods "$PODS"
tb1=$(now)
alive "$OP_B" "$DIR/operator-b.log"
OP_B_WATCHED=$(metric "$OP_B_PORT" leakhunt_watched_pods)
OP_B_LIST_S=$(awk -v a="$tb0" -v b="$tb1" 'BEGIN { printf "%.1f", b - a }')
OP_B_RSS1=$(status_kib "$OP_B" VmRSS); OP_B_HWM1=$(status_kib "$OP_B" VmHWM)
log "2. operator b: initial list of $OP_B_WATCHED pods done ${OP_B_LIST_S}s after start; waiting 30 s"
sleep 30
alive "$OP_A" "$DIR/operator-a.log"
alive "$OP_B" "$DIR/operator-b.log"
OP_A_RSS2=$(status_kib "$OP_A" VmRSS); OP_A_HWM2=$(status_kib "$OP_A" VmHWM)
OP_B_RSS2=$(status_kib "$OP_B" VmRSS); OP_B_HWM2=$(status_kib "$OP_B" VmHWM)
OP_B_ERRORS=$(curl -sf "http://127.0.0.1:$OP_B_PORT/metrics" | awk '$1 ~ /^leakhunt_reconcile_errors_total/ { s += $2 } END { print s + 0 }')

# --- table ------------------------------------------------------------------------------------------------
LOAD_AFTER=$(uptime | sed 's/.*load average: //')
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
TABLE=$(cat <<EOF
### bench/operator.sh — $(date -u '+%Y-%m-%d %H:%M UTC')

$(nproc) cores ($CPU_MODEL), $(free -g | awk '/^Mem:/ { print $2 }') GiB; load average $LOAD_BEFORE before, $LOAD_AFTER after; $(uname -r).
\`$LEAKHUNT_BIN\` ($(stat -c %y "$LEAKHUNT_BIN" | cut -d. -f1)).

| # | what | measured | goal |
| --- | --- | ---: | ---: |
| 1 | OOMKilled in pod status → LeakReport \`status.oomKills\`: the operator (first $KILLS kills; per kill: $OOM_ALL ms) | median **$OOM_MEDIAN ms**, max **$OOM_MAX ms** | ≤ 2000 ms |
| 1b | the kernel's kill → OOMKilled in the pod status: the kubelet and containerd (median) | $KERNEL_STATUS ms | |
| 1c | the kernel's kill → LeakReport updated, end to end (median) | **$KERNEL_REPORT ms** | |
| 2a | operator started with $CREATED pods in the cluster: initial list done after $OP_B_LIST_S s — VmRSS / VmHWM then | $(mib "$OP_B_RSS1") / $(mib "$OP_B_HWM1") MiB | ≤ 64 MiB |
| 2b | … 30 s later — VmRSS / VmHWM | **$(mib "$OP_B_RSS2") / $(mib "$OP_B_HWM2") MiB** | ≤ 64 MiB |
| 2c | operator running while the $CREATED pods were created ($CREATE_S s): VmRSS before $(mib "$OP_A_RSS0") MiB; after — VmRSS / VmHWM | $(mib "$OP_A_RSS1") / $(mib "$OP_A_HWM1") MiB | ≤ 64 MiB |
| 2d | … 30 s later — VmRSS / VmHWM | **$(mib "$OP_A_RSS2") / $(mib "$OP_A_HWM2") MiB** | ≤ 64 MiB |
| 3 | agent, $AGENT_WATCHED containers sampled every 1 s: CPU over $WINDOW s ($AGENT_TICKS ticks at $HZ Hz) | **$AGENT_CPU %** of one core | ≤ 2 % |
| 3b | agent memory — VmRSS / VmHWM | $(mib "$AGENT_RSS") / $(mib "$AGENT_HWM") MiB | |
| 3c | floor: shell loop forking \`cat\` on the $NFILES \`memory.usage_in_bytes\` once a second ($sh_passes passes) | $SHELL_CPU % | |
| 3d | agent / shell floor | ${RATIO}× | |
| 3e | floor: Python loop reading the same files, no fork ($py_passes passes) | $PY_CPU % | |
| 3f | agent / Python floor | ${RATIO_PY}× | |
EOF
)
echo "$TABLE"
if [ -n "$RESULTS" ]; then
  printf '\n%s\n' "$TABLE" >>"$RESULTS"
  log "appended to $RESULTS"
fi
[ "$OP_B_ERRORS" = 0 ] || log "note: operator b counted $OP_B_ERRORS reconcile errors (log: $DIR/operator-b.log)"
log "done in $((SECONDS - T_START))s"
OK=1
