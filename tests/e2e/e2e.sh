#!/usr/bin/env bash
# End-to-end test of leakhunt in a cluster, on the real control plane (kube-testenv) and a real node
# (kubelet, containerd, runc; tests/node): `helm install charts/leakhunt` with the image built from the
# Dockerfile, the seed's leaky Flask service as a Deployment with a 160Mi limit and a LeakWatch, real
# traffic, real snapshots, the analyzer Job, real OOM kills, alerts to a webhook receiver and a real
# Alertmanager on the node's address, a real Prometheus scraping leakhunt and evaluating the chart's
# rules; a CPython 3.14 service with allocation sites; an unmodified Java service, dumped through
# HotSpot's attach mechanism. Everything is read back with kubectl, as a user would.
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
export TESTENV_NODE=${TESTENV_NODE:-real}
export NODE_IMAGES=${NODE_IMAGES:-$HOME/.cache/leakhunt/images/oci}
PY_IMAGE=leakhunt.local/python:3-flask
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    echo "--- diagnostics ---"
    kubectl get pods,jobs,leakreports,leakwatches -A -o wide 2>&1 | tail -40
    kubectl get leakreports -A -o yaml 2>&1 | sed -n '/status:/,$p' | head -120
    for pod in $(kubectl -n $LH get pods -o name 2>/dev/null); do
      echo "--- $pod (log tail) ---"; kubectl -n $LH logs "$pod" --tail=25 2>&1
    done
    echo "--- kubelet.log (errors) ---"; grep -E '^E[0-9]{4}' "$DIR/node/logs/kubelet.log" 2>/dev/null | tail -15
    echo "--- webhook ---"; head -c 3000 "$DIR/webhook.jsonl" 2>/dev/null; echo
    echo "--- prometheus.log (errors) ---"; grep -E 'level=(error|warn)' "$DIR/prometheus.log" 2>/dev/null | tail -10
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

for tool in kube-testenv kubectl helm alertmanager prometheus python3 curl; do
  command -v "$tool" >/dev/null || fail_now "missing prerequisite: $tool (run make tools / .ci/install)"
done
[ -x "${LEAKHUNT_BIN:-}" ] || fail_now "LEAKHUNT_BIN=${LEAKHUNT_BIN:-} is not the built leakhunt binary (make build)"
[ -f "$NODE_IMAGES/leakhunt.tar" ] || fail_now "no leakhunt image in $NODE_IMAGES (make image)"

