#!/usr/bin/python3
"""The lab's systemd service (shop-health.service on svc1): an HTTP health endpoint on 127.0.0.1:8000.

/etc/shop/fail-start present: it says why it cannot start (with its database password, as badly
written services do, for the masking test) and exits 1. /etc/shop/unhealthy present: /health
answers 503 while the service keeps running.
"""

import http.server
import os
import socketserver
import sys

if os.path.exists("/etc/shop/fail-start"):
    password = os.environ.get("SHOP_DATABASE_PASSWORD")
    print(f"cannot start: database refused login (SHOP_DATABASE_PASSWORD={password})", flush=True)
    sys.exit(1)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        sick = os.path.exists("/etc/shop/unhealthy")
        body = b"unhealthy\n" if sick else b"ok\n"
        self.send_response(503 if sick else 200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer's own asks socket.getfqdn(), a DNS lookup: the lab has no DNS, so it would wait
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", 8000


print(f"shop-health listening on 127.0.0.1:8000 (pid {os.getpid()})", flush=True)
Server(("127.0.0.1", 8000), Health).serve_forever()
