#!/usr/bin/env bash
# Smoke test of the cgroup v2 node (tests/node/vm.sh): a Debian guest under QEMU, with containerd, runc
# and the kubelet configured as kubeadm does (cgroupDriver systemd), joined to kube-testenv on this host.
# What only such a node shows, each read from inside the guest by a privileged pod:
#   1. the guest's kernel mounts cgroup v2 with the memory controller, and the node is Ready;
#   2. a container over its 64Mi limit is OOM-killed by the guest's kernel: OOMKilled, exit 137, restarts;
#   3. container cgroups sit under systemd slices (kubepods.slice/kubepods-burstable.slice/
#      kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope) with memory.max the limit and
#      memory.oom.group 1 (the kubelet's default on cgroup v2: an OOM kill takes the whole container);
#   4. kubectl logs and exec reach the guest's kubelet;
# then leakhunt, installed from the chart with its image built from the Dockerfile:
#   5. operator and agent Ready on the guest, the agent finding pods under the systemd slices
#      without being told the cgroup driver;
#   6. a pre-fork server whose worker grows past the limit: the kernel kills the whole container
#      (memory.oom.group), the kill is counted once, and the report names the worker that grew;
#   7. with singleProcessOOMKill (the kubelet reconfigured): only the worker dies; when the main
#      process then exits 0, containerd says OOMKilled, and the one kill is counted once;
#   8. a leaking pod captured (A, B), its pair analysed by the analyzer Job on the guest, the report
#      naming the growing object and the process by its PID in the container;
#   9. this machine's node (cgroup v1, cgroupfs) joins: an agent on each node, a leak on each at
#      once, each pair taken and analysed by a Job on the node that holds it;
#  10. the guest rebooted during a hunt: the reports survive, the pending snapshot A is voided with
#      a reason, and the agent samples and hunts again on the new boot.
# Everything it starts is stopped on success, failure or Ctrl-C. Prints "vm-smoke: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
DIR=$(mktemp -d /tmp/leakhunt-vm.XXXXXX)
NS=vm
SUITE=vm-smoke
# shellcheck source=tests/lib.sh
. tests/lib.sh
export TESTENV_NODE=vm
# What the guest imports: the tests' workloads and leakhunt's own image.
export VM_IMAGES="pause busybox python leakhunt"
LH=leakhunt
PY_IMAGE=leakhunt.local/python:3-flask
BB_IMAGE=leakhunt.local/busybox:1

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "--- diagnostics ---"
    kubectl get nodes,pods -A -o wide 2>&1 | tail -20
    kubectl get leakreports -A -o yaml 2>&1 | grep -E 'message|phase|path' | tail -20
    kubectl -n $LH logs daemonset/leakhunt-agent --tail=30 2>&1
    echo "--- guest console (tail) ---"; tail -40 "$DIR/vm/logs/console.log" 2>/dev/null
    echo "--- kube-testenv.log (errors) ---"; grep -E '^E[0-9]{4}' "$DIR/kube-testenv.log" 2>/dev/null | tail -10
  fi
  tests/node/node.sh down "$DIR/host" || true
  tests/testenv.sh down "$DIR" || true
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "vm-smoke: interrupted" >&2; exit 130' INT TERM

for tool in kube-testenv kubectl helm qemu-system-x86_64 socat mkfs.ext4 python3; do
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

# After a failed check (tests/lib.sh): is the guest gone? QEMU exited or hung, or the guest silent on
# its console while its node is NotReady (a reboot check makes it NotReady for a while, not silent).
environment_lost() {
  local why rc ready
  why=$(tests/node/vm.sh status "$DIR"); rc=$?
  [ "$rc" -ne 0 ] || return 1
  if [ "$rc" -eq 2 ]; then
    ready=$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)
    [ "$ready" != True ] || return 1
    why="$why; node $NODE Ready=$ready"
  fi
  echo "$why"
}

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

# --- leakhunt on the cgroup v2 node ---------------------------------------------------------------------
# The hog's OOM loop has made its point; the emulated CPUs are for what follows.
kubectl -n $NS delete deployment hog --wait=false >/dev/null
kubectl -n $NS delete pod sleeper --wait=false >/dev/null

check_lh_install() {
  helm install leakhunt charts/leakhunt -n $LH --create-namespace --wait --timeout 600s \
    --set image.repository=leakhunt.local/leakhunt >/dev/null || return 1
  local on
  on=$(kubectl -n $LH get pods -o jsonpath='{range .items[*]}{.metadata.labels.app\.kubernetes\.io/component}@{.spec.nodeName} {end}')
  echo "  $on(chart defaults but the image)"
  [ "$(kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].spec.nodeName}')" = "$NODE" ]
}
check "helm install on the cgroup v2 node: operator and agent Ready" check_lh_install

