"""The leaky Flask service from the blog post leakhunt was started from.

A metrics endpoint wraps its downstream calls in a Profiler whose timings are appended to a
*class attribute*: `Profiler.results` is shared by every request and never emptied, so the
process grows with traffic until the kernel's OOM killer ends it. Nothing else is wrong with it.

Run: python app.py  (PORT=8000 by default; loopback only unless HOST says otherwise, as in a pod,
whose address is its own network namespace's).
"""

import os
import random
import time

from flask import Flask, jsonify

app = Flask(__name__)

# Downstream calls per request; the tests raise it to leak faster.
LAPS = int(os.environ.get("PROFILER_LAPS", "48"))


class Profiler(object):
    """Times the downstream calls of one request."""

    results = []  # the leak: one list for the whole process, appended to on every request

    def __init__(self, name):
        self.name = name
        self.start = time.perf_counter()
        self.calls = []

    def lap(self):
        self.calls.append(time.perf_counter() - self.start)

    def end(self):
        timing = (self.name, time.perf_counter() - self.start, tuple(self.calls))
        Profiler.results.append(timing)


def get_metrics_for_app(name, profiler):
    """Stands in for the downstream calls: a few dozen small lookups."""
    metrics = {}
    for i in range(LAPS):
        metrics["m%d" % i] = random.random()
        profiler.lap()
    return metrics


@app.route("/metrics/<name>")
def get_metric(name):
    profiler = Profiler(name)
    response = get_metrics_for_app(name, profiler)
    profiler.end()
    return jsonify(data=response), 200


@app.route("/healthz")
def healthz():
    return "ok\n"


if __name__ == "__main__":
    # Quiet: no access log line per request, no banner; the demo's terminal is leakhunt's.
    import logging

    import flask.cli

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")), threaded=True)
