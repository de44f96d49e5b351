"""A webhook receiver for the end-to-end test: appends every POST body (one JSON document per line)
to a file. Loopback only. Usage: webhook_receiver.py PORT_FILE OUT_FILE"""

import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"unparsed": body.decode("utf-8", "replace")}
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({"path": self.path, "body": doc}) + "\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


# The address to listen on (argv[3]): the node's, which its pods reach; loopback by default.
server = http.server.ThreadingHTTPServer((sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
