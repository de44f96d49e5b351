#!/usr/bin/env bash
# Smoke test of the test environment against a real kube-apiserver and a real node (kubelet,
# containerd, runc; tests/node), running images built here (tests/node/images):
#   1. a Deployment whose Python container allocates past its 64Mi limit is OOM-killed by the kernel and
#      shows OOMKilled / exit 137 and a growing restart count;
#   2. a Job completes;
#   3. a DaemonSet pod runs, with downward-API env and a hostPath volume that reach the process;
#   4. a pod whose ServiceAccount has no RBAC rights gets 403 listing Secrets, one bound to a Role succeeds;
#   5. helm installs and uninstalls a tiny chart;
#   6. kubectl logs and exec; a readiness probe gates Ready; runAsUser is the process's uid on the host;
#      the container's processes have a PID namespace of their own.
# Everything it starts is stopped on success, failure or Ctrl-C. Prints "smoke: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DIR=$(mktemp -d /tmp/leakhunt-smoke.XXXXXX)
NS=smoke
SUITE=smoke
# shellcheck source=tests/lib.sh
. tests/lib.sh
export TESTENV_NODE=real
export NODE_IMAGES=${NODE_IMAGES:-$HOME/.cache/leakhunt/images/oci}
PY_IMAGE=leakhunt.local/python:3-flask
BB_IMAGE=leakhunt.local/busybox:1
KUBECTL_IMAGE=leakhunt.local/kubectl:v1.36.3

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "--- diagnostics ---"
    kubectl get nodes,pods,jobs,daemonsets,deployments -A -o wide 2>&1 | tail -40
    echo "--- kubelet.log (errors) ---"; grep -E '^E[0-9]{4}' "$DIR/node/logs/kubelet.log" 2>/dev/null | tail -15
    echo "--- containerd.log (errors) ---"; grep 'level=error' "$DIR/node/logs/containerd.log" 2>/dev/null | tail -10
    echo "--- kube-testenv.log (errors) ---"; grep -E '^E[0-9]{4}' "$DIR/kube-testenv.log" 2>/dev/null | tail -15
  fi
  tests/testenv.sh down "$DIR" || true
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "smoke: interrupted" >&2; exit 130' INT TERM

# Prerequisites fail loudly; nothing is skipped.
for tool in kube-testenv kubectl helm python3 sh; do
  command -v "$tool" >/dev/null || fail_now "missing prerequisite: $tool (run make tools / .ci/install)"
done
[ "$(kubectl version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["minor"])')" -ge 36 ] \
  || fail_now "kubectl on PATH is not the one built by make tools: $(command -v kubectl)"

out=$(tests/testenv.sh up "$DIR") || fail_now "environment did not start"
echo "$out"
export KUBECONFIG=$DIR/admin.kubeconfig
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')


kubectl create namespace $NS >/dev/null
wait_for "default ServiceAccount in $NS" 60 kubectl -n $NS get serviceaccount default || fail_now "no default ServiceAccount"

# --- 1. OOM kill --------------------------------------------------------------------------------------
hog_deployment "$PY_IMAGE" | kubectl -n $NS apply -f - >/dev/null

