"""The seed case: a Flask service whose Profiler keeps a class-level list of request timings.

Serves on 127.0.0.1 on a free port; prints "ready PORT"; answers "ok PORT" to every stdin line so a
test can synchronise; "quit" (or EOF) ends it.
"""
import logging
import sys
import threading
import time

from flask import Flask
from werkzeug.serving import make_server

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the test's stderr


class Profiler:
    results = []

    @classmethod
    def record(cls, endpoint, started):
        cls.results.append((endpoint, started, time.time() - started))


@app.route("/metrics/<app_name>")
def get_metric(app_name):
    started = time.time()
    response = {"app": app_name, "value": len(app_name) * 3}
    Profiler.record(app_name, started)
    return response, 200


def main():
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", server.server_port, flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print("ok", server.server_port, flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
