"""lab/s3proxy.py's latency model: every request waits `delay` once, however many connections a
client opens at once (S3 takes a pool of 64 new connections without making any of them wait)."""

from __future__ import annotations

import http.client
import socket
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


class _Framing(BaseHTTPRequestHandler):
    """HEAD with a length and no body, a chunked answer, a PUT echoing its body and Expect header."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b"hello ", b"chunked ", b"world"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = b"%s expect=%s" % (body, (self.headers.get("Expect") or "none").encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def framing() -> Iterator[str]:
    server = _Upstream(("127.0.0.1", 0), _Framing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_relay_keeps_http_framing_on_one_kept_alive_connection(framing: str) -> None:
    """The proxy relays bytes and reads only the framing: a HEAD's length is not a body, a chunked
    answer ends at its last chunk, an Expect: 100-continue is answered by the proxy itself (the
    upstream gets the body at once); all on one client connection, then 503 SlowDown when throttled."""
    proxy = S3Proxy(framing, delay=0.01).start()
    host, port = proxy.url.removeprefix("http://").split(":")
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("HEAD", "/bucket/key")
        head = connection.getresponse()
        assert head.status == 200 and head.getheader("Content-Length") == "12345" and head.read() == b""
        connection.request("GET", "/bucket/chunked")
        assert connection.getresponse().read() == b"hello chunked world"
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"PUT /bucket/key HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                        b"Expect: 100-continue\r\n\r\n")
            assert raw.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            raw.sendall(b"data")
            answer = b""
            while not answer.endswith(b"data expect=none"):
                answer += raw.recv(1000)
        proxy.throttling(rate=1, seconds=30)
        statuses = []
        for _ in range(3):
            connection.request("GET", "/bucket/chunked")
            reply = connection.getresponse()
            statuses.append((reply.status, b"SlowDown" in reply.read()))
    finally:
        proxy.stop()
    assert statuses == [(200, False), (503, True), (503, True)]
    assert proxy.forwarded == 4 and proxy.slowdowns == 2