out=$(tests/testenv.sh up "$DIR") || fail_now "environment did not start"
echo "$out"
export KUBECONFIG=$DIR/admin.kubeconfig
CGROUP_ROOT=$(cat "$DIR/cgroup-root")
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
# The node's address: its pods reach the receivers there (the host's loopback is not theirs).
NODE_IP=$(kubectl get node "$NODE" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
# The snapshot directory of this run, not the chart's /var/lib/leakhunt/snapshots: the check that files
# are deleted looks at it, and nothing of a run outlives its state directory.
SNAPSHOTS=$DIR/snapshots

# --- receivers: a webhook and a real Alertmanager ------------------------------------------------------
python3 tests/e2e/webhook_receiver.py "$DIR/webhook.port" "$DIR/webhook.jsonl" "$NODE_IP" &
PIDS+=($!)
read -r AM_PORT <<<"$(free_ports 1)"
mkdir -p "$DIR/alertmanager"
cat >"$DIR/alertmanager/config.yml" <<'YAML'
route: {receiver: "null", group_wait: 1s}
receivers: [{name: "null"}]
YAML
alertmanager --config.file="$DIR/alertmanager/config.yml" --storage.path="$DIR/alertmanager/data" \
  --web.listen-address="$NODE_IP:$AM_PORT" --cluster.listen-address= >"$DIR/alertmanager.log" 2>&1 &
PIDS+=($!)
wait_for "webhook receiver" 20 test -s "$DIR/webhook.port" || fail_now "webhook receiver did not start"
WEBHOOK_PORT=$(cat "$DIR/webhook.port")
wait_for "Alertmanager ready" 30 curl -sf "http://$NODE_IP:$AM_PORT/-/ready" || fail_now "Alertmanager did not start: $(tail -5 "$DIR/alertmanager.log")"

# --- a real Prometheus ------------------------------------------------------------------------------------
# What kube-prometheus-stack would do with the chart's ServiceMonitor and PrometheusRule (whose CRDs this
# control plane lacks): the operator and the agent scraped with honor_labels, the chart's rules evaluated
# and sent to the Alertmanager above, the kubelet's cAdvisor metrics through the API server's node proxy.
# Targets are the pods' addresses, written once they exist (prom_targets).
read -r PROM_PORT <<<"$(free_ports 1)"
PROM=$DIR/prometheus
PROM_URL=http://127.0.0.1:$PROM_PORT
mkdir -p "$PROM/targets"
helm template leakhunt charts/leakhunt -n $LH --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
  >"$PROM/prometheusrule.yaml" && python3 tests/chart/promql.py rules "$PROM/prometheusrule.yaml" "$PROM/rules.yaml" \
  || fail_now "the chart's PrometheusRule could not be rendered as a rule file"
# The API server's CA and the admin user's credential (a bearer token here; a client certificate elsewhere),
# flattened so that file references become data.
kcfg() { kubectl config view --raw --flatten --minify -o jsonpath="{$1}"; }
kcfg .clusters[0].cluster.certificate-authority-data | base64 -d >"$PROM/ca.crt"
( umask 077
  kcfg .users[0].user.token >"$PROM/token"
  kcfg .users[0].user.client-certificate-data | base64 -d >"$PROM/client.crt"
  kcfg .users[0].user.client-key-data | base64 -d >"$PROM/client.key" )
if [[ -s $PROM/token ]]; then
  CADVISOR_AUTH="authorization: {credentials_file: token}
    tls_config: {ca_file: ca.crt}"
elif [[ -s $PROM/client.crt ]]; then
  CADVISOR_AUTH="tls_config: {ca_file: ca.crt, cert_file: client.crt, key_file: client.key}"
else
  fail_now "the kubeconfig has neither a token nor a client certificate for Prometheus's cAdvisor scrape"
fi
API_HOSTPORT=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' | sed 's|^https://||')
cat >"$PROM/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
  # On every alert it sends: tells its alerts from those the operator posts to Alertmanager itself.
  external_labels: {prometheus: e2e}
rule_files: [rules.yaml]
alerting:
  alertmanagers:
    - static_configs: [{targets: ["$NODE_IP:$AM_PORT"]}]
scrape_configs:
  - job_name: leakhunt-operator
    honor_labels: true
    file_sd_configs: [{files: [targets/operator.json], refresh_interval: 5s}]
  - job_name: leakhunt-agent
    honor_labels: true
    file_sd_configs: [{files: [targets/agent.json], refresh_interval: 5s}]
  - job_name: kubelet-cadvisor
    scheme: https
    metrics_path: /api/v1/nodes/$NODE/proxy/metrics/cadvisor
    $CADVISOR_AUTH
    static_configs: [{targets: ["$API_HOSTPORT"], labels: {node: $NODE}}]
YAML
prometheus --config.file="$PROM/prometheus.yml" --storage.tsdb.path="$PROM/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$DIR/prometheus.log" 2>&1 &
PIDS+=($!)
PROM_STARTED=$(date +%s)
wait_for "Prometheus ready" 60 curl -sf "$PROM_URL/-/ready" || fail_now "Prometheus did not start: $(tail -5 "$DIR/prometheus.log")"
# prom_targets: the operator's and the agent's current pod addresses as Prometheus's targets.
prom_targets() {
  local c addr
  for c in operator agent; do
    addr=$(kubectl -n $LH get pods -l app.kubernetes.io/component="$c" \
      -o jsonpath='{range .items[*]}{.status.podIP}:{.spec.containers[0].ports[0].containerPort}{"\n"}{end}' | grep -v '^:' | tr '\n' ' ')
    python3 -c 'import json, sys; print(json.dumps([{"targets": sys.argv[2:]}]))' "$c" $addr >"$PROM/targets/$c.json.new"
    mv "$PROM/targets/$c.json.new" "$PROM/targets/$c.json"
  done
}
# promq QUERY: the instant query's result vector as JSON lines (metric labels and value).
promq() {
  curl -sf --get "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print(json.dumps({"metric": r["metric"], "value": r["value"][1]}))'
}

# --- install --------------------------------------------------------------------------------------------
# The metrics endpoints, at the pods' own addresses (the chart's default ports).
OP_URL= AGENT_URL=
pod_url() {
  local ip port
  ip=$(kubectl -n $LH get pods -l app.kubernetes.io/component="$1" -o jsonpath='{.items[0].status.podIP}')
  port=$(kubectl -n $LH get pods -l app.kubernetes.io/component="$1" -o jsonpath='{.items[0].spec.containers[0].ports[0].containerPort}')
  [ -n "$ip" ] && [ -n "$port" ] && echo "http://$ip:$port"
}
check_install() {
  helm install leakhunt charts/leakhunt -n $LH --create-namespace --wait --timeout 180s \
    --set image.repository=leakhunt.local/leakhunt \
    --set agent.snapshotDir="$SNAPSHOTS" \
    --set alerts.webhook.url="http://$NODE_IP:$WEBHOOK_PORT/hook" \
    --set alerts.alertmanager.url="http://$NODE_IP:$AM_PORT" \
    --set alerts.alertmanager.labels.team=shop || return 1
  kubectl -n $LH rollout status deployment/leakhunt-operator --timeout=60s || return 1
  kubectl -n $LH rollout status daemonset/leakhunt-agent --timeout=60s || return 1
  OP_URL=$(pod_url operator) && AGENT_URL=$(pod_url agent) || return 1
  echo "  operator at $OP_URL, agent at $AGENT_URL"
  prom_targets
  wait_for "operator /readyz" 30 curl -sf "$OP_URL/readyz" || return 1
  wait_for "agent /readyz" 30 curl -sf "$AGENT_URL/readyz" || return 1
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
# The user's example manifest, unchanged but for two LeakWatch settings: one hunt (no check needs a
# second pair, and a slow run must not start one) and a smaller snapshot cap.
kubectl -n $NS apply -f examples/leaky-flask/leakwatch.yaml >/dev/null
kubectl -n $NS patch leakwatch leaky-flask --type merge -p '{"spec": {"cooldown": "2h", "maxSnapshotSize": "512Mi"}}' >/dev/null
# Load at the pod's address, whichever pod it is: a restarted container keeps its pod (and address).
kubectl -n $NS rollout status deployment/leaky-flask --timeout=120s >/dev/null || fail_now "the leaky service did not start"
APP_IP=$(kubectl -n $NS get pods -l app=leaky-flask -o jsonpath='{.items[0].status.podIP}')
python3 examples/leaky-flask/load.py --host "$APP_IP" --port 8000 --threads 4 --seconds 900 --give-up 120 --start-timeout 120 \
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
  [ "$job_sa" = "leakhunt-analyzer/$NODE" ] || return 1
  kubectl describe leakreport -n $NS deployment-leaky-flask >"$DIR/describe.txt" || return 1
  grep -q 'LeakDetected' "$DIR/describe.txt" || return 1
  # Both snapshots pre-copied while the process ran (this kernel: userfaultfd write-protect), the
  # stop it cost in the notes.
  local notes
  notes=$(report '{.status.notes}' | tr -d '[]' | sed 's/","/\n/g' | grep '^"*snapshot [AB]: process stopped')
  echo "$notes" | cut -c1-160 | sed 's/^/  note: /'
  [ "$(echo "$notes" | grep -c 'ms (pre-copied .* dirty; userfaultfd write-protect tracking')" = 2 ]
}
check "analysed: verdict Leak, top suspect Profiler.results, in kubectl get" check_analysed

check_pid_namespace() {
  # The target runs in a PID namespace of its own: the agent (host PID namespace) found it by its node
  # PID and the report names both. The analysis needed no Python on the agent's or the Job's filesystem.
  local pid cpid
  pid=$(report '{.status.process.pid}'); cpid=$(report '{.status.process.containerPid}')
  echo "  process $(report '{.status.process.name}'): pid $cpid in the container, $pid on the node"
  echo "  incident: $(report '{.status.incidents[?(@.reason=="SnapshotTaken")].message}' | head -c 200)"
  [ -n "$cpid" ] && [ -n "$pid" ] && [ "$cpid" != "$pid" ] || return 1
  [ "$(report '{.status.snapshots[0].pid}')" = "$pid" ] || return 1
  report '{.status.incidents[*].message}' | grep -q "pid $cpid in the container, $pid on the node" || return 1
  # While the process lives, the kernel agrees: its innermost NSpid is the container's PID.
  if [ -r "/proc/$pid/status" ]; then
    [ "$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status")" = "$cpid" ] || return 1
  fi
  local agent_pod
  agent_pod=$(kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].metadata.name}')
  if kubectl -n $LH exec "$agent_pod" -- /usr/local/bin/leakhunt --version >/dev/null 2>&1 \
    && ! kubectl -n $LH exec "$agent_pod" -- sh -c 'ls /usr/lib/python3* /usr/bin/python3*' >/dev/null 2>&1; then
    echo "  the leakhunt image holds no Python: the heap was named from the snapshot alone"
  else
    echo "  the agent's filesystem has Python (or exec failed)"; return 1
  fi
}
check "the target in its own PID namespace: found, captured, named by both PIDs" check_pid_namespace

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
    "curl -sf http://$NODE_IP:$AM_PORT/api/v2/alerts | grep -q WorkloadMemoryLeak" || return 1
  curl -sf "http://$NODE_IP:$AM_PORT/api/v2/alerts" | python3 -c '
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
  metrics=$(curl -sf "$OP_URL/metrics") || return 1
  echo "$metrics" | grep -E '^leakhunt_(oom_kills_total|leak_detected)\{' | sed 's/^/  /'
  echo "$metrics" | grep -qE '^leakhunt_leak_detected\{.*workload="Deployment/leaky-flask".*\} 1' || return 1
  echo "$metrics" | grep -qE '^leakhunt_oom_kills_total\{.*workload="Deployment/leaky-flask".*\} [1-9]' || return 1
  curl -sf "$AGENT_URL/metrics" | grep -qE '^leakhunt_captures_total\{.*result="ok".*\} [2-9]' || return 1
}
check "alerts: webhook, Alertmanager, Events, metrics" check_alerts

