#!/usr/bin/env bash
# Smoke test of the cgroup v2 node (tests/node/vm.sh): a Debian guest under QEMU, with containerd, runc
# and the kubelet configured as kubeadm does (cgroupDriver systemd), joined to kube-testenv on this host.
# What only such a node shows, each read from inside the guest by a privileged pod:
#   1. the guest's kernel mounts cgroup v2 with the memory controller, and the node is Ready;
#   2. a container over its 64Mi limit is OOM-killed by the guest's kernel: OOMKilled, exit 137, restarts;
#   3. container cgroups sit under systemd slices (kubepods.slice/kubepods-burstable.slice/
#      kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope) with memory.max the limit and
#      memory.oom.group 1 (the kubelet's default on cgroup v2: an OOM kill takes the whole container);
#   4. kubectl logs and exec reach the guest's kubelet.
# Everything it starts is stopped on success, failure or Ctrl-C. Prints "vm-smoke: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
DIR=$(mktemp -d /tmp/leakhunt-vm.XXXXXX)
NS=vm
SUITE=vm-smoke
# shellcheck source=tests/lib.sh
. tests/lib.sh
export TESTENV_NODE=vm
PY_IMAGE=leakhunt.local/python:3-flask
BB_IMAGE=leakhunt.local/busybox:1

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "--- diagnostics ---"
    kubectl get nodes,pods -A -o wide 2>&1 | tail -20
    echo "--- guest console (tail) ---"; tail -40 "$DIR/vm/logs/console.log" 2>/dev/null
    echo "--- kube-testenv.log (errors) ---"; grep -E '^E[0-9]{4}' "$DIR/kube-testenv.log" 2>/dev/null | tail -10
  fi
  tests/testenv.sh down "$DIR" || true
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "vm-smoke: interrupted" >&2; exit 130' INT TERM

for tool in kube-testenv kubectl qemu-system-x86_64 socat mkfs.ext4 python3; do
  command -v "$tool" >/dev/null || fail_now "missing prerequisite: $tool (run make tools / .ci/install)"
done

out=$(tests/testenv.sh up "$DIR") || fail_now "environment did not start"
echo "$out"
export KUBECONFIG=$DIR/admin.kubeconfig
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
kubectl create namespace $NS >/dev/null
wait_for "default ServiceAccount in $NS" 60 kubectl -n $NS get serviceaccount default || fail_now "no default ServiceAccount"

# A privileged pod with the guest's cgroup tree, to read what the kubelet and runc wrote there.
kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: inspect}
spec:
  hostPID: true
  containers:
    - name: inspect
      image: $BB_IMAGE
      imagePullPolicy: Never
      command: ["sleep", "3600"]
      securityContext: {privileged: true}
      volumeMounts:
        - {name: cgroup, mountPath: /host-cgroup, readOnly: true}
  volumes:
    - name: cgroup
      hostPath: {path: /sys/fs/cgroup}
YAML
guest() { kubectl -n $NS exec inspect -- "$@"; }

check_v2() {
  kubectl -n $NS wait --for=condition=Ready pod/inspect --timeout=300s >/dev/null || return 1
  local fs controllers kernel
  # The guest's own mount table (hostPID: PID 1 is the guest's systemd).
  fs=$(guest awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/1/mounts) || return 1
  controllers=$(guest cat /host-cgroup/cgroup.controllers) || return 1
  kernel=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kernelVersion} {.status.nodeInfo.containerRuntimeVersion} kubelet {.status.nodeInfo.kubeletVersion}')
  echo "  node $NODE: $kernel; /sys/fs/cgroup is $fs; controllers: $controllers"
  [ "$fs" = cgroup2 ] || return 1
  case " $controllers " in *" memory "*) ;; *) return 1 ;; esac
}
check "cgroup v2 with the memory controller in the guest" check_v2

# --- OOM kill -----------------------------------------------------------------------------------------
hog_deployment "$PY_IMAGE" | kubectl -n $NS apply -f - >/dev/null
hog_pod() { kubectl -n $NS get pod -l app=hog -o jsonpath='{.items[0].metadata.name}'; }
restarts() { kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
restarts_at_least() { [ "$(restarts 2>/dev/null || echo 0)" -ge "$1" ]; }

check_oom() {
  wait_for "first OOM kill and restart" 300 restarts_at_least 1 || return 1
  local reason code first
  reason=$(kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].lastState.terminated.reason}')
  code=$(kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
  [ "$reason" = OOMKilled ] && [ "$code" = 137 ] || { echo "  lastState.terminated: reason=$reason exitCode=$code"; return 1; }
  first=$(restarts)
  wait_for "restart count to grow past $first" 300 restarts_at_least $((first + 1)) || return 1
  echo "  OOMKilled (exit 137) by the guest's kernel; restartCount $first -> $(restarts)"
}
check "a container over its limit is OOM-killed and restarted" check_oom

# --- the systemd cgroup layout --------------------------------------------------------------------------
check_layout() {
  kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
    - name: sleeper
      image: $BB_IMAGE
      imagePullPolicy: Never
      command: ["sh", "-c", "echo sleeper started; exec sleep 3600"]
      resources:
        requests: {memory: 16Mi}
        limits: {memory: 48Mi}
YAML
  kubectl -n $NS wait --for=condition=Ready pod/sleeper --timeout=300s >/dev/null || return 1
  local uid id scope max group
  uid=$(kubectl -n $NS get pod sleeper -o jsonpath='{.metadata.uid}')
  id=$(kubectl -n $NS get pod sleeper -o jsonpath='{.status.containerStatuses[0].containerID}')
  id=${id#containerd://}
  scope=kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid//-/_}.slice/cri-containerd-$id.scope
  max=$(guest cat "/host-cgroup/$scope/memory.max") || { echo "  no $scope"; guest find /host-cgroup/kubepods.slice -maxdepth 3 -name '*.slice' | head; return 1; }
  group=$(guest cat "/host-cgroup/$scope/memory.oom.group") || return 1
  echo "  ${scope%%/cri-*}/cri-containerd-${id:0:12}….scope: memory.max $max, memory.oom.group $group"
  [ "$max" = $((48 << 20)) ] && [ "$group" = 1 ]
}
check "container cgroups under systemd slices, memory.oom.group 1" check_layout

check_logs_exec() {
  kubectl -n $NS logs sleeper | grep -q '^sleeper started$' || { echo "  logs: $(kubectl -n $NS logs sleeper 2>&1 | tail -3)"; return 1; }
  local pid1
  pid1=$(kubectl -n $NS exec sleeper -- cat /proc/1/cmdline | tr '\0' ' ') || return 1
  echo "  logs and exec reach the guest (PID 1 in the container: $pid1)"
  case "$pid1" in "sleep 3600 ") ;; *) return 1 ;; esac
}
check "kubectl logs and exec reach the guest's kubelet" check_logs_exec

summary
