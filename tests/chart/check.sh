#!/usr/bin/env bash
# Static checks of the Helm chart (charts/leakhunt), no cluster needed (`make chart-check`, part of `make test`):
#   1. the chart's CRDs are the generated ones (charts/leakhunt/crds/ is a copy of crds/);
#   2. `helm lint --strict` passes with default values and with every optional feature on;
#   3. the rendered manifests keep the security model: per-component RBAC, no Secrets or ConfigMaps for
#      anyone, the analyzer only on leakreports/status, a comment on every RBAC rule, the agent with hostPID
#      and SYS_PTRACE but not privileged, the operator non-root; the optional features render what they should;
#   4. values.schema.json rejects bad values, and the template checks reject inconsistent ones;
#   5. promtool: the PrometheusRule's rules check and pass their unit tests (tests/chart/rules.test.yaml),
#      and every query of the Grafana dashboard parses.
# Prints "chart-check: N passed, M failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
CHART=charts/leakhunt
PASSED=0
FAILED=0

pass() { PASSED=$((PASSED + 1)); echo "ok   $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }

for tool in helm promtool python3; do
  command -v "$tool" >/dev/null || { echo "chart-check: missing prerequisite: $tool (make tools)" >&2; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "chart-check: python3 needs PyYAML (.ci/install)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/leakhunt-chart-check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- 1. CRDs -------------------------------------------------------------------------------------------
if cmp -s crds/leakhunt.dev.yaml $CHART/crds/leakhunt.dev.yaml; then
  pass "charts/leakhunt/crds/leakhunt.dev.yaml is crds/leakhunt.dev.yaml"
else
  fail "charts/leakhunt/crds/leakhunt.dev.yaml differs from crds/leakhunt.dev.yaml (cp crds/leakhunt.dev.yaml $CHART/crds/):"
  diff -u crds/leakhunt.dev.yaml $CHART/crds/leakhunt.dev.yaml | head -20
fi

# --- 2. lint and render ----------------------------------------------------------------------------------
# Every optional feature at once: monitoring, network policies, a webhook URL from a Secret, Alertmanager
# with labels, a namespace list, two replicas.
cat >"$TMP/all-on.values.yaml" <<'YAML'
imagePullSecrets: [{name: regcred}]
operator:
  replicas: 2
  watchNamespaces: [shop, payments]
  extraArgs: ["--log=debug"]
agent:
  priorityClassName: system-node-critical
alerts:
  events: false
  allowedUrlPrefixes: ["https://hooks.slack.com/", "http://alertmanager.monitoring:9093/"]
  webhook:
    format: slack
    existingSecret: leakhunt-slack
    existingSecretKey: webhook-url
  alertmanager:
    url: http://alertmanager.monitoring:9093
    labels: {team: payments, severity: page}
serviceMonitor:
  enabled: true
  labels: {release: prometheus}
prometheusRule:
  enabled: true
networkPolicy:
  enabled: true
ui:
  enabled: true
grafana:
  dashboard:
    enabled: true
    annotations: {grafana_folder: leakhunt}
YAML

if out=$(helm lint --strict $CHART 2>&1); then pass "helm lint --strict (default values)"; else fail "helm lint --strict (default values)"; echo "$out"; fi
if out=$(helm lint --strict $CHART -f "$TMP/all-on.values.yaml" 2>&1); then pass "helm lint --strict (every feature on)"; else fail "helm lint --strict (every feature on)"; echo "$out"; fi

render() { # render NAME [helm args...]: renders to $TMP/NAME.yaml
  local name=$1
  shift
  if helm template leakhunt $CHART --namespace leakhunt "$@" >"$TMP/$name.yaml" 2>"$TMP/$name.err"; then
    pass "helm template ($name)"
  else
    fail "helm template ($name)"; cat "$TMP/$name.err"
  fi
}
render default
render all-on -f "$TMP/all-on.values.yaml"
render plain-webhook --set alerts.webhook.url=https://hooks.example.com/leakhunt

# --- 3. what the manifests say ---------------------------------------------------------------------------
python3 - "$TMP" "$CHART" <<'PY' || { echo "FAIL the manifest checks stopped with an error"; FAILED=$((FAILED + 1)); }
import glob, os, re, sys
import yaml

tmp, chart = sys.argv[1], sys.argv[2]
failures = 0
passes = 0

def check(cond, what, detail=""):
    global failures, passes
    if cond:
        passes += 1
        print("ok   " + what)
    else:
        failures += 1
        print("FAIL " + what + (f": {detail}" if detail else ""))

def load(name):
    with open(os.path.join(tmp, name + ".yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]

def one(docs, kind, name):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]

def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}

def grants(rule):
    return {(g, r) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])}