hog_pod() { kubectl -n $NS get pod -l app=hog -o jsonpath='{.items[0].metadata.name}'; }
restarts() { kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
restarts_at_least() { [ "$(restarts 2>/dev/null || echo 0)" -ge "$1" ]; }

check_oom() {
  wait_for "first OOM kill and restart" 90 restarts_at_least 1 || return 1
  local yaml first second
  yaml=$(kubectl -n $NS get pod "$(hog_pod)" -o yaml)
  echo "$yaml" | grep -q 'reason: OOMKilled' || { echo "  no OOMKilled in pod yaml"; echo "$yaml" | sed -n '/containerStatuses/,$p'; return 1; }
  echo "$yaml" | grep -q 'exitCode: 137' || { echo "  no exitCode 137"; return 1; }
  local reason code
  reason=$(kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].lastState.terminated.reason}')
  code=$(kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
  [ "$reason" = OOMKilled ] && [ "$code" = 137 ] || { echo "  lastState.terminated: reason=$reason exitCode=$code"; return 1; }
  first=$(restarts)
  wait_for "restart count to grow past $first" 90 restarts_at_least $((first + 1)) || return 1
  second=$(restarts)
  echo "  OOMKilled (exit 137); restartCount $first -> $second"
  # The kernel's own counter agrees, in a cgroup laid out like the kubelet's.
  local uid cg
  uid=$(kubectl -n $NS get pod "$(hog_pod)" -o jsonpath='{.metadata.uid}')
  cg="$(cat "$DIR/cgroup-root")/kubepods/burstable/pod$uid"
  [ -d "$cg" ] || { echo "  pod cgroup $cg missing"; return 1; }
  echo "  pod cgroup: $cg"
}
check "OOMKilled Deployment restarts with growing count" check_oom

# --- 2. Job -------------------------------------------------------------------------------------------
check_job() {
  kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: once
          image: $BB_IMAGE
          imagePullPolicy: Never
          command: ["sh", "-c", "echo job ran; exit 0"]
YAML
  kubectl -n $NS wait --for=condition=complete job/once --timeout=90s \
    && [ "$(kubectl -n $NS get job once -o jsonpath='{.status.succeeded}')" = 1 ]
}
check "Job completes" check_job

# --- 3. DaemonSet with downward API and hostPath --------------------------------------------------------
HOSTPATH=$DIR/hostpath
check_daemonset() {
  kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - name: agent
          image: $PY_IMAGE
          imagePullPolicy: Never
          command: ["python3", "-c"]
          args:
            - |
              import os, time
              keys = ["NODE_NAME", "POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "MEM_LIMIT_MI"]
              with open("/var/lib/leakhunt-smoke/env", "w") as f:
                  f.write("".join(f"{k}={os.environ.get(k, '')}\n" for k in keys))
              time.sleep(3600)
          env:
            - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
            - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
            - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
            - {name: MEM_LIMIT_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
          resources:
            limits: {memory: 48Mi}
          volumeMounts:
            - {name: state, mountPath: /var/lib/leakhunt-smoke}
      volumes:
        - name: state
          hostPath: {path: $HOSTPATH, type: DirectoryOrCreate}
YAML
  kubectl -n $NS rollout status daemonset/agent --timeout=90s || return 1
  local pod uid ip
  pod=$(kubectl -n $NS get pod -l app=agent -o jsonpath='{.items[0].metadata.name}')
  uid=$(kubectl -n $NS get pod "$pod" -o jsonpath='{.metadata.uid}')
  ip=$(kubectl -n $NS get pod "$pod" -o jsonpath='{.status.podIP}')
  [ "$(kubectl -n $NS get pod "$pod" -o jsonpath='{.status.phase}')" = Running ] || return 1
  wait_for "downward-API env in the hostPath volume" 30 test -s "$HOSTPATH/env" || return 1
  local want="NODE_NAME=$NODE
POD_NAME=$pod
POD_NAMESPACE=$NS
POD_UID=$uid
POD_IP=$ip
MEM_LIMIT_MI=48"
  [ "$(cat "$HOSTPATH/env")" = "$want" ] || { echo "  env file:"; cat "$HOSTPATH/env"; echo "  want:"; echo "$want"; return 1; }
  echo "  $pod Running on $NODE ($ip); downward API and hostPath reached the process"
}
check "DaemonSet pod runs (downward API, hostPath)" check_daemonset

# --- 4. RBAC through TokenRequest tokens ------------------------------------------------------------------
check_rbac() {
  kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: v1
kind: Secret
metadata: {name: s3cret}
stringData: {k: v}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-secrets}
subjects: [{kind: ServiceAccount, name: reader, namespace: smoke}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}
---
apiVersion: v1
kind: Pod
metadata: {name: as-nobody}
spec:
  serviceAccountName: nobody
  restartPolicy: Never
  containers:
    - {name: kubectl, image: "$KUBECTL_IMAGE", imagePullPolicy: Never, command: [kubectl, get, secrets]}
---
apiVersion: v1
kind: Pod
metadata: {name: as-reader}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
    - {name: kubectl, image: "$KUBECTL_IMAGE", imagePullPolicy: Never, command: [kubectl, get, secrets]}
YAML
  phase() { kubectl -n $NS get pod "$1" -o jsonpath='{.status.phase}'; }
  finished() { case "$(phase "$1")" in Succeeded|Failed) return 0 ;; *) return 1 ;; esac; }
  wait_for "as-nobody to finish" 60 finished as-nobody || return 1
  wait_for "as-reader to finish" 60 finished as-reader || return 1
  local nobody_log reader_log
  nobody_log=$(kubectl -n $NS logs as-nobody)
  reader_log=$(kubectl -n $NS logs as-reader)
  echo "  as-nobody: $(phase as-nobody): $(echo "$nobody_log" | head -1)"
  echo "  as-reader: $(phase as-reader): $(echo "$reader_log" | grep s3cret)"
  [ "$(phase as-nobody)" = Failed ] && echo "$nobody_log" | grep -q 'Forbidden.*system:serviceaccount:smoke:nobody.*cannot list resource "secrets"' || return 1
  [ "$(phase as-reader)" = Succeeded ] && echo "$reader_log" | grep -q s3cret || return 1
  # The same answer from the authorizer, asked directly.
  [ "$(kubectl auth can-i list secrets -n $NS --as=system:serviceaccount:$NS:nobody)" = no ] || return 1
  [ "$(kubectl auth can-i list secrets -n $NS --as=system:serviceaccount:$NS:reader)" = yes ] || return 1
}
check "RBAC: 403 without a Role, allowed with one" check_rbac