# The chart's PrometheusRule evaluated by a real Prometheus on what it scraped from the operator and the
# agent, its alerts in the real Alertmanager; every query of the chart's Grafana dashboard returns data.
all_up() {
  local n
  n=$(promq 'up{job=~"leakhunt-operator|leakhunt-agent|kubelet-cadvisor"} == 1' | wc -l)
  [ "$n" -eq 3 ]
}
prom_alert_firing() { # prom_alert_firing ALERTNAME: sent by this Prometheus to Alertmanager, for leaky-flask
  curl -sf "http://$NODE_IP:$AM_PORT/api/v2/alerts" | python3 -c '
import json, sys
name = sys.argv[1]
hits = [a for a in json.load(sys.stdin) if a["labels"].get("alertname") == name
        and a["labels"].get("prometheus") == "e2e" and a["labels"].get("workload") == "Deployment/leaky-flask"]
sys.exit(0 if hits else 1)' "$1"
}
check_prometheus() {
  prom_targets
  wait_for "operator, agent and cAdvisor targets up" 60 all_up || { promq 'up'; return 1; }
  wait_for "WorkloadMemoryLeak from Prometheus in Alertmanager" 90 prom_alert_firing WorkloadMemoryLeak || return 1
  wait_for "WorkloadOOMKilled from Prometheus in Alertmanager" 90 prom_alert_firing WorkloadOOMKilled || return 1
  curl -sf "http://$NODE_IP:$AM_PORT/api/v2/alerts" | python3 -c '
import json, sys
for a in json.load(sys.stdin):
    l = a["labels"]
    if l.get("prometheus") == "e2e":
        print("  from Prometheus:", l["alertname"], l.get("namespace"), l.get("workload"), "severity=" + l.get("severity", ""), "|", a["annotations"].get("summary"))' || return 1
  # Each query as Grafana would run it over the time the e2e has run, its variables at their defaults.
  local end q bad=0
  end=$(date +%s)
  while read -r q; do
    if ! curl -sf --get "$PROM_URL/api/v1/query_range" --data-urlencode "query=$(printf '%s' "$q" | python3 -c 'import json,sys; print(json.load(sys.stdin)["expr"])')" \
        --data-urlencode "start=$PROM_STARTED" --data-urlencode "end=$end" --data-urlencode step=15s \
        | python3 -c '
import json, math, sys
q = json.loads(sys.argv[1])
res = json.load(sys.stdin)["data"]["result"]
finite = [r for r in res if any(math.isfinite(float(v)) for _, v in r["values"])]
print("  %d series  %s (%s)" % (len(finite), q["panel"], q["ref"]))
sys.exit(0 if finite else 1)' "$q"; then
      echo "  no data: $q"; bad=$((bad + 1))
    fi
  done < <(python3 tests/chart/promql.py queries charts/leakhunt/dashboards/leakhunt.json)
  [ "$bad" -eq 0 ]
}
check "Prometheus: the chart's rules fire into Alertmanager; every dashboard query returns data" check_prometheus

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
  # And the analyzer pod's token is really bound by that RBAC: its write went through.
  [ "$(report '{.status.conditions[?(@.type=="Analysed")].status}')" = True ]
}
check "RBAC: least privilege per component" check_rbac

