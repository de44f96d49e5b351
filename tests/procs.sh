# Sourced by tests/testenv.sh and tests/node/node.sh: stopping the background programs they start.
#
# stop_pid PIDFILE NAME: SIGTERM, then SIGKILL after 20 s, then its whole process group (each was
# started by setsid, so its pid leads one), and the pid file goes.
stop_pid() {
  local pidfile=$1 name=$2
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$(basename "$0" .sh): $name did not stop in 20s, killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}
