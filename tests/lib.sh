# Shared by the shell tests against the test environment (tests/smoke/smoke.sh, tests/e2e/e2e.sh):
# source it after setting SUITE (the name every line is prefixed with). Provides the counters,
# `check NAME COMMAND...`, `wait_for DESCRIPTION SECONDS COMMAND...`, `fail_now MESSAGE`, `free_ports N`,
# `hog_deployment IMAGE` and `summary` (the last lines, and the suite's exit status).
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
  fi
}

summary() {
  echo "$SUITE: finished in $(( $(date +%s) - T0 ))s (environment start included)"
  [ ${#FAILURES[@]} -eq 0 ] || echo "$SUITE: failed: ${FAILURES[*]}"
  echo "$SUITE: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