# The PID of a leakhunt process of this node's pods (another cluster on the machine may run its own);
# the newest, when a rollout leaves an old one stopping.
node_pid_of() {
  local p found=""
  for p in $(pgrep -f "^/usr/local/bin/leakhunt $1"); do
    grep -q "${CGROUP_ROOT##*/}/" "/proc/$p/cgroup" 2>/dev/null && found=$p
  done
  [ -n "$found" ] && echo "$found"
}
# mount_ro PID: the process's root filesystem is mounted read-only (mountinfo: field 5 the mount point,
# field 6 its options).
root_ro() { awk '$5 == "/" { print $6 }' "/proc/$1/mountinfo" | tail -1 | tr ',' '\n' | grep -qx ro; }
check_security() {
  local op ag
  op=$(node_pid_of operator) && ag=$(node_pid_of agent) || { echo "  operator or agent process not found"; return 1; }
  local op_uid op_caps ag_uid ag_caps
  op_uid=$(awk '/^Uid:/ {print $3}' "/proc/$op/status"); op_caps=$(awk '/^CapEff:/ {print $2}' "/proc/$op/status")
  ag_uid=$(awk '/^Uid:/ {print $3}' "/proc/$ag/status"); ag_caps=$(awk '/^CapEff:/ {print $2}' "/proc/$ag/status")
  echo "  operator: uid $op_uid, CapEff $op_caps; agent: uid $ag_uid, CapEff $ag_caps (CAP_SYS_PTRACE is bit 19)"
  [ "$op_uid" = 65532 ] && [ "$op_caps" = 0000000000000000 ] && root_ro "$op" || return 1
  [ "$ag_uid" = 0 ] && [ "$ag_caps" = 0000000000080000 ] && root_ro "$ag" || return 1
  # The analyzer Job: root only to read the 0600 snapshots, no capability, read-only root filesystem.
  local sc
  sc=$(kubectl -n $LH get jobs -o jsonpath='{.items[0].spec.template.spec.containers[0].securityContext}')
  echo "  analyzer Job: $sc"
  echo "$sc" | python3 -c 'import json, sys
sc = json.load(sys.stdin)
assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False, sc
assert sc["capabilities"] == {"drop": ["ALL"]}, sc' || return 1
  echo "  operator and agent root filesystems are read-only"
}
check "security: non-root operator, agent with exactly SYS_PTRACE, read-only root filesystems" check_security

check_unwatched() {
  hog_deployment $PY_IMAGE | kubectl -n $NS apply -f - >/dev/null
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
  worker_deployment prefork 64Mi respawn | kubectl -n $NS apply -f - >/dev/null || return 1
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

check_worker_then_exit() {
  # A worker OOM-killed, then the main process exits 0 by itself: containerd marks the container
  # OOMKilled anyway (kubernetes issue 104454). One kill happened, and one is counted: the agent's.
  worker_deployment onekill 64Mi exit | kubectl -n $NS apply -f - >/dev/null || return 1
  onekill() { kubectl -n $NS get leakreport deployment-onekill -o jsonpath="$1"; }
  wait_for "the container restarted after its worker's kill" 120 sh -c "[ \"\$(kubectl -n $NS get pods -l app=onekill -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')\" -ge 1 ]" || return 1
  local last
  last=$(kubectl -n $NS get pods -l app=onekill -o jsonpath='{.items[0].status.containerStatuses[0].lastState.terminated.reason} exit {.items[0].status.containerStatuses[0].lastState.terminated.exitCode}')
  echo "  the pod status says: $last"
  # Not the case under test unless containerd reported the exit this way.
  [ "$last" = "OOMKilled exit 0" ] || return 1
  sleep 5
  echo "  oomKills $(onekill '{.status.oomKills}'): $(onekill '{.status.incidents[?(@.reason=="OOMKilled")].message}')"
  [ "$(onekill '{.status.oomKills}')" = 1 ] || return 1
  onekill '{.status.incidents[*].message}' | grep -q 'worker process python3' || return 1
  kubectl -n $NS delete deployment onekill --wait=false >/dev/null
}
check "a worker's kill, then a clean exit containerd calls OOMKilled: counted once" check_worker_then_exit

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

agent_restarts() { kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}'; }
agent_ready() { [ "$(kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].status.containerStatuses[0].ready}')" = true ]; }

check_big_pair() {
  # A pair bigger than the analyzer Job's default limit (1Gi): the operator sizes the Job from the
  # memory the snapshots hold (uncompressed: the files are zstd, and a heap of small objects shrinks
  # to a tenth), 1.5 × that plus 128Mi within analyzer.maxMemory; the CPython analysis fits in it.
  # The agent captures 1 GiB processes within its own 512Mi limit: it buffers no more than its
  # cgroup has left (on this cgroup v1 node, too), and is not OOM-killed.
  local agent0
  agent0=$(agent_restarts)
  grow_configmap $NS || return 1
  { cat <<'YAML'
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: big-heap}
spec:
  selector: {matchLabels: {app: big-heap}}
  thresholds: {baseline: 50, nearLimit: 85}
  cooldown: 2h
  maxSnapshotSize: 2Gi
YAML
    echo ---
    grow_deployment big-heap 1150 40 1280Mi
  } | kubectl -n $NS apply -f - >/dev/null || return 1
  local big=deployment-big-heap
  big_report() { kubectl -n $NS get leakreport $big -o jsonpath="$1"; }
  wait_for "big-heap phase Analysed" 300 sh -c "[ \"\$(kubectl -n $NS get leakreport $big -o jsonpath='{.status.phase}')\" = Analysed ]" \
    || { echo "  phase: $(big_report '{.status.phase}') $(big_report '{.status.conditions[*].message}'); agent restarts $(agent_restarts) (before: $agent0)"; return 1; }
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
  [ "$(agent_restarts)" = "$agent0" ] || { echo "  the agent restarted during the hunt: $(agent_restarts) restarts, $agent0 before"; return 1; }
  local pair=0 s
  for s in $sizes; do pair=$((pair + s)); done
  [ "$pair" -gt $((1 << 30)) ] || { echo "  the pair is not bigger than 1Gi"; return 1; }
  [ "${limit:-0}" -ge "$pair" ] || return 1
  # The Python heap was walked, not only the generic census: the list that grew is named.
  case "$(big_report '{.status.suspects[0].path}')" in *__main__.data) ;; *) echo "  top suspect: $(big_report '{.status.suspects[0].path}'); notes: $(big_report '{.status.notes}')"; return 1 ;; esac
  # Snapshot B at 85 % of the limit did not push the pod over it.
  local restarts
  restarts=$(kubectl -n $NS get pods -l app=big-heap -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
  echo "  big-heap: restarts $restarts, oomKills $(big_report '{.status.oomKills}')"
  [ "$restarts" = 0 ] && [ "$(big_report '{.status.oomKills}')" = 0 ] || return 1
  kubectl -n $NS delete deployment big-heap --wait=true >/dev/null
  kubectl -n $NS delete leakwatch big-heap >/dev/null
}
check "a snapshot pair bigger than the analyzer's default limit gets a Job sized for it, analysed" check_big_pair