# --- 5. helm ------------------------------------------------------------------------------------------
check_helm() {
  helm install smoke-release tests/smoke/chart -n $NS --set greeting=hi-from-smoke \
    --set image=$BB_IMAGE --set imagePullPolicy=Never --wait --timeout 90s || return 1
  [ "$(kubectl -n $NS get configmap smoke-release-greeting -o jsonpath='{.data.greeting}')" = hi-from-smoke ] || return 1
  helm list -n $NS | grep -q '^smoke-release' || return 1
  helm uninstall smoke-release -n $NS --wait --timeout 90s || return 1
  wait_for "chart resources to be gone" 60 sh -c "! kubectl -n $NS get configmap smoke-release-greeting && [ -z \"\$(kubectl -n $NS get pods -l app.kubernetes.io/instance=smoke-release -o name)\" ]"
}
check "helm install / uninstall" check_helm

# --- 6. What only a real node does ----------------------------------------------------------------------
check_container() {
  kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  containers:
    - name: app
      image: $BB_IMAGE
      imagePullPolicy: Never
      command: ["sh", "-c", "echo started as \$(id -u); sleep 6; touch /tmp/ready; exec sleep 3600"]
      securityContext: {runAsUser: 65532, runAsNonRoot: true}
      readinessProbe:
        exec: {command: ["test", "-e", "/tmp/ready"]}
        periodSeconds: 1
YAML
  wait_for "probed to run" 60 sh -c "[ \"\$(kubectl -n $NS get pod probed -o jsonpath='{.status.phase}')\" = Running ]" || return 1
  # Running but not Ready until the probe's file exists.
  local ready
  ready=$(kubectl -n $NS get pod probed -o jsonpath='{.status.containerStatuses[0].ready}')
  [ "$ready" = false ] || { echo "  Ready before its probe passed ($ready)"; return 1; }
  kubectl -n $NS wait --for=condition=Ready pod/probed --timeout=60s >/dev/null || return 1
  echo "  readiness probe gated Ready"
  kubectl -n $NS logs probed | grep -q '^started as 65532$' || { echo "  logs: $(kubectl -n $NS logs probed)"; return 1; }
  [ "$(kubectl -n $NS exec probed -- id -u)" = 65532 ] || return 1
  echo "  kubectl logs and exec reach the container"
  # Its PID 1 is its own command, and on the host its processes run as 65532 in another PID namespace.
  local pid1 uid cg pid host_uid
  pid1=$(kubectl -n $NS exec probed -- cat /proc/1/cmdline | tr '\0' ' ')
  case "$pid1" in sleep*) ;; *) echo "  PID 1 in the container is '$pid1'"; return 1 ;; esac
  uid=$(kubectl -n $NS get pod probed -o jsonpath='{.metadata.uid}')
  cg=$(find "$(cat "$DIR/cgroup-root")/kubepods" -maxdepth 3 -type d -name "pod$uid" | head -1)
  [ -n "$cg" ] || { echo "  no cgroup for pod $uid"; return 1; }
  pid=""
  for p in $(cat "$cg"/*/cgroup.procs 2>/dev/null); do
    [ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" = "sleep 3600 " ] && pid=$p
  done
  [ -n "$pid" ] || { echo "  the container's process is not in $cg"; return 1; }
  host_uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  [ "$host_uid" = 65532 ] || { echo "  uid on the host: $host_uid"; return 1; }
  [ "$(readlink "/proc/$pid/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] || { echo "  shares the host's PID namespace"; return 1; }
  echo "  host pid $pid (uid $host_uid) is PID 1 of its own namespace"
  # No pod packet can leave the machine: the pod has no default route, only the pod range and the
  # API server's Service address (via the bridge, to the host's loopback).
  local routes
  routes=$(kubectl -n $NS exec probed -- route -n | awk 'NR > 2 {print $1 "/" $3}' | sort | tr '\n' ' ')
  case " $routes" in *" 0.0.0.0/0.0.0.0 "*) echo "  a default route in the pod: $routes"; return 1 ;; esac
  echo "  pod routes: $routes(no default route)"
}
check "logs, exec, readiness probe, runAsUser, PID namespace" check_container

summary
