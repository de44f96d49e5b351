# Shared by the shell tests against the test environment (tests/smoke/smoke.sh, tests/e2e/e2e.sh):
# source it after setting SUITE (the name every line is prefixed with). Provides the counters,
# `check NAME COMMAND...`, `wait_for DESCRIPTION SECONDS COMMAND...`, `fail_now MESSAGE`, `free_ports N`,
# `hog_deployment IMAGE`, `worker_deployment NAME LIMIT THEN`, `grow_configmap NAMESPACE`,
# `grow_deployment NAME TARGET_MIB MIB_PER_SECOND LIMIT`, `leakwatch NAME`, `on_node NODE` and `summary`
# (the last lines, and the suite's exit status).
T0=$(date +%s)
PASSED=0
FAILED=0
FAILURES=()

fail_now() { echo "$SUITE: $*" >&2; FAILED=$((FAILED + 1)); exit 1; }

# free_ports N: N distinct free loopback ports on one line (held together while chosen, so they differ).
free_ports() {
  python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))' "$1"
}

# hog_deployment IMAGE: the YAML of Deployment `hog`, whose Python container allocates 4 MiB every
# 20 ms (touched pages: really charged to its cgroup) until the kernel OOM-kills it at its 64Mi limit.
hog_deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: hog}
spec:
  replicas: 1
  selector: {matchLabels: {app: hog}}
  template:
    metadata: {labels: {app: hog}}
    spec:
      containers:
        - name: hog
          image: $1
          imagePullPolicy: IfNotPresent
          command: ["python3", "-c"]
          args:
            - |
              import time
              chunks = []
              while True:
                  chunks.append(b"x" * (4 << 20))
                  time.sleep(0.02)
          resources:
            requests: {memory: 32Mi}
            limits: {memory: 64Mi}
YAML
}

# python_deployment NAME CONTAINER: the head of Deployment NAME's YAML, up to the image of its one
# Python container; the caller writes the rest of the container.
python_deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers:
        - name: $2
          image: leakhunt.local/python:3-flask
YAML
}

# worker_deployment NAME LIMIT THEN: the YAML of Deployment NAME, a pre-fork server in miniature: a
# Python parent whose worker process grows 2 MiB every 0.25 s until the kernel kills it at LIMIT. THEN
# is what the parent does once its worker is gone: `respawn` (another worker, for ever), `sleep`, or
# `exit` (exit 0 after 8 s). With `sleep` and `exit` a marker in an emptyDir makes the restarted
# container only sleep: one kill in all.
worker_deployment() {
  python_deployment "$1" server
  cat <<YAML
          command: ["python3", "-c"]
          args:
            - |
              import os, subprocess, sys, time
              then = "$3"
              if then != "respawn" and os.path.exists("/state/done"):
                  time.sleep(3600)
              open("/state/done", "w").close()
              worker = "import time\\nx = []\\nwhile True:\\n    x.append(b'x' * (2 << 20))\\n    time.sleep(0.25)\\n"
              while True:
                  print("worker exit", subprocess.run([sys.executable, "-c", worker]).returncode, flush=True)
                  if then != "respawn":
                      break
                  time.sleep(1)
              if then == "exit":
                  time.sleep(8)
                  sys.exit(0)
              time.sleep(3600)
          resources:
            limits: {memory: $2}
          volumeMounts:
            - {name: state, mountPath: /state}
      volumes:
        - {name: state, emptyDir: {}}
YAML
}

# grow_configmap NAMESPACE: ConfigMap `grow` holding tests/workloads/grow.py, unless it is there.
grow_configmap() {
  kubectl -n "$1" get configmap grow >/dev/null 2>&1 \
    || kubectl -n "$1" create configmap grow --from-file=grow.py=tests/workloads/grow.py >/dev/null
}

# grow_deployment NAME TARGET_MIB MIB_PER_SECOND LIMIT: the YAML of Deployment NAME whose Python
# container runs grow.py (ConfigMap `grow`): records grown at MIB_PER_SECOND up to TARGET_MIB, then
# held; LIMIT is its memory request and limit.
grow_deployment() {
  python_deployment "$1" app
  cat <<YAML
          command: ["python3", "/app/grow.py"]
          env:
            - {name: TARGET_MIB, value: "$2"}
            - {name: MIB_PER_SECOND, value: "$3"}
          resources:
            requests: {memory: $4}
            limits: {memory: $4}
          volumeMounts:
            - {name: app, mountPath: /app}
      volumes:
        - name: app
          configMap: {name: grow}
YAML
}

# leakwatch NAME: the YAML of LeakWatch NAME for the pods labelled app=NAME: snapshot A at 50 %, B
# at 85 %, one hunt (cooldown 2h: no check needs a second pair, and a slow run must not start one).
leakwatch() {
  cat <<YAML
apiVersion: leakhunt.dev/v1alpha1
kind: LeakWatch
metadata: {name: $1}
spec:
  selector: {matchLabels: {app: $1}}
  thresholds: {baseline: 50, nearLimit: 85}
  cooldown: 2h
YAML
}

# on_node NODE: a Deployment's YAML (stdin) with its pods pinned to NODE.
on_node() { sed "s|^    spec:\$|    spec:\n      nodeSelector: {kubernetes.io/hostname: $1}|"; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls until COMMAND succeeds.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      echo "  timed out after ${secs}s waiting for: $what" >&2
      return 1
    fi
    sleep 1
  done
}

check() {
  local name=$1
  shift
  local t=$SECONDS
  echo "=== $name"
  if "$@"; then
    PASSED=$((PASSED + 1)); echo "--- PASS: $name ($((SECONDS - t))s)"
  else
    FAILED=$((FAILED + 1)); FAILURES+=("$name"); echo "--- FAIL: $name ($((SECONDS - t))s)"
    # A suite whose environment can die under it (the emulated VM) defines environment_lost: when it
    # names a cause, the checks left would only time out one after another, so the suite ends with 75
    # (EX_TEMPFAIL) for its caller to tell from a failure of leakhunt's.
    local lost
    if declare -F environment_lost >/dev/null && lost=$(environment_lost); then
      echo "$SUITE: the test environment is gone: $lost; the checks left are not run"
      summary || true
      exit 75
    fi
  fi
}

summary() {
  echo "$SUITE: finished in $(( $(date +%s) - T0 ))s (environment start included)"
  [ ${#FAILURES[@]} -eq 0 ] || echo "$SUITE: failed: ${FAILURES[*]}"
  echo "$SUITE: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