# pod_memory_file UID: the pod's memory usage file on the host (v1 or v2 layout).
pod_memory_file() {
  local cg
  cg=$(find "$CGROUP_ROOT" -maxdepth 4 -type d \( -name "pod$1" -o -name "*pod${1//-/_}.slice" \) | head -1)
  [ -n "$cg" ] || return 1
  if [ -f "$cg/memory.usage_in_bytes" ]; then echo "$cg/memory.usage_in_bytes"; else echo "$cg/memory.current"; fi
}

check_capture_not_charged() {
  # A process that holds 400 MiB, still; a LeakWatch that selects it only then, so snapshot A is taken of
  # memory that does not move. The pod's cgroup, read every 10 ms through the capture, must not move
  # either: the agent's reads and writes are charged to the agent.
  grow_configmap $NS || return 1
  grow_deployment still 400 200 640Mi | kubectl -n $NS apply -f - >/dev/null || return 1
  wait_for "the still process holding" 120 sh -c "kubectl -n $NS logs deploy/still 2>/dev/null | grep -q holding" || return 1
  local uid file
  uid=$(kubectl -n $NS get pods -l app=still -o jsonpath='{.items[0].metadata.uid}')
  file=$(pod_memory_file "$uid") || { echo "  no cgroup for pod $uid under $CGROUP_ROOT"; return 1; }
  python3 - "$file" "$DIR/still.range" <<'PY' &
import sys, time
lo = hi = None
end = time.monotonic() + 120
while time.monotonic() < end:
    v = int(open(sys.argv[1]).read())
    lo, hi = min(v, lo or v), max(v, hi or v)
    with open(sys.argv[2], "w") as f:
        f.write("%d %d\n" % (lo, hi))
    time.sleep(0.01)
PY
  local sampler=$!
  PIDS+=($sampler)
  sleep 1
  leakwatch still | kubectl -n $NS apply -f - >/dev/null || return 1
  local still=deployment-still
  wait_for "snapshot A of the still process" 90 sh -c "kubectl -n $NS get leakreport $still -o jsonpath='{.status.snapshots[0].role}' | grep -q A" || return 1
  sleep 2
  kill "$sampler" 2>/dev/null
  local lo hi
  read -r lo hi <"$DIR/still.range"
  echo "  snapshot A of $(kubectl -n $NS get leakreport $still -o jsonpath='{.status.snapshots[0].memory}') bytes; the pod's memory through it: $((lo >> 20))–$((hi >> 20)) MiB (range $(((hi - lo) >> 10)) KiB)"
  # Noise: the interpreter's own allocations while it sleeps, and page-table pages. A charged capture
  # would add the hundreds of MiB it read.
  [ $((hi - lo)) -lt $((8 << 20)) ] || return 1
  kubectl -n $NS delete leakwatch still >/dev/null
  kubectl -n $NS delete deployment still --wait=true >/dev/null
}
check "capture memory is charged to the agent: the pod's memory does not move through a capture" check_capture_not_charged

# container_pids POD_LABEL: the host PIDs in the first container of the pod with that app label.
container_pids() {
  local cid cg
  cid=$(kubectl -n $NS get pods -l app="$1" -o jsonpath='{.items[0].status.containerStatuses[0].containerID}')
  cid=${cid#*://}
  [ -n "$cid" ] || return 1
  cg=$(find "$CGROUP_ROOT" -maxdepth 5 -type d -name "*$cid*" | head -1)
  [ -n "$cg" ] && cat "$cg/cgroup.procs"
}

check_allocation_sites() {
  # LeakWatch allocationSites on a CPython 3.14 service that runs as another user (65534): the agent,
  # with CAP_SYS_PTRACE alone, starts tracemalloc in it at snapshot A (PEP 768), gives its memory at B
  # to the Job (left out of the native growth), and once the pair is analysed reads where the
  # suspect's items were allocated, at the address the Job kept for it; then tracing stops and
  # nothing of leakhunt's is left in the target (no file in its /tmp, no descriptor, no thread).
  grow_configmap $NS || return 1
  local line
  line=$(grep -n 'data.append(' tests/workloads/grow.py | cut -d: -f1)
  kubectl -n $NS apply -f - >/dev/null <<YAML || return 1
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: traced}
spec:
  selector: {matchLabels: {app: traced}}
  thresholds: {baseline: 25, nearLimit: 60}
  cooldown: 2h
  allocationSites: true
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: traced}
spec:
  replicas: 1
  selector: {matchLabels: {app: traced}}
  template:
    metadata: {labels: {app: traced}}
    spec:
      securityContext: {runAsUser: 65534, runAsGroup: 65534}
      containers:
        - name: app
          image: leakhunt.local/python:3.14-flask
          command: ["python3.14", "/app/grow.py"]
          env:
            - {name: TARGET_MIB, value: "190"}
            - {name: MIB_PER_SECOND, value: "1"}
          resources:
            requests: {memory: 256Mi}
            limits: {memory: 256Mi}
          volumeMounts:
            - {name: app, mountPath: /app}
      volumes:
        - name: app
          configMap: {name: grow}
