"""A bounded load loop for the leaky Flask example.

Sends GET /metrics/<app> to HOST:PORT from a few threads until --requests have been sent,
--seconds have passed, or the server has been unreachable for --give-up seconds (it was
OOM-killed and the hunt is over). HOST is 127.0.0.1 by default; --host names a pod's address on
a test node of this machine (its bridge), never anything off the machine.
"""

import argparse
import http.client
import sys
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1", help="the server's address (a pod's IP)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--requests", type=int, default=2_000_000)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--give-up", type=float, default=10, help="stop after the server is down this long")
    p.add_argument("--start-timeout", type=float, default=60, help="stop if the server never answers")
    args = p.parse_args()

    started = time.monotonic()
    deadline = started + args.seconds
    lock = threading.Lock()
    state = {"sent": 0, "ok": 0, "down_since": None, "stop": False}

    def worker(n):
        i = 0
        while not state["stop"]:
            with lock:
                if state["sent"] >= args.requests or time.monotonic() > deadline:
                    state["stop"] = True
                    break
                state["sent"] += 1
            i += 1
            try:
                conn = http.client.HTTPConnection(args.host, args.port, timeout=5)
                conn.request("GET", "/metrics/app-%d-%d" % (n, i % 1000))
                conn.getresponse().read()
                conn.close()
                with lock:
                    state["ok"] += 1
                    state["down_since"] = None
            except (OSError, http.client.HTTPException):
                with lock:
                    now = time.monotonic()
                    if state["ok"] == 0:
                        # Not up yet: wait for it, but not forever.
                        if now - started > args.start_timeout:
                            state["stop"] = True
                    elif state["down_since"] is None:
                        state["down_since"] = now
                    elif now - state["down_since"] > args.give_up:
                        state["stop"] = True
                time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("load: %d requests sent, %d answered" % (state["sent"], state["ok"]), file=sys.stderr)


if __name__ == "__main__":
    main()
