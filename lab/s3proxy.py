"""A loopback HTTP proxy in front of an S3 endpoint: S3-like latency, and throttling on demand.

    proxy = S3Proxy("http://127.0.0.1:9000", delay=0.05)   # every request waits 50 ms, then is forwarded
    proxy.start(); ... proxy.url ...; proxy.stop()

`delay` is added once per request (S3's own first-byte latency is tens of milliseconds). `throttle`
(requests per second, a token bucket that refills continuously) answers 503 SlowDown, as S3 does, to
what goes beyond that rate while `throttle_until` (monotonic seconds) has not passed; `slowdowns`
counts those answers. The Host header and the body go upstream unchanged (moto does not check
signatures), one kept-alive upstream connection per client connection. The listen backlog takes a
client's whole pool of new connections at once (socketserver's default of 5 made those beyond it
wait a second for TCP to send their SYN again: latency S3 does not add).
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")  # fmt: skip


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: a pool of 64 or more new connections at once
    daemon_threads = True


class S3Proxy:
    def __init__(self, upstream: str, delay: float = 0.05, port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay = delay
        self.throttle: float | None = None  # requests per second allowed while throttling
        self.throttle_until = 0.0
        self.slowdowns = 0
        self.forwarded = 0
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3Proxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="s3proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def throttling(self, rate: float, seconds: float) -> None:
        """Answer 503 SlowDown beyond `rate` requests per second for the next `seconds`."""
        with self._lock:
            self.throttle, self._tokens = rate, rate
            self._refilled = time.monotonic()
            self.throttle_until = self._refilled + seconds

    def admit(self) -> bool:
        """False: this request gets 503 SlowDown."""
        with self._lock:
            now = time.monotonic()
            if self.throttle is None or now >= self.throttle_until:
                self.forwarded += 1
                return True
            self._tokens = min(self.throttle, self._tokens + (now - self._refilled) * self.throttle)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                self.forwarded += 1
                return True
            self.slowdowns += 1
            return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        proxy: S3Proxy = self.server.proxy  # type: ignore[attr-defined]
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else None
        time.sleep(proxy.delay)
        if not proxy.admit():
            self._answer(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in (1, 2):  # a kept-alive upstream connection the server closed: once more
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                self.upstream.request(self.command, self.path, body, headers)
                answer = self.upstream.getresponse()
                data = answer.read()
                break
            except (http.client.HTTPException, OSError):
                self.upstream.close()
                self.upstream = None
                if attempt == 2:
                    raise
        kept = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self._answer(answer.status, kept, data, length)

    def _answer(self, status: int, headers: dict[str, str], data: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", length or str(len(data)))  # a HEAD tells the object's length
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any