YAML
  tr_report() { kubectl -n $NS get leakreport deployment-traced -o jsonpath="$1"; }
  wait_for "allocation sites in the report" 420 sh -c "kubectl -n $NS get leakreport deployment-traced -o jsonpath='{.status.suspects[0].allocationSites[0]}' | grep -q ." \
    || { echo "  phase: $(tr_report '{.status.phase}'); notes: $(tr_report '{.status.notes}')"; return 1; }
  echo "  suspect: $(tr_report '{.status.suspects[0].path}') $(tr_report '{.status.growth}')"
  echo "  sites: $(tr_report '{.status.suspects[0].allocationSites}')"
  echo "  notes: $(tr_report '{.status.notes}')"
  echo "  tracemalloc at B: $(tr_report '{.status.snapshots[?(@.role=="B")].tracerBytes}') bytes"
  case "$(tr_report '{.status.suspects[0].path}')" in *__main__.data) ;; *) return 1 ;; esac
  tr_report '{.status.suspects[0].allocationSites[0]}' | grep -Eq "^items allocated at grow\.py:$line .*\([0-9]+ % of the growth\)" || return 1
  [ "$(tr_report '{.status.snapshots[?(@.role=="B")].tracerBytes}')" -gt 0 ] || return 1
  [ -z "$(tr_report '{.status.suspects[*].address}')" ] || { echo "  an address is left in the report"; return 1; }
  tr_report '{.status.notes}' | grep -q 'tracemalloc started in pid' || return 1
  tr_report '{.status.notes}' | grep -q 'tracemalloc used' || return 1
  local pid
  pid=$(container_pids traced | head -1)
  [ -n "$pid" ] || { echo "  the target is gone"; return 1; }
  local left fds threads
  left=$(ls "/proc/$pid/root/tmp" | grep -c '^leakhunt-' || true)
  fds=$(ls -l "/proc/$pid/fd" | grep -c 'memfd:leakhunt' || true)
  threads=$(ls "/proc/$pid/task" | wc -l)
  echo "  the target afterwards: $left script directories, $fds leakhunt descriptors, $threads threads"
  [ "$left" = 0 ] && [ "$fds" = 0 ] && [ "$threads" = 1 ] || return 1
  [ "$(kubectl -n $NS get pods -l app=traced -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')" = 0 ] || return 1
  kubectl -n $NS delete deployment traced --wait=false >/dev/null
  kubectl -n $NS delete leakwatch traced >/dev/null
}
check "allocation sites: tracemalloc in a CPython 3.14 pod of another user names the line that allocated the growth" check_allocation_sites

check_java() {
  # An unmodified JVM (Debian's OpenJDK 17 runtime, no JDK tools in the image, no flag added) whose
  # static HashMap grows, under a limit its -Xmx does not fit: the agent takes two heap dumps through
  # HotSpot's attach mechanism, the Job diffs them, and the report names the static field, with the
  # JVM's pools at each snapshot and the misconfiguration.
  kubectl -n $NS apply -f - >/dev/null <<YAML || return 1
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: java}
spec:
  selector: {matchLabels: {app: java}}
  thresholds: {baseline: 50, nearLimit: 85}
  cooldown: 2h
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: java}
spec:
  replicas: 1
  selector: {matchLabels: {app: java}}
  template:
    metadata: {labels: {app: java}}
    spec:
      containers:
        - name: app
          image: leakhunt.local/java:17
          command: ["java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", "/app", "Shapes", "static-map", "run", "300"]
          resources:
            requests: {memory: 256Mi}
            limits: {memory: 256Mi}
YAML
  jr() { kubectl -n $NS get leakreport deployment-java -o jsonpath="$1"; }
  wait_for "the Java report Analysed" 420 sh -c "kubectl -n $NS get leakreport deployment-java -o jsonpath='{.status.phase}' | grep -qx Analysed" \
    || { echo "  phase: $(jr '{.status.phase}'); notes: $(jr '{.status.notes}')"; return 1; }
  echo "  verdict $(jr '{.status.verdict}'): $(jr '{.status.summary}')"
  echo "  held by: $(jr '{.status.suspects[0].referrers}')"
  jr '{.status.notes}' | tr -d '[]' | sed 's/","/\n/g' | grep -E 'heap dump|JVM at|misconfiguration' | cut -c1-160 | sed 's/^/  note: /'
  kubectl get leakreports -n $NS deployment-java | sed 's/^/  /'
  [ "$(jr '{.status.verdict}')" = Leak ] || return 1
  [ "$(jr '{.status.suspects[0].path}')" = Shapes.CACHE ] || return 1
  [ "$(jr '{.status.suspects[0].type}')" = java.util.HashMap ] || return 1
  jr '{.status.notes}' | grep -q 'a Java heap dump through HotSpot' || return 1
  jr '{.status.notes}' | grep -q 'JVM at snapshot A: heap' || return 1
  jr '{.status.notes}' | grep -q 'JVM at snapshot B: heap' || return 1
  jr '{.status.notes}' | grep -q 'a misconfiguration' || return 1
  # Nothing of leakhunt's is left in the JVM's /tmp (the dump directory, the attach trigger).
  local pid left
  pid=$(container_pids java | head -1)
  if [ -n "$pid" ]; then
    left=$(ls -A "/proc/$pid/root/tmp" "/proc/$pid/cwd" 2>/dev/null | grep -c -E '^leakhunt|^\.attach_pid' || true)
    echo "  leakhunt files left in the JVM's /tmp and working directory: $left"
    [ "$left" = 0 ] || return 1
  fi
  kubectl -n $NS delete deployment java --wait=false >/dev/null
  kubectl -n $NS delete leakwatch java >/dev/null
}
check "Java: two heap dumps of an unmodified JVM name its growing static field, with its pools and a misconfigured -Xmx" check_java

