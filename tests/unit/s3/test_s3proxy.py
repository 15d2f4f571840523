"""lab/s3proxy.py's latency model: every request waits `delay` once, however many connections a
client opens at once (S3 takes a pool of 64 new connections without making any of them wait)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lab.s3proxy import S3Proxy

CLIENTS = 64
DELAY = 0.2


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class _Upstream(ThreadingHTTPServer):
    request_queue_size = 1024  # the proxy opens one upstream connection per client connection
    daemon_threads = True


@pytest.fixture
def upstream() -> Iterator[str]:
    server = _Upstream(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_pool_of_new_connections_waits_the_delay_once_not_for_the_accept_queue(upstream: str) -> None:
    """Before, the proxy's listen backlog was socketserver's 5: of 64 connections opened at once
    the kernel dropped the SYNs beyond it, and those waited a second (TCP's first retransmission)
    on top of the delay, which penalised the tool with the larger pool."""
    proxy = S3Proxy(upstream, delay=DELAY).start()
    took: list[float] = []
    start = threading.Barrier(CLIENTS)

    def one() -> None:
        host, port = proxy.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        start.wait()
        began = time.monotonic()
        connection.request("GET", "/bucket")
        assert connection.getresponse().read() == b"ok"
        took.append(time.monotonic() - began)
        connection.close()

    try:
        threads = [threading.Thread(target=one) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        proxy.stop()
    assert len(took) == CLIENTS and proxy.forwarded == CLIENTS
    assert min(took) >= DELAY
    assert max(took) < DELAY + 0.8, sorted(took)[-5:]
