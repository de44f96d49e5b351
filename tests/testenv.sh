#!/usr/bin/env bash
# Starts and stops the test environment: kube-testenv (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler in one process) and one real node: on this machine (TESTENV_NODE=real, the default:
# containerd, runc and a kubelet, tests/node/node.sh) or in a cgroup v2 VM (TESTENV_NODE=vm,
# tests/node/vm.sh).
#
#   tests/testenv.sh up DIR     start both in the background, state under DIR; prints `export KUBECONFIG=...`
#   tests/testenv.sh down DIR   stop both (SIGTERM, then SIGKILL), remove every process, cgroup, mount and
#                               network object the node made
#
# Needs kube-testenv and kubectl on PATH (make tools), root, and the node's binaries and images (make
# node-tools node-images). A missing prerequisite is an error, never a skip. DIR/cgroup-root names the
# node's memory cgroup directory, under which pods' cgroups are (the host node's).
TESTENV_NODE=${TESTENV_NODE:-real}
set -euo pipefail
# shellcheck source=tests/procs.sh
. "$(dirname "$0")/procs.sh"

die() { echo "testenv: $*" >&2; exit 1; }

up() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  case "$TESTENV_NODE" in
    real | vm) ;;
    *) die "TESTENV_NODE=$TESTENV_NODE: the node is real (this machine) or vm (cgroup v2 in a VM)" ;;
  esac
  command -v kube-testenv >/dev/null || die "kube-testenv not on PATH (run: make tools)"
  command -v kubectl >/dev/null || die "kubectl not on PATH (run: make tools)"
  if [ -f "$dir/kube-testenv.pid" ] && kill -0 "$(cat "$dir/kube-testenv.pid")" 2>/dev/null; then
    die "kube-testenv is already running for $dir (tests/testenv.sh down $dir)"
  fi
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
  "$(dirname "$0")/node/node.sh" up "$dir" "$kubeconfig" || die "the node did not start (logs: $dir/node/logs)"
  cp "$dir/node/memory-cgroup" "$dir/cgroup-root"
  awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" \
    'BEGIN { printf "testenv: control plane ready in %.1fs, node Ready in %.1fs (total %.1fs)\n", b-a, c-b, c-a }'
  echo "testenv: logs in $dir/kube-testenv.log and $dir/node/logs"
  echo "export KUBECONFIG=$kubeconfig"
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  local kind
  kind=$(cat "$dir/node-kind" 2>/dev/null || true)
  # Both: a state directory of an older run may not say which node it had.
  [ "$kind" = vm ] || "$(dirname "$0")/node/node.sh" down "$dir" || true
  [ "$kind" = real ] || "$(dirname "$0")/node/vm.sh" down "$dir" || true
  stop_pid "$dir/kube-testenv.pid" kube-testenv
  echo "testenv: stopped ($dir)"
}

case "${1:-}" in
  up) up "${2:?usage: testenv.sh up DIR}" ;;
  down) down "${2:?usage: testenv.sh down DIR}" ;;
  *) die "usage: testenv.sh up|down DIR" ;;
esac