check_group_kill() {
  # A pre-fork server in miniature whose worker grows past the limit. With memory.oom.group the kernel
  # kills the parent too: the container is OOMKilled (exit 137), and only the agent can say which
  # process grew.
  worker_deployment prefork 96Mi sleep | kubectl -n $NS apply -f - >/dev/null || return 1
  pf() { kubectl -n $NS get leakreport deployment-prefork -o jsonpath="$1" 2>/dev/null; }
  wait_for "the worker's growth to kill the container" 300 sh -c "[ \"\$(kubectl -n $NS get pods -l app=prefork -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')\" -ge 1 ]" || return 1
  local last
  last=$(kubectl -n $NS get pods -l app=prefork -o jsonpath='{.items[0].status.containerStatuses[0].lastState.terminated.reason} exit {.items[0].status.containerStatuses[0].lastState.terminated.exitCode}')
  echo "  the pod status says: $last"
  [ "$last" = "OOMKilled exit 137" ] || return 1
  wait_for "the report naming the worker" 90 sh -c "kubectl -n $NS get leakreport deployment-prefork -o jsonpath='{.status.incidents[*].message}' | grep -q 'memory.oom.group is set'" \
    || { echo "  incidents: $(pf '{.status.incidents[*].message}')"; return 1; }
  echo "  $(pf '{.status.incidents[?(@.reason=="OOMKilled")].message}' | grep -o 'the kernel killed.*')"
  pf '{.status.incidents[*].message}' | grep -Eq 'the worker that grew was python3 \(pid [0-9]+\), [0-9.]+MiB when last sampled' || return 1
  sleep 5
  echo "  oomKills $(pf '{.status.oomKills}'), container restarts $(kubectl -n $NS get pods -l app=prefork -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')"
  [ "$(pf '{.status.oomKills}')" = 1 ] || return 1
  kubectl -n $NS delete deployment prefork --wait=false >/dev/null
}
check "a worker's growth kills the whole container (memory.oom.group): counted once, the worker named" check_group_kill