check_agent_killed() {
  # The agent SIGKILLed while it holds the target stopped for snapshot A: the kernel detaches a seized
  # target, so it runs on, untraced; the file being written has no name yet (O_TMPFILE), so nothing is
  # left. The restarted agent samples again, takes A, and when it is killed again with A recorded, its
  # successor voids that A with the reason instead of keeping a hunt no agent remembers.
  grow_deployment victim 500 250 800Mi | kubectl -n $NS apply -f - >/dev/null || return 1
  wait_for "the victim holding" 120 sh -c "kubectl -n $NS logs deploy/victim 2>/dev/null | grep -q holding" || return 1
  local target ag restarts0
  target=$(container_pids victim | head -1) && ag=$(node_pid_of agent) || { echo "  no target or agent pid"; return 1; }
  restarts0=$(agent_restarts)
  python3 - "$target" "$ag" "$DIR/victim.out" <<'PY' &
import os, signal, sys, time
target, agent, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def status():
    with open(f"/proc/{target}/status") as f:
        return dict(l.split(":\t", 1) for l in f.read().splitlines() if ":\t" in l)
end = time.monotonic() + 90
while time.monotonic() < end and status()["TracerPid"].strip() == "0":
    time.sleep(0.0005)
if status()["TracerPid"].strip() == "0":
    open(out, "w").write("never traced\n"); sys.exit(1)
os.kill(agent, signal.SIGKILL)
t = time.monotonic()
while time.monotonic() < t + 10:
    s = status()
    if s["TracerPid"].strip() == "0" and s["State"][0] not in "tT":
        open(out, "w").write("%.0f %s\n" % ((time.monotonic() - t) * 1000, s["State"].strip()))
        sys.exit(0)
    time.sleep(0.001)
open(out, "w").write("still traced or stopped: %s\n" % status()["State"]); sys.exit(1)
PY
  local watcher=$!
  PIDS+=($watcher)
  leakwatch victim | kubectl -n $NS apply -f - >/dev/null || return 1
  wait "$watcher"; local rc=$?
  echo "  agent $ag SIGKILLed with pid $target traced for snapshot A; the target: $(cat "$DIR/victim.out")"
  [ "$rc" = 0 ] || return 1
  local left
  left=$(find "$SNAPSHOTS" -path '*victim*' -type f 2>/dev/null)
  [ -z "$left" ] || { echo "  left on disk: $left"; return 1; }
  wait_for "the agent restarted and Ready" 120 sh -c "[ \"\$(kubectl -n $LH get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')\" -gt $restarts0 ]" || return 1
  wait_for "agent Ready" 120 agent_ready || return 1
  local vr=deployment-victim
  victim() { kubectl -n $NS get leakreport $vr -o jsonpath="$1"; }
  wait_for "snapshot A by the restarted agent" 120 sh -c "kubectl -n $NS get leakreport $vr -o jsonpath='{.status.snapshots[0].role}' | grep -q A" || return 1
  local a1
  a1=$(victim '{.status.snapshots[0].time}')
  echo "  no file left; the restarted agent took snapshot A at $a1"
  sleep 2
  ag=$(node_pid_of agent) || return 1
  restarts0=$(agent_restarts)
  local killed_at
  killed_at=$(date +%s)
  kill -KILL "$ag"
  wait_for "the agent restarted again" 120 sh -c "[ \"\$(kubectl -n $NS get leakreport $vr -o jsonpath='{.status.incidents[*].message}' | grep -c 'restarted before snapshot B')\" -ge 1 ]" || {
    echo "  incidents: $(victim '{.status.incidents[*].message}')"; return 1; }
  echo "  $(victim '{.status.incidents[?(@.reason=="BaselineReset")].message}')"
  wait_for "a new snapshot A" 120 sh -c "[ -n \"\$(kubectl -n $NS get leakreport $vr -o jsonpath='{.status.snapshots[0].time}')\" ] && [ \"\$(kubectl -n $NS get leakreport $vr -o jsonpath='{.status.snapshots[0].time}')\" != '$a1' ]" || return 1
  # Sampling resumed: the newest memory sample is younger than the restart.
  local last
  last=$(victim '{.status.memory.samples[-1:].time}')
  echo "  new snapshot A at $(victim '{.status.snapshots[0].time}'); last memory sample $last"
  [ "$(date -u -d "$last" +%s)" -gt "$killed_at" ] || return 1
  kubectl -n $NS delete leakwatch victim >/dev/null
  kubectl -n $NS delete deployment victim --wait=true >/dev/null
  wait_for "agent Ready" 120 agent_ready
}
check "the agent killed mid-capture: target untraced, no partial file; a restarted agent voids its predecessor's A" check_agent_killed

check_node_restarts() {
  # During a hunt (A taken, B to come), containerd, then the kubelet, then both (the node's services
  # stopped and started again) are restarted: the containers live on (their shims do), the agent
  # keeps sampling, B is taken and the pair analysed.
  { leakwatch slow
    echo ---
    grow_deployment slow 300 4 320Mi
  } | kubectl -n $NS apply -f - >/dev/null || return 1
  local sr=deployment-slow
  slow() { kubectl -n $NS get leakreport $sr -o jsonpath="$1"; }
  wait_for "snapshot A of the slow grower" 180 sh -c "kubectl -n $NS get leakreport $sr -o jsonpath='{.status.phase}' | grep -q Baseline" || return 1
  local t=$SECONDS
  tests/node/node.sh restart "$DIR" containerd | sed 's/^/  /' || return 1
  tests/node/node.sh restart "$DIR" kubelet | sed 's/^/  /' || return 1
  tests/node/node.sh restart "$DIR" node | sed 's/^/  /' || return 1
  wait_for "node Ready after the restarts" 60 kubectl wait --for=condition=Ready "node/$NODE" --timeout=5s || return 1
  echo "  containerd, the kubelet, then both restarted in $((SECONDS - t)) s, during the hunt"
  wait_for "the slow grower's pair analysed" 240 sh -c "kubectl -n $NS get leakreport $sr -o jsonpath='{.status.phase}' | grep -q Analysed" || {
    echo "  phase $(slow '{.status.phase}'): $(slow '{.status.incidents[*].message}')"; return 1; }
  local restarts
  restarts=$(kubectl -n $NS get pods -l app=slow -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
  echo "  analysed: $(slow '{.status.summary}'); the container's restarts: $restarts"
  [ "$restarts" = 0 ] || return 1
  case "$(slow '{.status.suspects[0].path}')" in *__main__.data) ;; *) return 1 ;; esac
  kubectl -n $NS delete leakwatch slow >/dev/null
  kubectl -n $NS delete deployment slow --wait=true >/dev/null
}
check "containerd, the kubelet, and both restarted during a hunt: the pair is still taken and analysed" check_node_restarts

