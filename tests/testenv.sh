#!/usr/bin/env bash
# Starts and stops the test environment: kube-testenv (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler in one process) and one node: a real one (TESTENV_NODE=real: containerd, runc and a
# kubelet, tests/node/node.sh) or the simulator (TESTENV_NODE=nodesim, the default for now).
#
#   tests/testenv.sh up DIR     start both in the background, state under DIR; prints `export KUBECONFIG=...`
#   tests/testenv.sh down DIR   stop both (SIGTERM, then SIGKILL), remove every process and cgroup left
#
# Needs kube-testenv and kubectl on PATH (make tools), root and a writable memory cgroup hierarchy; for
# nodesim NODESIM_BIN (make nodesim), for a real node its binaries and images (make node-tools
# node-images). A missing prerequisite is an error, never a skip. DIR/cgroup-root names the node's
# memory cgroup directory, under which pods' cgroups are.
TESTENV_NODE=${TESTENV_NODE:-nodesim}
set -euo pipefail
# shellcheck source=tests/procs.sh
. "$(dirname "$0")/procs.sh"

die() { echo "testenv: $*" >&2; exit 1; }

cgroup_default_root() {
  local id=$1
  if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    echo "/sys/fs/cgroup/memory/leakhunt-nodesim-$id"
  else
    echo "/sys/fs/cgroup/leakhunt-nodesim-$id"
  fi
}

check_prereqs() {
  command -v kube-testenv >/dev/null || die "kube-testenv not on PATH (run: make tools)"
  command -v kubectl >/dev/null || die "kubectl not on PATH (run: make tools)"
  [ -x "${NODESIM_BIN:-}" ] || die "NODESIM_BIN=${NODESIM_BIN:-} is not an executable (run: make nodesim)"
  [ "$(id -u)" = 0 ] || die "nodesim must run as root (it creates memory cgroups and mount namespaces)"
  local parent
  parent=$(dirname "$1")
  if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] || grep -qw memory "$parent/cgroup.controllers" 2>/dev/null; then
    local probe="$parent/leakhunt-probe-$$"
    mkdir "$probe" 2>/dev/null || die "cannot create a memory cgroup under $parent (cgroup permission)"
    rmdir "$probe"
  else
    die "no writable memory cgroup controller (neither cgroup v1 /sys/fs/cgroup/memory nor v2 with memory)"
  fi
}

# Kills everything in a cgroup subtree and removes it (for when nodesim could not clean up itself).
sweep_cgroups() {
  local root=$1
  [ -d "$root" ] || return 0
  local d
  for _ in 1 2 3 4 5; do
    while IFS= read -r d; do
      xargs -r kill -9 <"$d/cgroup.procs" 2>/dev/null || true
      rmdir "$d" 2>/dev/null || true
    done < <(find "$root" -depth -type d 2>/dev/null)
    [ -d "$root" ] || return 0
    sleep 0.5
  done
  echo "testenv: warning: could not remove cgroup $root" >&2
}

up() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local id
  id=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
  local cgroot=${NODESIM_CGROUP_ROOT:-$(cgroup_default_root "$id")}
  if [ "$TESTENV_NODE" = real ] || [ "$TESTENV_NODE" = vm ]; then
    command -v kube-testenv >/dev/null || die "kube-testenv not on PATH (run: make tools)"
    command -v kubectl >/dev/null || die "kubectl not on PATH (run: make tools)"
  else
    check_prereqs "$cgroot"
  fi
  for p in kube-testenv nodesim; do
    if [ -f "$dir/$p.pid" ] && kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null; then
      die "$p is already running for $dir (tests/testenv.sh down $dir)"
    fi
  done
  echo "$cgroot" >"$dir/cgroup-root"
  local kubeconfig=$dir/admin.kubeconfig
  rm -f "$dir/ready" "$kubeconfig"
  local t0
  t0=$(date +%s.%N)

  setsid kube-testenv -test.run '^TestKubeTestenv$' -test.timeout 0 \
    -data-dir "$dir" -kubeconfig "$kubeconfig" -ready-file "$dir/ready" \
    >"$dir/kube-testenv.log" 2>&1 </dev/null &
  echo $! >"$dir/kube-testenv.pid"
  for _ in $(seq 1 900); do
    [ -f "$dir/ready" ] && break
    kill -0 "$(cat "$dir/kube-testenv.pid")" 2>/dev/null || { tail -40 "$dir/kube-testenv.log" >&2; die "kube-testenv exited before it was ready (log: $dir/kube-testenv.log)"; }
    sleep 0.2
  done
  [ -f "$dir/ready" ] || { tail -40 "$dir/kube-testenv.log" >&2; die "kube-testenv not ready after 180s"; }
  local t1
  t1=$(date +%s.%N)
  echo "$TESTENV_NODE" >"$dir/node-kind"
  if [ "$TESTENV_NODE" = vm ]; then
    "$(dirname "$0")/node/vm.sh" up "$dir" "$kubeconfig" || die "the VM node did not start (logs: $dir/vm/logs)"
    awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" \
      'BEGIN { printf "testenv: control plane ready in %.1fs, VM node Ready in %.1fs (total %.1fs)\n", b-a, c-b, c-a }'
    echo "testenv: logs in $dir/kube-testenv.log and $dir/vm/logs"
    echo "export KUBECONFIG=$kubeconfig"
    return
  fi
  if [ "$TESTENV_NODE" = real ]; then
    "$(dirname "$0")/node/node.sh" up "$dir" "$kubeconfig" || die "the node did not start (logs: $dir/node/logs)"
    cp "$dir/node/memory-cgroup" "$dir/cgroup-root"
    awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" \
      'BEGIN { printf "testenv: control plane ready in %.1fs, node Ready in %.1fs (total %.1fs)\n", b-a, c-b, c-a }'
    echo "testenv: logs in $dir/kube-testenv.log and $dir/node/logs"
    echo "export KUBECONFIG=$kubeconfig"
    return
  fi

  # The image map of this tree, not the one baked into the binary: a shared build cache may hold a
  # nodesim built from another clone.
  setsid "$NODESIM_BIN" --kubeconfig "$kubeconfig" --node-name "${NODESIM_NODE:-nodesim}" \
    --images "$(cd "$(dirname "$0")" && pwd)/nodesim/images.yaml" \
    --cgroup-root "$cgroot" --state-dir "$dir/node" ${NODESIM_ARGS:-} \
    >"$dir/nodesim.log" 2>&1 </dev/null &
  echo $! >"$dir/nodesim.pid"
  KUBECONFIG=$kubeconfig
  export KUBECONFIG
  for _ in $(seq 1 300); do
    grep -q '^nodesim: ready' "$dir/nodesim.log" 2>/dev/null && break
    kill -0 "$(cat "$dir/nodesim.pid")" 2>/dev/null || { grep -v "^ *[0-9]*: \|^ *at " "$dir/nodesim.log" | tail -40 >&2; die "nodesim exited (log: $dir/nodesim.log)"; }
    sleep 0.2
  done
  kubectl wait --for=condition=Ready "node/${NODESIM_NODE:-nodesim}" --timeout=60s >/dev/null \
    || { grep -v "^ *[0-9]*: \|^ *at " "$dir/nodesim.log" | tail -40 >&2; die "node not Ready"; }
  local t2
  t2=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v c="$t2" \
    'BEGIN { printf "testenv: control plane ready in %.1fs, node Ready in %.1fs (total %.1fs)\n", b-a, c-b, c-a }' 
  echo "testenv: logs in $dir/{kube-testenv,nodesim}.log, container logs under $dir/node/pods"
  echo "export KUBECONFIG=$kubeconfig"
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  local kind
  kind=$(cat "$dir/node-kind" 2>/dev/null || true)
  if [ "$kind" = real ]; then
    "$(dirname "$0")/node/node.sh" down "$dir" || true
  elif [ "$kind" = vm ]; then
    "$(dirname "$0")/node/vm.sh" down "$dir" || true
  else
    stop_pid "$dir/nodesim.pid" nodesim
    if [ -f "$dir/cgroup-root" ]; then
      sweep_cgroups "$(cat "$dir/cgroup-root")"
    fi
  fi
  stop_pid "$dir/kube-testenv.pid" kube-testenv
  echo "testenv: stopped ($dir)"
}

case "${1:-}" in
  up) up "${2:?usage: testenv.sh up DIR}" ;;
  down) down "${2:?usage: testenv.sh down DIR}" ;;
  *) die "usage: testenv.sh up|down DIR" ;;
esac