check_single_process() {
  # The kubelet's second configuration: singleProcessOOMKill true (written into the guest's kubelet
  # config by the privileged pod, which then stops the kubelet for systemd to start again). runc no longer sets memory.oom.group:
  # only the worker dies and the container lives on; when its main process then exits 0, containerd
  # still says OOMKilled (kubernetes issue 104454). One kill, counted once: the agent's.
  # hostPID: /proc/1/root is the guest's root; systemd restarts the killed kubelet (Restart=always).
  # The exec itself goes through the kubelet: it ends with it, so its status says nothing.
  local before
  before=$(guest pidof kubelet) || return 1
  guest sh -c 'c=/proc/1/root/etc/kubernetes/kubelet.yaml; grep -q "^singleProcessOOMKill:" $c || echo "singleProcessOOMKill: true" >>$c; kill $(pidof kubelet)' >/dev/null 2>&1 || true
  wait_for "the kubelet restarted" 120 sh -c "p=\$(kubectl -n $NS exec inspect -- pidof kubelet 2>/dev/null) && [ -n \"\$p\" ] && [ \"\$p\" != '$before' ]" || return 1
  wait_for "node Ready with singleProcessOOMKill" 180 kubectl wait --for=condition=Ready "node/$NODE" --timeout=10s || return 1
  guest grep -q '^singleProcessOOMKill: true' /proc/1/root/etc/kubernetes/kubelet.yaml || return 1
  worker_deployment single 96Mi exit | kubectl -n $NS apply -f - >/dev/null || return 1
  sp() { kubectl -n $NS get leakreport deployment-single -o jsonpath="$1" 2>/dev/null; }
  wait_for "single Running" 180 sh -c "[ -n \"\$(kubectl -n $NS get pods -l app=single -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')\" ]" || return 1
  local uid id group
  uid=$(kubectl -n $NS get pods -l app=single -o jsonpath='{.items[0].metadata.uid}')
  id=$(kubectl -n $NS get pods -l app=single -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')
  id=${id#containerd://}
  group=$(guest cat "/host-cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid//-/_}.slice/cri-containerd-$id.scope/memory.oom.group") || return 1
  echo "  memory.oom.group of the container: $group"
  [ "$group" = 0 ] || return 1
  wait_for "the container's clean exit after its worker's kill" 300 sh -c "[ \"\$(kubectl -n $NS get pods -l app=single -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')\" -ge 1 ]" || return 1
  local last
  last=$(kubectl -n $NS get pods -l app=single -o jsonpath='{.items[0].status.containerStatuses[0].lastState.terminated.reason} exit {.items[0].status.containerStatuses[0].lastState.terminated.exitCode}')
  echo "  worker: $(kubectl -n $NS logs deploy/single --previous 2>/dev/null | tail -1); the pod status says: $last"
  [ "$last" = "OOMKilled exit 0" ] || return 1
  sleep 5
  echo "  oomKills $(sp '{.status.oomKills}'): $(sp '{.status.incidents[?(@.reason=="OOMKilled")].message}')"
  [ "$(sp '{.status.oomKills}')" = 1 ] || return 1
  sp '{.status.incidents[*].message}' | grep -q 'worker process python3 (pid [0-9]*) in container server of pod .* the container lives on' || return 1
  kubectl -n $NS delete deployment single --wait=false >/dev/null
}
check "singleProcessOOMKill: only the worker dies, counted once though containerd calls the exit OOMKilled" check_single_process

check_v2_leak() {
  grow_configmap $NS || return 1
  { leakwatch grower
    echo ---
    grow_deployment grower 176 4 192Mi
  } | kubectl -n $NS apply -f - >/dev/null || return 1
  g() { kubectl -n $NS get leakreport deployment-grower -o jsonpath="$1" 2>/dev/null; }
  local t=$SECONDS
  wait_for "the grower's pair analysed" 900 sh -c "kubectl -n $NS get leakreport deployment-grower -o jsonpath='{.status.phase}' | grep -qx 'Analysed\|Failed'" \
    || { echo "  phase $(g '{.status.phase}'): $(g '{.status.incidents[*].message}')"; return 1; }
  echo "  $(g '{.status.phase}') in $((SECONDS - t)) s: $(g '{.status.summary}')"
  echo "  snapshots on $(g '{.status.snapshots[*].node}'); process $(g '{.status.process.name}') pid $(g '{.status.process.containerPid}') in the container, $(g '{.status.process.pid}') on the node"
  [ "$(g '{.status.phase}')" = Analysed ] || return 1
  case "$(g '{.status.suspects[0].path}')" in *__main__.data) ;; *) return 1 ;; esac
  [ "$(g '{.status.snapshots[0].node}')" = "$NODE" ] && [ "$(g '{.status.process.containerPid}')" = 1 ] || return 1
  # Both snapshots pre-copied while the process ran, the guest's Debian kernel tracking writes by
  # soft-dirty bits (it has no PAGEMAP_SCAN).
  local notes
  notes=$(g '{.status.notes}' | tr -d '[]' | sed 's/","/\n/g' | grep '^"*snapshot [AB]: process stopped')
  echo "$notes" | cut -c1-160 | sed 's/^/  note: /'
  [ "$(echo "$notes" | grep -c 'ms (pre-copied .* dirty; soft-dirty tracking')" = 2 ] || return 1
  # The Job ran on the guest, where the pair is.
  local job_node
  job_node=$(kubectl -n $LH get pods -l job-name -o jsonpath='{.items[0].spec.nodeName}')
  echo "  analyzer Job pod on $job_node"
  [ "$job_node" = "$NODE" ]
}
check "a leak on the cgroup v2 node: captured, analysed on the guest, the growing object named" check_v2_leak

# --- two nodes: this machine's node joins the guest's control plane ------------------------------------
HOST_NODE=node-1
HOST_STATE=$DIR/host
# job_node REPORT: the node of the analyzer Job pod that analysed REPORT (the Job's annotation names it).
job_node() {
  local job
  job=$(kubectl -n $LH get jobs -o jsonpath="{range .items[?(@.metadata.annotations.leakhunt\.dev/report==\"$NS/$1\")]}{.metadata.name}{end}")
  [ -n "$job" ] && kubectl -n $LH get pods -l "job-name=$job" -o jsonpath='{.items[0].spec.nodeName}'
}
check_two_nodes() {
  # The host node (cgroup v1, cgroupfs driver) beside the guest (cgroup v2, systemd): one agent on
  # each, neither told which. Then a leak on each node at once: each pair is taken by its node's
  # agent and analysed by a Job on that node, where the pair is, while the other node is busy with
  # its own hunt.
  kubectl -n $NS delete deployment grower --wait=false >/dev/null
  NODE_NAME=$HOST_NODE KUBELET_CLIENT_CA=$DIR/pki/kubelet-client-ca.crt \
    tests/node/node.sh up "$HOST_STATE" "$KUBECONFIG" 2>&1 | grep -v DEPRECATION | sed 's/^/  /' || return 1
  wait_for "an agent Ready on each node" 240 sh -c "[ \"\$(kubectl -n $LH get daemonset leakhunt-agent -o jsonpath='{.status.numberReady}')\" = 2 ]" || return 1
  local agents
  agents=$(kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | tr '\n' ' ')
  echo "  agents on: $agents"
  [ "$agents" = "$HOST_NODE $NODE " ] || return 1
  local name node
  for node in $HOST_NODE $NODE; do
    name=leak-$node
    { leakwatch "$name"
      echo ---
      grow_deployment "$name" 176 4 192Mi | on_node "$node"
    } | kubectl -n $NS apply -f - >/dev/null || return 1
  done
  local t=$SECONDS phase
  for node in $HOST_NODE $NODE; do
    name=leak-$node
    r() { kubectl -n $NS get leakreport "deployment-$name" -o jsonpath="$1" 2>/dev/null; }
    wait_for "$name analysed" 900 sh -c "kubectl -n $NS get leakreport deployment-$name -o jsonpath='{.status.phase}' | grep -qx 'Analysed\|Failed'" \
      || { echo "  $name: phase $(r '{.status.phase}'): $(r '{.status.incidents[*].message}')"; return 1; }
    phase=$(r '{.status.phase}')
    echo "  $name: $phase after $((SECONDS - t)) s: $(r '{.status.summary}')"
    echo "    pod on $(kubectl -n $NS get pods -l app=$name -o jsonpath='{.items[0].spec.nodeName}'); snapshots on $(r '{.status.snapshots[*].node}'); analyzer Job pod on $(job_node deployment-$name)"
    [ "$phase" = Analysed ] || return 1
    case "$(r '{.status.suspects[0].path}')" in *__main__.data) ;; *) return 1 ;; esac
    [ "$(r '{.status.snapshots[*].node}')" = "$node $node" ] || return 1
    [ "$(job_node deployment-$name)" = "$node" ] || return 1
  done
}
check "two nodes (cgroup v1 host, cgroup v2 guest): an agent on each, a leak on each at once, each pair analysed on its node" check_two_nodes