default, all_on, plain = load("default"), load("all-on"), load("plain-webhook")

for label, docs in (("default", default), ("all-on", all_on)):
    # No role anywhere may touch Secrets or ConfigMaps, nor use wildcards.
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    bad = [(r["metadata"]["name"], rule) for r in roles for rule in r.get("rules", [])
           if {"secrets", "configmaps", "*"} & set(rule.get("resources", []))
           or "*" in rule.get("verbs", []) or "*" in rule.get("apiGroups", [])]
    check(not bad, f"{label}: no rule grants secrets, configmaps or wildcards", bad)
    check({r["metadata"]["name"] for r in find(docs, "ClusterRole")}
          == {"leakhunt-operator", "leakhunt-agent", "leakhunt-analyzer"},
          f"{label}: one ClusterRole per component")
    # Every role is bound to its own component's ServiceAccount.
    for b in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        subjects = [(s["kind"], s["name"], s.get("namespace")) for s in b["subjects"]]
        check(subjects == [("ServiceAccount", b["roleRef"]["name"], "leakhunt")],
              f"{label}: {b['kind']} {b['metadata']['name']} binds only ServiceAccount {b['roleRef']['name']}")

# Exact RBAC per component.
def rules(docs, kind, name):
    out = {}
    for rule in one(docs, kind, name)["rules"]:
        for g, r in grants(rule):
            out.setdefault((g, r), set()).update(rule["verbs"])
    return out

R = "get list watch".split()
check(rules(default, "ClusterRole", "leakhunt-analyzer")
      == {("leakhunt.dev", "leakreports/status"): {"get", "update"}},
      "analyzer ClusterRole: only get/update on leakreports/status")