check_missing_capability() {
  # The agent without CAP_SYS_PTRACE: a capture fails, and the Event says what is missing. Then the
  # chart's capabilities again.
  helm upgrade leakhunt charts/leakhunt -n $LH --reuse-values --wait --timeout 120s \
    --set-json 'agent.securityContext.capabilities.add=[]' >/dev/null || return 1
  kubectl -n $LH rollout status daemonset/leakhunt-agent --timeout=90s >/dev/null || return 1
  local ag
  ag=$(node_pid_of agent) || return 1
  echo "  agent restarted with CapEff $(awk '/^CapEff:/ {print $2}' "/proc/$ag/status")"
  [ "$(awk '/^CapEff:/ {print $2}' "/proc/$ag/status")" = 0000000000000000 ] || return 1
  { cat <<'YAML'
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: nocap}
spec:
  selector: {matchLabels: {app: nocap}}
  thresholds: {baseline: 50, nearLimit: 85}
YAML
    echo ---
    grow_deployment nocap 100 20 160Mi
  } | kubectl -n $NS apply -f - >/dev/null || return 1
  nocap_events() {
    kubectl -n $NS get events --field-selector reason=CaptureFailed,involvedObject.kind=Pod \
      -o jsonpath='{range .items[*]}{.involvedObject.name} {.message}{"\n"}{end}' | grep '^nocap-'
  }
  wait_for "CaptureFailed Event on the nocap pod" 120 nocap_events || return 1
  local msg
  msg=$(nocap_events | head -1)
  echo "  event: $msg"
  echo "$msg" | grep -q CAP_SYS_PTRACE || return 1
  kubectl -n $NS delete deployment nocap --wait=true >/dev/null
  kubectl -n $NS delete leakwatch nocap >/dev/null
  helm upgrade leakhunt charts/leakhunt -n $LH --reuse-values --wait --timeout 120s \
    --set-json 'agent.securityContext.capabilities.add=["SYS_PTRACE"]' >/dev/null || return 1
  kubectl -n $LH rollout status daemonset/leakhunt-agent --timeout=90s >/dev/null || return 1
  ag=$(node_pid_of agent) || return 1
  echo "  restored: agent CapEff $(awk '/^CapEff:/ {print $2}' "/proc/$ag/status")"
  [ "$(awk '/^CapEff:/ {print $2}' "/proc/$ag/status")" = 0000000000080000 ]
}
check "without CAP_SYS_PTRACE a capture fails with an Event that names it" check_missing_capability

check_report_pages() {
  # ui.enabled: the operator serves the report pages on its admin port (what `kubectl port-forward`
  # reaches): the list, and the leaky service's report as the page `leakhunt report --html` writes, with
  # a policy that lets it load and run nothing. Nothing but GET.
  helm upgrade leakhunt charts/leakhunt -n $LH --reuse-values --wait --timeout 120s --set ui.enabled=true >/dev/null || return 1
  kubectl -n $LH rollout status deployment/leakhunt-operator --timeout=90s >/dev/null || return 1
  local url
  url=$(pod_url operator) || return 1
  wait_for "operator /readyz after the upgrade" 60 curl -sf "$url/readyz" || return 1
  curl -sf "$url/reports" -o "$DIR/reports.html" || return 1
  grep -q 'href="/reports/shop/deployment-leaky-flask"' "$DIR/reports.html" || { echo "  the list lacks the report"; return 1; }
  curl -sf -D "$DIR/report.headers" "$url/reports/shop/deployment-leaky-flask" -o "$DIR/report.html" || return 1
  grep -q 'Profiler.results' "$DIR/report.html" && grep -q '<svg' "$DIR/report.html" || { echo "  the page lacks the suspect or the timeline"; return 1; }
  grep -qi "^content-security-policy: default-src 'none'" "$DIR/report.headers" || return 1
  local missing post
  missing=$(curl -s -o /dev/null -w '%{http_code}' "$url/reports/shop/no-such-report")
  post=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/reports")
  echo "  /reports lists it; its page: $(wc -c <"$DIR/report.html") bytes with the timeline; unknown report $missing, POST $post"
  [ "$missing" = 404 ] && [ "$post" = 405 ]
}
check "ui.enabled: the operator serves the report pages, read-only" check_report_pages

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
  # No leakhunt process left in this node's cgroups (another cluster on the machine may run its own).
  local p left=""
  for p in $(pgrep -f '^/usr/local/bin/leakhunt (operator|agent|analyze-job)'); do
    grep -q "${CGROUP_ROOT##*/}/" "/proc/$p/cgroup" 2>/dev/null && left="$left $p"
  done
  [ -z "$left" ] || { echo "  leakhunt processes still running:$left"; return 1; }
  echo "  uninstalled: no pods, Jobs or processes left"
}
check "helm uninstall leaves nothing running" check_uninstall

# Two replicas: only one leads; when it stops, the other takes over. Run as local processes against the
# same API server, after the chart is gone: stopping one is then a plain signal, timed from here.
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