check_reboot() {
  # A hunt pending on the guest (snapshot A taken; the grower holds below B's threshold), then the
  # guest rebooted by systemd: a new boot, every pod restarted. The reports survive, the pending A
  # is voided with a reason, and the agent samples (and hunts) again.
  { leakwatch pending
    echo ---
    grow_deployment pending 130 4 192Mi | on_node "$NODE"
  } | kubectl -n $NS apply -f - >/dev/null || return 1
  p() { kubectl -n $NS get leakreport deployment-pending -o jsonpath="$1" 2>/dev/null; }
  wait_for "snapshot A of the pending hunt" 300 sh -c "kubectl -n $NS get leakreport deployment-pending -o jsonpath='{.status.snapshots[0].role}' | grep -qx A" || return 1
  local a1 boot rebooted_at
  a1=$(p '{.status.snapshots[0].time}')
  boot=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.bootID}')
  echo "  snapshot A at $a1; boot $boot"
  rebooted_at=$(date +%s)
  # The exec ends with the guest: its status says nothing.
  guest nsenter -t 1 -m -u -i -n -p -- systemctl reboot >/dev/null 2>&1 || true
  wait_for "a new boot of $NODE" 600 sh -c "b=\$(kubectl get node $NODE -o jsonpath='{.status.nodeInfo.bootID}') && [ -n \"\$b\" ] && [ \"\$b\" != '$boot' ]" || return 1
  wait_for "$NODE Ready after the reboot" 300 kubectl wait --for=condition=Ready "node/$NODE" --timeout=10s || return 1
  echo "  $NODE back in $(( $(date +%s) - rebooted_at )) s, boot $(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.bootID}')"
  wait_for "the pending A voided" 300 sh -c "kubectl -n $NS get leakreport deployment-pending -o jsonpath='{.status.incidents[*].message}' | grep -Eq 'is void: .* before snapshot B'" \
    || { echo "  incidents: $(p '{.status.incidents[*].message}')"; return 1; }
  echo "  $(p '{.status.incidents[?(@.reason=="BaselineReset")].message}')"
  # The analysed reports of both nodes survive the reboot, as they were.
  local r
  for r in deployment-leak-$HOST_NODE deployment-leak-$NODE; do
    echo "  $r: $(kubectl -n $NS get leakreport $r -o jsonpath='{.status.phase} {.status.suspects[0].path}')"
    [ "$(kubectl -n $NS get leakreport $r -o jsonpath='{.status.phase}')" = Analysed ] || return 1
  done
  # Sampling resumed on the new boot, and the hunt with it: a new A of the restarted grower.
  wait_for "a new snapshot A" 400 sh -c "t=\$(kubectl -n $NS get leakreport deployment-pending -o jsonpath='{.status.snapshots[0].time}') && [ -n \"\$t\" ] && [ \"\$t\" != '$a1' ]" \
    || { echo "  phase $(p '{.status.phase}'): $(p '{.status.incidents[*].message}')"; return 1; }
  local last
  last=$(p '{.status.memory.samples[-1:].time}')
  echo "  new snapshot A at $(p '{.status.snapshots[0].time}'); last memory sample $last"
  [ "$(date -u -d "$last" +%s)" -gt "$rebooted_at" ]
}
check "the guest rebooted during a hunt: reports survive, the pending A voided with a reason, sampling resumes" check_reboot

summary