op = rules(default, "ClusterRole", "leakhunt-operator")
check(op == {
    ("", "pods"): set(R),
    ("apps", "replicasets"): {"get"},
    ("batch", "jobs"): {"get"},
    ("leakhunt.dev", "leakreports"): set(R) | {"create"},
    ("leakhunt.dev", "leakreports/status"): {"get", "update"},
    ("leakhunt.dev", "leakwatches"): set(R),
    ("leakhunt.dev", "leakwatches/status"): {"patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}, "operator ClusterRole is exactly the documented one", sorted(op.items()))
ag = rules(default, "ClusterRole", "leakhunt-agent")
check(ag == {
    ("", "pods"): set(R),
    ("apps", "replicasets"): {"get"},
    ("batch", "jobs"): {"get"},
    ("leakhunt.dev", "leakwatches"): set(R),
    ("leakhunt.dev", "leakreports"): {"get", "list", "create"},
    ("leakhunt.dev", "leakreports/status"): {"get", "update"},
    ("events.k8s.io", "events"): {"create", "patch"},
}, "agent ClusterRole is exactly the documented one", sorted(ag.items()))
role = one(default, "Role", "leakhunt-operator")
check(role["metadata"]["namespace"] == "leakhunt"
      and rules(default, "Role", "leakhunt-operator") == {
          ("batch", "jobs"): {"create", "delete", "get", "list", "watch"},
          ("coordination.k8s.io", "leases"): {"get", "create", "update"}},
      "operator Role (release namespace): analyzer Jobs and the leader Lease only")
lease_rules = [r for r in role["rules"] if "leases" in r["resources"] and "update" in r["verbs"]]
check(lease_rules and all(r.get("resourceNames") == ["leakhunt-operator"] for r in lease_rules),
      "operator may update only its own Lease (resourceNames)")

# A comment line (why) right above every rule, in the templates and so in the rendered output.
for path in sorted(glob.glob(os.path.join(chart, "templates", "*.yaml"))):
    lines = open(path).read().splitlines()
    in_rules = False
    missing = []
    nrules = 0
    for i, line in enumerate(lines):
        if re.match(r"^rules:\s*$", line):
            in_rules = True
            continue
        if in_rules and re.match(r"^\S", line):
            in_rules = False
        if in_rules and re.match(r"^\s*- apiGroups:", line):
            nrules += 1
            if not re.match(r"^\s*#\s*\S", lines[i - 1]):
                missing.append(i + 1)
    if "rbac" in os.path.basename(path):
        check(nrules and not missing, f"{os.path.basename(path)}: a comment line above each of its {nrules} rules",
              f"rules at lines {missing}")

# Agent DaemonSet: hostPID, SYS_PTRACE and nothing else, never privileged or hostNetwork; root-only bits.
ds = one(default, "DaemonSet", "leakhunt-agent")["spec"]["template"]["spec"]
agent = ds["containers"][0]
sc = agent["securityContext"]
check(ds.get("hostPID") is True, "agent: hostPID")
check(not ds.get("hostNetwork") and not ds.get("hostIPC"), "agent: no hostNetwork, no hostIPC")
check(sc.get("privileged") is not True and sc.get("allowPrivilegeEscalation") is False,
      "agent: not privileged, no privilege escalation")
check(sc.get("capabilities") == {"drop": ["ALL"], "add": ["SYS_PTRACE"]},
      "agent: capabilities drop ALL, add only SYS_PTRACE", sc.get("capabilities"))
check(sc.get("readOnlyRootFilesystem") is True, "agent: read-only root filesystem")
check(agent["args"] == ["agent"], "agent: runs `leakhunt agent`")
check(ds["tolerations"] == [{"operator": "Exists"}], "agent: tolerates every taint by default")
mounts = {m["name"]: m for m in agent["volumeMounts"]}
vols = {v["name"]: v for v in ds["volumes"]}
check(mounts["cgroup"].get("readOnly") is True and vols["cgroup"]["hostPath"]["path"] == "/sys/fs/cgroup"
      and mounts["cgroup"]["mountPath"] == "/host/cgroup" == env_of(agent)["LEAKHUNT_CGROUP_ROOT"]["value"],
      "agent: host cgroup tree mounted read-only at /host/cgroup, not over the container's /sys/fs/cgroup")
check(not mounts["snapshots"].get("readOnly")
      and vols["snapshots"]["hostPath"] == {"path": "/var/lib/leakhunt/snapshots", "type": "DirectoryOrCreate"},
      "agent: snapshot hostPath, DirectoryOrCreate, writable")
aenv = env_of(agent)
check(aenv["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", "agent: NODE_NAME from spec.nodeName")
check({k: aenv[k].get("value") for k in ("LEAKHUNT_INTERVAL", "LEAKHUNT_BASELINE", "LEAKHUNT_NEAR_LIMIT",
                                         "LEAKHUNT_COOLDOWN", "LEAKHUNT_MAX_SNAPSHOT_SIZE", "LEAKHUNT_METRICS_ADDR")}
      == {"LEAKHUNT_INTERVAL": "1s", "LEAKHUNT_BASELINE": "50", "LEAKHUNT_NEAR_LIMIT": "85",
          "LEAKHUNT_COOLDOWN": "10m", "LEAKHUNT_MAX_SNAPSHOT_SIZE": "1Gi", "LEAKHUNT_METRICS_ADDR": "0.0.0.0:8081"},
      "agent: default flags")

# Operator Deployment: non-root, no capabilities, probes on the metrics port, its flags.
dep = one(default, "Deployment", "leakhunt-operator")["spec"]["template"]["spec"]
opc = dep["containers"][0]
psc, osc = dep["securityContext"], opc["securityContext"]
check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532
      and psc.get("seccompProfile") == {"type": "RuntimeDefault"},
      "operator: non-root uid 65532, seccomp RuntimeDefault")
check(osc.get("readOnlyRootFilesystem") is True and osc.get("allowPrivilegeEscalation") is False
      and osc.get("capabilities") == {"drop": ["ALL"]}, "operator: read-only root, no capabilities")
check(not dep.get("hostPID") and not dep.get("hostNetwork"), "operator: no host namespaces")
check(opc["args"] == ["operator"] and opc["image"] == "leakhunt:0.1.0"
      and opc["imagePullPolicy"] == "IfNotPresent", "operator: `leakhunt operator`, image leakhunt:<appVersion>")
check(opc["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
      and opc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
      and opc["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
      "operator: /livez and /readyz on the metrics port 8080")
oenv = env_of(opc)
check(oenv["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
      and oenv["LEAKHUNT_IMAGE"]["value"] == "leakhunt:0.1.0"
      and oenv["LEAKHUNT_ANALYZER_SERVICE_ACCOUNT"]["value"] == "leakhunt-analyzer"
      and oenv["LEAKHUNT_SNAPSHOT_DIR"]["value"] == aenv["LEAKHUNT_SNAPSHOT_DIR"]["value"]
      and oenv["LEAKHUNT_LEASE_NAME"]["value"] == "leakhunt-operator",
      "operator: namespace, analyzer image/ServiceAccount, the agent's snapshot dir, its Lease")
check("LEAKHUNT_WATCH_NAMESPACES" not in oenv and "LEAKHUNT_WEBHOOK_URL" not in oenv
      and "LEAKHUNT_ALERTMANAGER_URL" not in oenv, "operator (default): all namespaces, no webhook, no Alertmanager")
check(oenv["LEAKHUNT_ALLOWED_ALERT_URLS"]["value"] == "" and oenv["LEAKHUNT_EVENTS"]["value"] == "true"
      and aenv["LEAKHUNT_EVENTS"]["value"] == "true",
      "default: Events on (operator and agent), LeakWatches may not route alerts to URLs of their own")
check({s["metadata"]["name"] for s in find(default, "ServiceAccount")}
      == {"leakhunt-operator", "leakhunt-agent", "leakhunt-analyzer"}, "one ServiceAccount per component")
check(not find(default, "ServiceMonitor") and not find(default, "PrometheusRule")
      and not find(default, "NetworkPolicy") and not find(default, "Secret"),
      "default: no ServiceMonitor, PrometheusRule, NetworkPolicy or Secret")
svc = {s["metadata"]["name"]: s["spec"] for s in find(default, "Service")}
check(svc["leakhunt-agent"].get("clusterIP") == "None"
      and [p["name"] for s in svc.values() for p in s["ports"]] == ["metrics", "metrics"],
      "metrics Services: operator, and headless agent")

# Standard labels on everything.
need = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"}
unlabelled = [f"{d['kind']}/{d['metadata']['name']}" for d in default + all_on
              if not need <= d["metadata"].get("labels", {}).keys()]
check(not unlabelled, "standard labels on every object", unlabelled)

# Every optional feature on.
dep2 = one(all_on, "Deployment", "leakhunt-operator")
oenv2 = env_of(dep2["spec"]["template"]["spec"]["containers"][0])
check(dep2["spec"]["replicas"] == 2 and oenv2["LEAKHUNT_LEADER_ELECTION"]["value"] == "true", "all-on: 2 replicas, leader election")
check(oenv2["LEAKHUNT_WEBHOOK_URL"] == {"name": "LEAKHUNT_WEBHOOK_URL", "valueFrom": {"secretKeyRef":
      {"name": "leakhunt-slack", "key": "webhook-url"}}} and oenv2["LEAKHUNT_WEBHOOK_FORMAT"]["value"] == "slack",
      "all-on: webhook URL from the existing Secret (secretKeyRef), Slack format")
check(oenv2["LEAKHUNT_ALERTMANAGER_URL"]["value"] == "http://alertmanager.monitoring:9093"
      and oenv2["LEAKHUNT_ALERT_LABELS"]["value"] == "severity=page,team=payments",
      "all-on: Alertmanager URL and labels (k=v,k=v)")
check(oenv2["LEAKHUNT_WATCH_NAMESPACES"]["value"] == "shop,payments", "all-on: watched namespaces")
check(oenv2["LEAKHUNT_UI"]["value"] == "true" and "LEAKHUNT_UI" not in oenv,
      "ui.enabled: the operator serves the report pages (off by default)")
aenv2 = env_of(one(all_on, "DaemonSet", "leakhunt-agent")["spec"]["template"]["spec"]["containers"][0])
check(oenv2["LEAKHUNT_ALLOWED_ALERT_URLS"]["value"] == "https://hooks.slack.com/,http://alertmanager.monitoring:9093/"
      and oenv2["LEAKHUNT_EVENTS"]["value"] == "false" and aenv2["LEAKHUNT_EVENTS"]["value"] == "false",
      "all-on: allowed LeakWatch URL prefixes; Events off in operator and agent")
check(dep2["spec"]["template"]["spec"]["containers"][0]["args"] == ["operator", "--log=debug"], "all-on: extraArgs")
check(all(s.get("imagePullSecrets") == [{"name": "regcred"}] for s in find(all_on, "ServiceAccount")),
      "all-on: pull secrets on every ServiceAccount (the analyzer Jobs inherit them)")
sm = find(all_on, "ServiceMonitor")
check(len(sm) == 1 and sm[0]["metadata"]["labels"].get("release") == "prometheus"
      and sm[0]["spec"]["endpoints"][0]["port"] == "metrics", "all-on: ServiceMonitor on the metrics ports")
pr = find(all_on, "PrometheusRule")
alerts = {r["alert"]: r["expr"] for g in pr[0]["spec"]["groups"] for r in g["rules"]} if pr else {}
check(set(alerts) == {"WorkloadMemoryLeak", "WorkloadOOMKilled", "LeakhuntReconcileErrors"}
      and "leakhunt_leak_detected" in alerts["WorkloadMemoryLeak"]
      and "increase(leakhunt_oom_kills_total[15m])" in alerts["WorkloadOOMKilled"]
      and "leakhunt_reconcile_errors_total" in alerts["LeakhuntReconcileErrors"],
      "all-on: PrometheusRule with the three alerts")
netpols = {n["metadata"]["name"]: n["spec"] for n in find(all_on, "NetworkPolicy")}
check(set(netpols) == {"leakhunt-operator", "leakhunt-agent"}, "all-on: NetworkPolicies for operator and agent")
if "leakhunt-operator" in netpols:
    np_op = netpols["leakhunt-operator"]
    egress_ports = {p["port"] for rule in np_op["egress"] for p in rule["ports"]}
    check(np_op["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}],
          "all-on: operator ingress only to the metrics port")
    check(egress_ports == {53, 443, 6443, 9093}, "all-on: operator egress only to DNS, API server, alert endpoints",
          egress_ports)
dash_cm = find(all_on, "ConfigMap", "leakhunt-dashboard")
with open(os.path.join(chart, "dashboards", "leakhunt.json")) as f:
    dash_file = f.read()
check(len(dash_cm) == 1 and dash_cm[0]["metadata"]["labels"].get("grafana_dashboard") == "1"
      and dash_cm[0]["metadata"]["annotations"] == {"grafana_folder": "leakhunt"}
      and dash_cm[0]["data"]["leakhunt.json"] == dash_file.rstrip("\n")
      and not find(default, "ConfigMap"),
      "grafana.dashboard.enabled: the dashboard ConfigMap for the Grafana sidecar (off by default)")
import json
dash = json.loads(dash_file)
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
metrics = set(re.findall(r"\b(leakhunt_[a-z_]+|container_[a-z_]+|up)\b(?=\s*[{(\[)]|\s*$|\s)", " ".join(exprs)))
check(set(m for m in metrics if not m.startswith("leakhunt_")) <= {"container_memory_working_set_bytes", "up"},
      "the dashboard reads leakhunt's metrics and cAdvisor's only", metrics)
check(dash["uid"] == "leakhunt-overview" and len(exprs) >= 15
      and all(t["datasource"]["uid"] == "${datasource}" for p in dash["panels"] for t in p.get("targets", [])),
      "the dashboard: a stable uid, every query on the chosen Prometheus data source")
penv = env_of(one(plain, "Deployment", "leakhunt-operator")["spec"]["template"]["spec"]["containers"][0])
check(penv["LEAKHUNT_WEBHOOK_URL"].get("value") == "https://hooks.example.com/leakhunt",
      "plain webhook URL as an environment value")

with open(os.path.join(tmp, "counts"), "w") as f:
    f.write(f"{passes} {failures}\n")
PY
if read -r p f <"$TMP/counts" 2>/dev/null; then
  PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
fi

# --- 4. bad values fail ----------------------------------------------------------------------------------
rejects() { # rejects WHAT EXPECTED-MESSAGE helm-args...
  local what=$1 expect=$2
  shift 2
  if helm template leakhunt $CHART "$@" >/dev/null 2>"$TMP/reject.err"; then
    fail "rejects $what: rendered without error"
  elif grep -q -- "$expect" "$TMP/reject.err"; then
    pass "rejects $what"
  else
    fail "rejects $what, but not with '$expect':"; cat "$TMP/reject.err"
  fi
}
rejects "agent.interval=5 (a number, not a duration)" "/agent/interval" --set agent.interval=5
rejects "agent.cooldown=10min" "/agent/cooldown" --set agent.cooldown=10min
rejects "image.pullPolicy=Sometimes" "/image/pullPolicy" --set image.pullPolicy=Sometimes
rejects "alerts.webhook.format=xml" "/alerts/webhook/format" --set alerts.webhook.format=xml
rejects "an allowed URL prefix that is not http(s)" "/alerts/allowedUrlPrefixes/0" --set 'alerts.allowedUrlPrefixes={ftp://x}'

rejects "analyzer memory limit 'lots'" "/analyzer/resources/limits/memory" --set analyzer.resources.limits.memory=lots
rejects "analyzer maxMemory 'lots'" "/analyzer/maxMemory" --set analyzer.maxMemory=lots
rejects "an unknown top-level key" "additional properties 'colour'" --set colour=blue
rejects "an unknown operator key" "additional properties 'replica'" --set operator.replica=2
rejects "a comma in an Alertmanager label" "/alerts/alertmanager/labels" --set-string 'alerts.alertmanager.labels.team=a\,b'
rejects "baseline above nearLimit" "must be below" --set agent.thresholds.baseline=90
rejects "2 replicas without leader election" "needs operator.leaderElection" --set operator.replicas=2,operator.leaderElection=false
if helm lint --strict $CHART --set image.pullPolicy=Sometimes >/dev/null 2>&1; then
  fail "helm lint accepts image.pullPolicy=Sometimes"
else
  pass "helm lint rejects image.pullPolicy=Sometimes"
fi

# --- 5. promtool ------------------------------------------------------------------------------------------
# The rules as the PrometheusRule renders them, beside their unit tests (rule_files is relative to the test).
if python3 tests/chart/promql.py rules "$TMP/all-on.yaml" "$TMP/rules.yaml" && cp tests/chart/rules.test.yaml "$TMP/"; then
  if out=$(promtool check rules "$TMP/rules.yaml" 2>&1); then pass "promtool check rules (the PrometheusRule)"; else fail "promtool check rules"; echo "$out"; fi
  if out=$(cd "$TMP" && promtool test rules rules.test.yaml 2>&1); then
    pass "promtool test rules (tests/chart/rules.test.yaml)"
  else
    fail "promtool test rules (tests/chart/rules.test.yaml)"; echo "$out"
  fi
else
  fail "the PrometheusRule could not be made a rule file"
fi
if python3 tests/chart/promql.py dashboard-rules $CHART/dashboards/leakhunt.json "$TMP/dashboard.yaml" \
  && out=$(promtool check rules "$TMP/dashboard.yaml" 2>&1); then
  pass "promtool parses every dashboard query ($(grep -c 'record:' "$TMP/dashboard.yaml"))"
else
  fail "a dashboard query does not parse"; echo "${out:-}"
fi

echo "chart-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
