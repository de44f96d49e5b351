#!/usr/bin/env bash
# End-to-end test of leakhunt in a cluster (issue 6), on the real control plane (kube-testenv) and the
# node simulator: `helm install charts/leakhunt`, the seed's leaky Flask service as a Deployment with a
# 160Mi limit and a LeakWatch, real traffic, real snapshots, the analyzer Job, real OOM kills, alerts to a
# webhook receiver and a real Alertmanager. Everything is read back with kubectl, as a user would.
# Prints "e2e: N passed, M failed"; cleans up on success, failure or Ctrl-C.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DIR=$(mktemp -d /tmp/leakhunt-e2e.XXXXXX)
chmod 755 "$DIR"
NS=shop
LH=leakhunt
SUITE=e2e
# shellcheck source=tests/lib.sh
. tests/lib.sh
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "--- diagnostics ---"
    kubectl get pods,jobs,leakreports,leakwatches -A -o wide 2>&1 | tail -40
    kubectl get leakreports -A -o yaml 2>&1 | sed -n '/status:/,$p' | head -120
    for f in "$DIR"/node/pods/${LH}_*/logs/*/*.log; do
      [ -f "$f" ] || continue
      echo "--- $f (tail) ---"; tail -25 "$f"
    done
    echo "--- nodesim.log (tail) ---"; tail -20 "$DIR/nodesim.log" 2>/dev/null
    echo "--- webhook ---"; head -c 3000 "$DIR/webhook.jsonl" 2>/dev/null; echo
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  # A control plane frozen by the outage check must run again to stop.
  [ -f "$DIR/kube-testenv.pid" ] && kill -CONT "$(cat "$DIR/kube-testenv.pid")" 2>/dev/null
  tests/testenv.sh down "$DIR" || true
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "e2e: interrupted" >&2; exit 130' INT TERM

for tool in kube-testenv kubectl helm alertmanager python3 curl; do
  command -v "$tool" >/dev/null || fail_now "missing prerequisite: $tool (run make tools / .ci/install)"
done
[ -x "${LEAKHUNT_BIN:-}" ] || fail_now "LEAKHUNT_BIN=${LEAKHUNT_BIN:-} is not the built leakhunt binary (make build)"

# The containers' `python3` is the demo venv's (it has Flask): nodesim runs images' programs from PATH.
VENV=$(examples/setup-venv.sh) || fail_now "cannot set up the Flask venv"
export PATH="$VENV/bin:$PATH"


out=$(tests/testenv.sh up "$DIR") || fail_now "environment did not start"
echo "$out"
export KUBECONFIG=$DIR/admin.kubeconfig
CGROUP_ROOT=$(cat "$DIR/cgroup-root")
SNAPSHOTS=$DIR/snapshots

# --- receivers: a webhook and a real Alertmanager ------------------------------------------------------
python3 tests/e2e/webhook_receiver.py "$DIR/webhook.port" "$DIR/webhook.jsonl" &
PIDS+=($!)
read -r AM_PORT OP_PORT AGENT_PORT APP_PORT <<<"$(free_ports 4)"
mkdir -p "$DIR/alertmanager"
cat >"$DIR/alertmanager/config.yml" <<'YAML'
route: {receiver: "null", group_wait: 1s}
receivers: [{name: "null"}]
YAML
alertmanager --config.file="$DIR/alertmanager/config.yml" --storage.path="$DIR/alertmanager/data" \
  --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address= >"$DIR/alertmanager.log" 2>&1 &
PIDS+=($!)
wait_for "webhook receiver" 20 test -s "$DIR/webhook.port" || fail_now "webhook receiver did not start"
WEBHOOK_PORT=$(cat "$DIR/webhook.port")
wait_for "Alertmanager ready" 30 curl -sf "http://127.0.0.1:$AM_PORT/-/ready" || fail_now "Alertmanager did not start: $(tail -5 "$DIR/alertmanager.log")"

# --- install --------------------------------------------------------------------------------------------
check_install() {
  helm install leakhunt charts/leakhunt -n $LH --create-namespace --wait --timeout 120s \
    --set image.tag=e2e \
    --set operator.metricsPort="$OP_PORT" --set agent.metricsPort="$AGENT_PORT" \
    --set agent.cgroupRoot="$CGROUP_ROOT" --set agent.snapshotDir="$SNAPSHOTS" \
    --set analyzer.timeout=5m \
    --set alerts.webhook.url="http://127.0.0.1:$WEBHOOK_PORT/hook" \
    --set alerts.alertmanager.url="http://127.0.0.1:$AM_PORT" \
    --set alerts.alertmanager.labels.team=shop || return 1
  kubectl -n $LH rollout status deployment/leakhunt-operator --timeout=60s || return 1
  kubectl -n $LH rollout status daemonset/leakhunt-agent --timeout=60s || return 1
  wait_for "operator /readyz" 30 curl -sf "http://127.0.0.1:$OP_PORT/readyz" || return 1
  wait_for "agent /readyz" 30 curl -sf "http://127.0.0.1:$AGENT_PORT/readyz" || return 1
  kubectl get crd leakreports.leakhunt.dev leakwatches.leakhunt.dev >/dev/null || return 1
  local sas
  sas=$(kubectl -n $LH get pods -o jsonpath='{range .items[*]}{.spec.serviceAccountName}{"\n"}{end}' | sort -u | tr '\n' ' ')
  echo "  pods run as: $sas"
  [ "$sas" = "leakhunt-agent leakhunt-operator " ] || return 1
}
check "helm install: operator and agent Ready, with their own ServiceAccounts" check_install

# --- the leaky service -----------------------------------------------------------------------------------
kubectl create namespace $NS >/dev/null
kubectl -n $NS create configmap leaky-flask --from-file=app.py=examples/leaky-flask/app.py >/dev/null
kubectl -n $NS apply -f - >/dev/null <<YAML
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: leaky-flask}
spec:
  selector: {matchLabels: {app: leaky-flask}}
  thresholds: {baseline: 50, nearLimit: 85}
  cooldown: 2h   # one hunt: no check needs a second pair, and a slow run must not start one
  maxSnapshotSize: 512Mi
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: leaky-flask}
spec:
  replicas: 1
  selector: {matchLabels: {app: leaky-flask}}
  template:
    metadata: {labels: {app: leaky-flask}}
    spec:
      containers:
        - name: app
          image: python:3.12-slim
          command: ["python3", "/app/app.py"]
          env:
            - {name: PORT, value: "$APP_PORT"}
            - {name: PROFILER_LAPS, value: "100"}
          resources:
            requests: {memory: 160Mi}
            limits: {memory: 160Mi}
          volumeMounts:
            - {name: app, mountPath: /app}
      volumes:
        - name: app
          configMap: {name: leaky-flask}
YAML
python3 examples/leaky-flask/load.py --port "$APP_PORT" --threads 4 --seconds 900 --give-up 120 --start-timeout 120 \
  >"$DIR/load.log" 2>&1 &
PIDS+=($!)

report() { kubectl -n $NS get leakreport deployment-leaky-flask -o jsonpath="$1"; }
phase_is() { [ "$(report '{.status.phase}')" = "$1" ]; }
kills_at_least() { [ "$(report '{.status.oomKills}' 2>/dev/null || echo 0)" -ge "$1" ]; }

check_report_owned() {
  wait_for "LeakReport deployment-leaky-flask" 90 report '{.metadata.name}' || return 1
  local owner uid
  owner=$(report '{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')
  uid=$(kubectl -n $NS get deployment leaky-flask -o jsonpath='{.metadata.uid}')
  echo "  owner: $owner"
  [ "$owner" = Deployment/leaky-flask ] && [ "$(report '{.metadata.ownerReferences[0].uid}')" = "$uid" ]
}
check "LeakReport appears, owned by the Deployment" check_report_owned

ANALYSED_AT=0
check_analysed() {
  wait_for "snapshot A (phase Baseline)" 240 sh -c "kubectl -n $NS get leakreport deployment-leaky-flask -o jsonpath='{.status.snapshots[0].role}' | grep -q A" || return 1
  echo "  snapshot A: $(report '{.status.snapshots[0].size}') bytes at $(report '{.status.snapshots[0].time}')"
  wait_for "phase Analysed" 300 phase_is Analysed || { echo "  phase: $(report '{.status.phase}')"; return 1; }
  ANALYSED_AT=$SECONDS
  # Timings for the note and docs/benchmarks.md: A → B (workload growth), B → analysed (leakhunt).
  bench/e2e-timings.sh $NS deployment-leaky-flask ${BENCH_RESULTS:-} | sed 's/^/  /'
  local verdict suspect
  verdict=$(report '{.status.verdict}')
  suspect=$(report '{.status.suspects[0].path}')
  echo "  verdict $verdict; top suspect $suspect $(report '{.status.growth}')"
  echo "  summary: $(report '{.status.summary}')"
  [ "$verdict" = Leak ] || return 1
  case "$suspect" in *Profiler.results) ;; *) return 1 ;; esac
  local table
  table=$(kubectl get leakreports -n $NS)
  echo "$table" | sed 's/^/  /'
  echo "$table" | head -1 | grep -q 'WORKLOAD.*VERDICT.*SUSPECT.*GROWTH.*OOMKILLS.*AGE' || return 1
  echo "$table" | grep -E 'Deployment/leaky-flask +Leak +[^ ]*Profiler.results +\+[0-9]+ items' >/dev/null || return 1
  # The Job ran with the analyzer ServiceAccount, pinned to the node.
  local job_sa
  job_sa=$(kubectl -n $LH get pods -l app.kubernetes.io/component=analyzer -o jsonpath='{.items[0].spec.serviceAccountName}/{.items[0].spec.nodeName}')
  echo "  analyzer Job pod: $job_sa"
  [ "$job_sa" = leakhunt-analyzer/nodesim ] || return 1
  kubectl describe leakreport -n $NS deployment-leaky-flask >"$DIR/describe.txt" || return 1
  grep -q 'LeakDetected' "$DIR/describe.txt" || return 1
}
check "analysed: verdict Leak, top suspect Profiler.results, in kubectl get" check_analysed

check_kills() {
  wait_for "first OOM kill counted" 240 kills_at_least 1 || return 1
  echo "  lastOOMKill: $(report '{.status.lastOOMKill.pod}/{.status.lastOOMKill.container} {.status.lastOOMKill.process} at {.status.lastOOMKill.time}')"
  # The API server goes away for 15 s (frozen: connections hang, as with a partition); the operator and
  # agent must carry on afterwards without losing or double-counting kills.
  local before
  before=$(report '{.status.oomKills}')
  kill -STOP "$(cat "$DIR/kube-testenv.pid")"
  sleep 15
  kill -CONT "$(cat "$DIR/kube-testenv.pid")"
  echo "  API server frozen for 15 s at $before kills, then resumed"
  wait_for "the next OOM kill counted after the outage" 300 kills_at_least $((before + 1)) || return 1
  wait_for "second OOM kill counted (after the restart)" 300 kills_at_least 2 || return 1
  local restarts
  restarts=$(kubectl -n $NS get pods -l app=leaky-flask -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
  echo "  oomKills $(report '{.status.oomKills}'), pod restartCount $restarts"
  # Counted once each: never more kills than restarts (plus the one that may be pending).
  [ "$(report '{.status.oomKills}')" -le $((restarts + 1)) ]
}
check "OOM kills counted, once each, across restarts" check_kills

check_alerts() {
  wait_for "LeakDetected at the webhook" 60 grep -q '"kind": "LeakDetected"' "$DIR/webhook.jsonl" || return 1
  grep '"kind": "LeakDetected"' "$DIR/webhook.jsonl" | head -1 | python3 -c '
import json, sys
b = json.loads(sys.stdin.readline())["body"]
print("  webhook:", b["kind"], b["namespace"], b["workload"], b.get("suspect"), b.get("growth"))
assert b["namespace"] == "shop" and b["workload"] == "Deployment/leaky-flask", b
assert b["suspect"].endswith("Profiler.results"), b' || return 1
  grep -q '"kind": "OOMKilled"' "$DIR/webhook.jsonl" || { echo "  no OOMKilled alert at the webhook"; return 1; }
  wait_for "WorkloadMemoryLeak in Alertmanager" 60 sh -c \
    "curl -sf http://127.0.0.1:$AM_PORT/api/v2/alerts | grep -q WorkloadMemoryLeak" || return 1
  curl -sf "http://127.0.0.1:$AM_PORT/api/v2/alerts" | python3 -c '
import json, sys
alerts = [a for a in json.load(sys.stdin) if a["labels"]["alertname"] == "WorkloadMemoryLeak"]
l = alerts[0]["labels"]
print("  alertmanager:", l["alertname"], l["namespace"], l["workload"], "team=" + l.get("team", ""))
assert l["namespace"] == "shop" and l["workload"] == "Deployment/leaky-flask" and l.get("team") == "shop", l' || return 1
  local events
  events=$(kubectl get events -n $NS -o jsonpath='{range .items[*]}{.reason}/{.involvedObject.kind}{"\n"}{end}' 2>/dev/null | sort -u | tr '\n' ' ')
  echo "  events: $events"
  for want in LeakDetected/LeakReport LeakDetected/Deployment LeakDetected/Pod OOMKilled/Pod; do
    case " $events" in *" $want "*) ;; *) echo "  missing event $want"; return 1 ;; esac
  done
  local metrics
  metrics=$(curl -sf "http://127.0.0.1:$OP_PORT/metrics") || return 1
  echo "$metrics" | grep -E '^leakhunt_(oom_kills_total|leak_detected)\{' | sed 's/^/  /'
  echo "$metrics" | grep -qE '^leakhunt_leak_detected\{.*workload="Deployment/leaky-flask".*\} 1' || return 1
  echo "$metrics" | grep -qE '^leakhunt_oom_kills_total\{.*workload="Deployment/leaky-flask".*\} [1-9]' || return 1
  curl -sf "http://127.0.0.1:$AGENT_PORT/metrics" | grep -qE '^leakhunt_captures_total\{.*result="ok".*\} [2-9]' || return 1
}
check "alerts: webhook, Alertmanager, Events, metrics" check_alerts

check_rbac() {
  local op=system:serviceaccount:$LH:leakhunt-operator an=system:serviceaccount:$LH:leakhunt-analyzer ag=system:serviceaccount:$LH:leakhunt-agent
  local ans
  for ns in $NS $LH kube-system; do
    ans=$(kubectl auth can-i get secrets -n $ns --as=$op); [ "$ans" = no ] || { echo "  operator can read secrets in $ns"; return 1; }
    ans=$(kubectl auth can-i list secrets -n $ns --as=$ag); [ "$ans" = no ] || { echo "  agent can list secrets in $ns"; return 1; }
  done
  [ "$(kubectl auth can-i update leakreports.leakhunt.dev --subresource=status -n $NS --as=$an)" = yes ] || return 1
  [ "$(kubectl auth can-i delete leakreports.leakhunt.dev -n $NS --as=$op)" = no ] || return 1
  [ "$(kubectl auth can-i update leakreports.leakhunt.dev -n $NS --as=$an)" = no ] || return 1
  [ "$(kubectl auth can-i delete leakreports.leakhunt.dev -n $NS --as=$an)" = no ] || return 1
  [ "$(kubectl auth can-i list pods -n $NS --as=$an)" = no ] || return 1
  echo "  operator and agent cannot read Secrets; the analyzer may only update leakreports/status"
  # And the token nodesim gave the analyzer pod is really bound by that RBAC: its write went through.
  [ "$(report '{.status.conditions[?(@.type=="Analysed")].status}')" = True ]
}
check "RBAC: least privilege per component" check_rbac

check_unwatched() {
  hog_deployment python:3.12-slim | kubectl -n $NS apply -f - >/dev/null
  hog() { kubectl -n $NS get leakreport deployment-hog -o jsonpath="$1"; }
  wait_for "report for the unwatched hog with a kill" 120 sh -c "[ \"\$(kubectl -n $NS get leakreport deployment-hog -o jsonpath='{.status.oomKills}')\" -ge 1 ]" || return 1
  echo "  hog: oomKills $(hog '{.status.oomKills}'), phase $(hog '{.status.phase}'), snapshots [$(hog '{.status.snapshots[*].role}')]"
  echo "  note: $(hog '{.status.notes[0]}')"
  [ -z "$(hog '{.status.snapshots[*].role}')" ] || return 1
  hog '{.status.notes[0]}' | grep -q 'memory is not captured' || return 1
  [ "$(hog '{.metadata.ownerReferences[0].kind}')" = Deployment ] || return 1
  # Nothing of the hog on the snapshot volume either.
  [ -z "$(find "$SNAPSHOTS" -path "*hog*" -type f 2>/dev/null)" ]
}
check "unwatched workload: report with the kill, no capture" check_unwatched

check_worker_kill() {
  # A pre-fork server in miniature: the parent stays small and respawns a worker that grows; the kernel
  # kills the worker, the container lives on (no restart, no OOMKilled in the pod status). Only the
  # agent, from the cgroup's oom_kill counter, can see these.
  kubectl -n $NS apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: prefork}
spec:
  replicas: 1
  selector: {matchLabels: {app: prefork}}
  template:
    metadata: {labels: {app: prefork}}
    spec:
      containers:
        - name: server
          image: python:3.12-slim
          command: ["python3", "-c"]
          args:
            - |
              import subprocess, sys, time
              worker = "import time\nx = []\nwhile True:\n    x.append(b'x' * (4 << 20))\n    time.sleep(0.2)\n"
              while True:
                  subprocess.run([sys.executable, "-c", worker])
                  time.sleep(1)
          resources:
            limits: {memory: 64Mi}
YAML
  pf() { kubectl -n $NS get leakreport deployment-prefork -o jsonpath="$1"; }
  wait_for "worker kills counted by the agent" 120 sh -c "[ \"\$(kubectl -n $NS get leakreport deployment-prefork -o jsonpath='{.status.oomKills}')\" -ge 2 ]" || return 1
  local restarts
  restarts=$(kubectl -n $NS get pods -l app=prefork -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
  echo "  prefork: oomKills $(pf '{.status.oomKills}'), container restarts $restarts, last: $(pf '{.status.lastOOMKill.process}')"
  echo "  incident: $(pf '{.status.incidents[-1:].message}')"
  [ "$restarts" = 0 ] || return 1
  pf '{.status.incidents[*].message}' | grep -q 'worker process python3 (pid [0-9]*)' || return 1
  # Announced by the operator like a container's kill: the webhook, and Events on the pod.
  wait_for "worker kill at the webhook" 30 grep -q 'prefork OOM-killed: worker process python3' "$DIR/webhook.jsonl" || return 1
  grep 'prefork OOM-killed: worker process' "$DIR/webhook.jsonl" | head -1 | python3 -c '
import json, sys
b = json.loads(sys.stdin.readline())["body"]
print("  webhook:", b["kind"], b["workload"], "-", b["summary"])
assert b["kind"] == "OOMKilled" and b["workload"] == "Deployment/prefork", b' || return 1
  wait_for "worker kill Event on the pod" 30 sh -c "kubectl -n $NS get events --field-selector reason=OOMKilled,involvedObject.kind=Pod -o jsonpath='{.items[*].message}' | grep -q 'worker process python3'" || return 1
  # No kill left unannounced once the kills stop (the report stays: the Deployment owns it).
  kubectl -n $NS scale deployment prefork --replicas=0 >/dev/null
  wait_for "every worker kill announced" 30 sh -c "[ -z \"\$(kubectl -n $NS get leakreport deployment-prefork -o jsonpath='{.status.unannouncedKills}')\" ]" || return 1
  kubectl -n $NS delete deployment prefork --wait=false >/dev/null
}
check "worker processes OOM-killed inside a surviving container are counted" check_worker_kill

check_snapshots_cleaned() {
  wait_for "snapshot files deleted after analysis" 60 sh -c "[ -z \"\$(find '$SNAPSHOTS' -type f)\" ]" || { find "$SNAPSHOTS" -type f -ls; return 1; }
  [ -z "$(report '{.status.snapshots[*].path}')" ] || { echo "  records still have paths"; return 1; }
  echo "  no snapshot file left; records keep node, size and sha256: $(report '{.status.snapshots[*].sha256}' | cut -c1-20)…"
}
check "snapshot files deleted once analysed" check_snapshots_cleaned

check_leakwatch_urls() {
  # Whoever may create a LeakWatch must not aim the operator's POSTs at an address of their choosing:
  # outside alerts.allowedUrlPrefixes (none here) a URL is ignored, and the LeakWatch says so.
  kubectl -n $NS apply -f - >/dev/null <<'YAML'
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: elsewhere}
spec:
  selector: {matchLabels: {app: nothing-here}}
  alerts: {webhookUrl: "http://169.254.169.254/latest/meta-data"}
YAML
  local cond='{.status.conditions[?(@.type=="AlertsRouted")].reason}'
  wait_for "AlertsRouted condition" 40 sh -c "[ \"\$(kubectl -n $NS get leakwatch elsewhere -o jsonpath='$cond')\" = URLNotAllowed ]" || return 1
  echo "  elsewhere: $(kubectl -n $NS get leakwatch elsewhere -o jsonpath='{.status.conditions[?(@.type=="AlertsRouted")].message}')"
  [ "$(kubectl -n $NS get leakwatch leaky-flask -o jsonpath='{.status.conditions[?(@.type=="AlertsRouted")].status}')" = True ] || return 1
  kubectl -n $NS delete leakwatch elsewhere >/dev/null
}
check "a LeakWatch cannot route alerts outside the allowed URL prefixes" check_leakwatch_urls

check_big_pair() {
  # A pair bigger than the analyzer Job's default limit (1Gi): the operator sizes the Job from the
  # memory the snapshots hold (uncompressed: the files are zstd, and a heap of small objects shrinks
  # to a tenth), 1.5 × that plus 128Mi within analyzer.maxMemory; the CPython analysis fits in it.
  kubectl -n $NS create configmap big-heap --from-file=grow.py=tests/workloads/grow.py >/dev/null || return 1
  kubectl -n $NS apply -f - >/dev/null <<'YAML' || return 1
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: big-heap}
spec:
  selector: {matchLabels: {app: big-heap}}
  thresholds: {baseline: 50, nearLimit: 85}
  cooldown: 2h
  maxSnapshotSize: 2Gi
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: big-heap}
spec:
  replicas: 1
  selector: {matchLabels: {app: big-heap}}
  template:
    metadata: {labels: {app: big-heap}}
    spec:
      containers:
        - name: app
          image: python:3.12-slim
          command: ["python3", "/app/grow.py"]
          env:
            - {name: TARGET_MIB, value: "1150"}
            - {name: MIB_PER_SECOND, value: "40"}
          resources:
            requests: {memory: 1280Mi}
            limits: {memory: 1280Mi}
          volumeMounts:
            - {name: app, mountPath: /app}
      volumes:
        - name: app
          configMap: {name: big-heap}
YAML
  local big=deployment-big-heap
  big_report() { kubectl -n $NS get leakreport $big -o jsonpath="$1"; }
  wait_for "big-heap phase Analysed" 300 sh -c "[ \"\$(kubectl -n $NS get leakreport $big -o jsonpath='{.status.phase}')\" = Analysed ]" \
    || { echo "  phase: $(big_report '{.status.phase}') $(big_report '{.status.conditions[*].message}')"; return 1; }
  local sizes limit
  sizes=$(big_report '{.status.snapshots[*].memory}')
  limit=$(kubectl -n $LH get jobs -o json | python3 -c '
import json, sys
units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
for j in json.load(sys.stdin)["items"]:
    if j["metadata"].get("annotations", {}).get("leakhunt.dev/report") == sys.argv[1]:
        q = j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        n = q.rstrip("KMGi")
        print(int(float(n) * units.get(q[len(n):], 1)))' "$NS/$big")
  echo "  snapshots hold $sizes bytes (files: $(big_report '{.status.snapshots[*].size}')); analyzer Job memory limit: $((limit >> 20)) MiB; verdict $(big_report '{.status.verdict}')"
  echo "  summary: $(big_report '{.status.summary}')"
  local pair=0 s
  for s in $sizes; do pair=$((pair + s)); done
  [ "$pair" -gt $((1 << 30)) ] || { echo "  the pair is not bigger than 1Gi"; return 1; }
  [ "${limit:-0}" -ge "$pair" ] || return 1
  # The Python heap was walked, not only the generic census: the list that grew is named.
  case "$(big_report '{.status.suspects[0].path}')" in *__main__.data) ;; *) echo "  top suspect: $(big_report '{.status.suspects[0].path}'); notes: $(big_report '{.status.notes}')"; return 1 ;; esac
  kubectl -n $NS delete deployment big-heap --wait=true >/dev/null
  kubectl -n $NS delete leakwatch big-heap >/dev/null
}
check "a snapshot pair bigger than the analyzer's default limit gets a Job sized for it, analysed" check_big_pair

check_delete_workload() {
  kubectl -n $NS delete deployment leaky-flask --wait=true >/dev/null || return 1
  wait_for "report deleted with its Deployment" 90 sh -c "! kubectl -n $NS get leakreport deployment-leaky-flask" || return 1
  echo "  deployment-leaky-flask report gone with the Deployment"
}
check "deleting the Deployment deletes its LeakReport" check_delete_workload

check_uninstall() {
  kubectl -n $NS delete deployment hog --wait=true >/dev/null
  helm uninstall leakhunt -n $LH --wait --timeout 120s || return 1
  wait_for "nothing left running in $LH" 90 sh -c "[ -z \"\$(kubectl -n $LH get pods,jobs,deployments,daemonsets -o name)\" ]" || {
    kubectl -n $LH get all; return 1; }
  ! pgrep -f "$LEAKHUNT_BIN (operator|agent)" >/dev/null || { echo "  leakhunt processes still running"; return 1; }
  echo "  uninstalled: no pods, Jobs or processes left"
}
check "helm uninstall leaves nothing running" check_uninstall

# Two replicas: only one leads; when it stops, the other takes over. Run as local processes (on nodesim
# every pod shares the host network, so two operator pods would fight over one metrics port).
check_leader_election() {
  local ns=leader-test
  kubectl create namespace $ns >/dev/null || return 1
  local a b port_a port_b
  read -r port_a port_b <<<"$(free_ports 2)"
  POD_NAME=op-a "$LEAKHUNT_BIN" operator --namespace $ns --watch-namespaces $ns --metrics-addr "127.0.0.1:$port_a" \
    >"$DIR/op-a.log" 2>&1 &
  a=$!; PIDS+=($a)
  sleep 1
  POD_NAME=op-b "$LEAKHUNT_BIN" operator --namespace $ns --watch-namespaces $ns --metrics-addr "127.0.0.1:$port_b" \
    >"$DIR/op-b.log" 2>&1 &
  b=$!; PIDS+=($b)
  holder() { kubectl -n $ns get lease leakhunt-operator -o jsonpath='{.spec.holderIdentity}'; }
  wait_for "a leader" 30 sh -c "kubectl -n $ns get lease leakhunt-operator -o jsonpath='{.spec.holderIdentity}' | grep -q ." || return 1
  sleep 3
  local first leaders
  first=$(holder)
  leaders=$(grep -l ' leading' "$DIR/op-a.log" "$DIR/op-b.log" | wc -l)
  echo "  leader: $first; replicas leading: $leaders"
  [ "$leaders" = 1 ] || return 1
  curl -sf "http://127.0.0.1:$port_a/readyz" >/dev/null && curl -sf "http://127.0.0.1:$port_b/readyz" >/dev/null || {
    echo "  both replicas should be ready (the standby waits by design)"; return 1; }
  local leader_pid standby_log t
  case "$first" in op-a-*) leader_pid=$a; standby_log=$DIR/op-b.log ;; *) leader_pid=$b; standby_log=$DIR/op-a.log ;; esac
  t=$SECONDS
  kill -TERM "$leader_pid"
  wait_for "the standby to take over" 40 grep -q ' leading' "$standby_log" || return 1
  echo "  standby took over $((SECONDS - t))s after the leader stopped; lease now $(holder)"
  [ "$(holder)" != "$first" ] || return 1
  kill -TERM $a $b 2>/dev/null
  kubectl delete namespace $ns --wait=false >/dev/null
}
check "leader election: one of two replicas leads; the standby takes over" check_leader_election

summary
