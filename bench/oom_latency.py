#!/usr/bin/env python3
"""Times OOM kill → LeakReport update, for bench/operator.sh.

    oom_latency.py NAMESPACE LABEL_SELECTOR REPORT KILLS TIMEOUT_SECONDS

Watches (two `kubectl get --raw ...?watch=1` streams, one JSON event per line, each stamped when it
is read) the pods matching LABEL_SELECTOR and the LeakReport REPORT in NAMESPACE. Kill k is the k-th
distinct terminated container (by containerID) whose `state` or `lastState` says OOMKilled; its
latency is from the first pod event that shows it to the first report event with
`status.oomKills >= k`. Both times are taken by this process, so the watch delivery delay is on both
sides. The kernel's own kill is read from /dev/kmsg as it is logged (`oom-kill:` records whose
memory cgroup names the pod): kernel → pod status is the kubelet's and containerd's part, pod status →
report the operator's. Prints one line per kill and, last,
`RESULT <median_ms> <max_ms> <ms,ms,...> <kernel_to_status_median_ms> <kernel_to_report_median_ms>`
(the last two `-` when the kernel log cannot be read); exit 1 on timeout.
"""
import os
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    ns, selector, report, kills_wanted, timeout = sys.argv[1:]
    kills_wanted, timeout = int(kills_wanted), float(timeout)

    lock = threading.Lock()
    done = threading.Event()
    kill_seen = {}  # containerID -> first time a pod event showed it OOMKilled
    kill_order = []
    count_seen = {}  # k -> first time the report showed oomKills >= k
    kernel_kills = []  # (time read, record) of every memory-cgroup OOM kill the kernel logged
    pod_uids = set()
    procs = []

    def check_done():
        if len(kill_order) >= kills_wanted and all(k in count_seen for k in range(1, kills_wanted + 1)):
            done.set()

    def on_pod(t, pod):
        uid = pod.get("metadata", {}).get("uid", "")
        pod_uids.add(uid)
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated")
                if not term or term.get("reason") != "OOMKilled":
                    continue
                key = term.get("containerID") or f"{uid}/{cs.get('name')}/{term.get('finishedAt')}"
                if key not in kill_seen:
                    kill_seen[key] = t
                    kill_order.append(key)
                    print(f"  pod status shows OOM kill {len(kill_order)} ({key[-12:]})", flush=True)

    def on_report(t, obj):
        n = int((obj.get("status") or {}).get("oomKills") or 0)
        for k in range(1, n + 1):
            if k not in count_seen:
                count_seen[k] = t
                print(f"  LeakReport {report} status.oomKills = {n}", flush=True)

    def watch(path, handle):
        p = subprocess.Popen(["kubectl", "get", "--raw", path], stdout=subprocess.PIPE, text=True, bufsize=1)
        procs.append(p)
        for line in p.stdout:
            t = time.monotonic()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "ERROR":
                print(f"  watch error on {path}: {ev.get('object')}", file=sys.stderr, flush=True)
                continue
            with lock:
                handle(t, ev.get("object") or {})
                check_done()
        if not done.is_set():
            print(f"  watch ended: {path} (kubectl exit {p.wait()})", file=sys.stderr, flush=True)

    def kmsg():
        # Records since now only; each read returns one record.
        try:
            fd = os.open("/dev/kmsg", os.O_RDONLY)
            os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            print(f"  no kernel log ({e}): kernel times not measured", file=sys.stderr, flush=True)
            return
        while not done.is_set():
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except OSError:
                continue  # EPIPE: records overwritten before they were read
            if "oom-kill:" in rec:
                with lock:
                    kernel_kills.append((time.monotonic(), rec))

    q = urllib.parse.quote
    pods = f"/api/v1/namespaces/{ns}/pods?watch=1&labelSelector={q(selector)}"
    reports = f"/apis/leakhunt.dev/v1alpha1/namespaces/{ns}/leakreports?watch=1&fieldSelector={q('metadata.name=' + report)}"
    for path, handle in ((pods, on_pod), (reports, on_report)):
        threading.Thread(target=watch, args=(path, handle), daemon=True).start()
    threading.Thread(target=kmsg, daemon=True).start()
    print("watching", flush=True)
    ok = done.wait(timeout)
    for p in procs:
        p.terminate()
    with lock:
        # The pod's kills in the kernel log: its memory cgroup path holds its UID (underscores with
        # the systemd driver).
        ours = [t for t, rec in kernel_kills
                if any(u and (u in rec or u.replace("-", "_") in rec) for u in pod_uids)]
        lat, k2s, k2r = [], [], []
        for k in range(1, kills_wanted + 1):
            if k > len(kill_order) or k not in count_seen:
                break
            ms = (count_seen[k] - kill_seen[kill_order[k - 1]]) * 1000.0
            lat.append(ms)
            line = f"  kill {k}: report updated {ms:.0f} ms after the pod status showed it"
            if k <= len(ours):
                k2s.append((kill_seen[kill_order[k - 1]] - ours[k - 1]) * 1000.0)
                k2r.append((count_seen[k] - ours[k - 1]) * 1000.0)
                line += f"; the kernel killed it {k2r[-1]:.0f} ms before the report, {k2s[-1]:.0f} ms before the pod status"
            print(line, flush=True)
        kernel = (f"{statistics.median(k2s):.0f} {statistics.median(k2r):.0f}"
                  if k2s and len(k2s) == len(lat) else "- -")
    if not ok or not lat:
        print(f"timed out after {timeout:.0f}s: {len(kill_order)} kills seen, report counts seen {sorted(count_seen)}",
              file=sys.stderr, flush=True)
        return 1
    print(f"RESULT {statistics.median(lat):.0f} {max(lat):.0f} {','.join(f'{x:.0f}' for x in lat)} {kernel}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
