#!/usr/bin/env bash
# Timings of one finished hunt, read from its LeakReport (meant to be called by tests/e2e/e2e.sh once the
# report is Analysed; needs the whole chart, which bench/operator.sh does not install):
#   B − A           snapshot A (baseline threshold) → snapshot B (near-limit threshold): how fast the
#                   workload grew, not a leakhunt cost
#   Analysed − B    snapshot B taken → the report's `Analysed` condition True (report update, analyzer Job
#                   scheduled and run, findings written): the near-limit crossing → analysed report latency
#
#   bench/e2e-timings.sh NAMESPACE REPORT [RESULTS_FILE]   reads it with kubectl get leakreport -o json
#   bench/e2e-timings.sh -f REPORT.json [RESULTS_FILE]     reads a saved `kubectl get leakreport X -o json`
#
# Prints two lines for humans and one `e2e-timings: a_to_b_s=… b_to_analysed_s=…` line for scripts;
# appends a Markdown line to RESULTS_FILE if given. The Kubernetes times it subtracts are whole seconds
# (metav1.Time), so each figure is ±1 s. Exit 1 when the report has no A/B pair or is not Analysed.
set -euo pipefail

usage() { echo "usage: $0 NAMESPACE REPORT [RESULTS_FILE] | -f REPORT.json [RESULTS_FILE]" >&2; exit 2; }
[ $# -ge 2 ] || usage
command -v python3 >/dev/null || { echo "e2e-timings: python3 missing" >&2; exit 1; }
if [ "$1" = -f ]; then
  json=$(cat "$2")
else
  command -v kubectl >/dev/null || { echo "e2e-timings: kubectl missing" >&2; exit 1; }
  json=$(kubectl -n "$1" get leakreport "$2" -o json)
fi
RESULTS=${3:-}

PROGRAM=$(cat <<'PY'
import datetime, json, re, sys

def ts(text):
    """RFC 3339 (Z or offset, optional fraction) -> seconds since the epoch."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text or "")
    if not m:
        raise SystemExit(f"e2e-timings: not an RFC 3339 time: {text!r}")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.datetime.fromisoformat(m.group(1) + zone).timestamp()
    return base + (float(m.group(2)) if m.group(2) else 0.0)

report = json.load(sys.stdin)
meta = report.get("metadata") or {}
name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
status = report.get("status") or {}
phase = status.get("phase")
snaps = status.get("snapshots") or []
bs = [s for s in snaps if s.get("role") == "B"]
if not bs:
    raise SystemExit(f"e2e-timings: {name} has no snapshot B (phase {phase})")
b = max(bs, key=lambda s: ts(s["time"]))
As = [s for s in snaps if s.get("role") == "A" and ts(s["time"]) <= ts(b["time"])]
if not As:
    raise SystemExit(f"e2e-timings: {name} has no snapshot A before B")
a = max(As, key=lambda s: ts(s["time"]))
cond = [c for c in status.get("conditions") or [] if c.get("type") == "Analysed" and c.get("status") == "True"]
if not cond:
    raise SystemExit(f"e2e-timings: {name} is not Analysed (phase {phase})")
done = cond[0]["lastTransitionTime"]
a_to_b = ts(b["time"]) - ts(a["time"])
b_to_done = ts(done) - ts(b["time"])
print(f"{name}: snapshot A {a['time']}, snapshot B {b['time']}, Analysed {done}")
print(f"  snapshot A -> B (baseline -> near limit): {a_to_b:.0f} s; snapshot B -> Analysed: {b_to_done:.0f} s (each +-1 s)")
print(f"e2e-timings: a_to_b_s={a_to_b:.0f} b_to_analysed_s={b_to_done:.0f} a_size={a.get('size', 0)} b_size={b.get('size', 0)}")
PY
)
out=$(printf '%s' "$json" | python3 -c "$PROGRAM")
echo "$out"
line=$(grep '^e2e-timings: a_to_b_s=' <<<"$out" || true)
[ -n "$line" ] || exit 1
if [ -n "$RESULTS" ]; then
  a_to_b=$(sed 's/.*a_to_b_s=\([^ ]*\).*/\1/' <<<"$line")
  b_to_done=$(sed 's/.*b_to_analysed_s=\([^ ]*\).*/\1/' <<<"$line")
  printf '\ne2e timings (%s; load average %s): snapshot B → Analysed **%s s**, snapshot A → B %s s (each ±1 s)\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(uptime | sed 's/.*load average: //')" "$b_to_done" "$a_to_b" >>"$RESULTS"
fi
