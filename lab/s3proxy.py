"""A loopback HTTP proxy in front of an S3 endpoint: S3-like latency, and throttling on demand.

    proxy = S3Proxy("http://127.0.0.1:9000", delay=0.05)   # every request waits 50 ms, then is forwarded
    proxy.start(); ... proxy.url ...; proxy.stop()

`delay` is added once per request (S3's own first-byte latency is tens of milliseconds). `throttle`
(requests per second, a token bucket that refills continuously) answers 503 SlowDown, as S3 does, to
what goes beyond that rate while `throttle_until` (monotonic seconds) has not passed; `slowdowns`
counts those answers, `forwarded` the requests sent upstream. One kept-alive upstream connection per
client connection. The listen backlog takes a client's whole pool of new connections at once
(socketserver's default of 5 made those beyond it wait a second for TCP to send their SYN again:
latency S3 does not add).

The proxy relays bytes: it reads each message's head only as far as HTTP/1.1 framing needs
(Content-Length, chunked, Expect: 100-continue, HEAD) and forwards the request and the answer as they
came, the Host header included (moto and SeaweedFS without identities do not check signatures). A
request costs it two reads and two writes: the proxy adds the delay and next to no CPU, as a network
path does (an earlier version parsed and rebuilt each message with http.server and http.client:
0.7 ms of CPU a request, on the 2 cores the endpoint and the tools under test share).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                  b"<Message>Please reduce your request rate.</Message></Error>")  # fmt: skip
SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
             b"Content-Length: %d\r\n\r\n" % len(SLOW_DOWN_BODY)) + SLOW_DOWN_BODY  # fmt: skip
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNK = 65536


class _Server(socketserver.ThreadingTCPServer):
    request_queue_size = 1024  # listen backlog: a pool of 64 or more new connections at once
    daemon_threads = True
    allow_reuse_address = True


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
        self._server = _Server(("127.0.0.1", port), _Relay)
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


class _Closed(Exception):
    """The peer closed the connection where a message was expected."""


class _Peer:
    """One side of the relay: a socket read through a buffer, one HTTP/1.1 message at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise _Closed
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        return self._take(end + 2)

    def head(self) -> tuple[bytes, bytes, dict[bytes, bytes]]:
        """The head (start line and headers, as received), the start line, the headers by lower-case name."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = self._take(end + 4)
        start, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return head, start, headers

    def body(self, headers: dict[bytes, bytes]) -> bytes:
        """The body as received (chunked: every chunk up to the last one and its trailer)."""
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            parts = []
            while True:
                line = self._line()
                parts.append(line)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while (trailer := self._line()) != b"\r\n":
                        parts.append(trailer)
                    parts.append(trailer)
                    return b"".join(parts)
                parts.append(self._take(size + 2))
        return self._take(int(headers.get(b"content-length") or 0))

    def rest(self) -> bytes:
        """Everything until the peer closes (an answer delimited by the end of its connection)."""
        parts = [self.buffer]
        while data := self.sock.recv(CHUNK):
            parts.append(data)
        self.buffer = b""
        return b"".join(parts)


class _Relay(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        proxy: S3Proxy = self.server.proxy  # type: ignore[attr-defined]
        client = _Peer(self.request)
        upstream: _Peer | None = None
        try:
            while True:
                try:
                    head, start, headers = client.head()
                except _Closed:
                    return
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    client.sock.sendall(CONTINUE)  # the body is read here; upstream is not asked to wait
                    head = b"".join(line + b"\r\n" for line in head[:-2].split(b"\r\n")[:-1]
                                    if not line.lower().startswith(b"expect:")) + b"\r\n"  # fmt: skip
                request = head + client.body(headers)
                time.sleep(proxy.delay)
                if not proxy.admit():
                    client.sock.sendall(SLOW_DOWN)
                    continue
                upstream, answer, close = self._forward(proxy, upstream, request, start.split(b" ", 1)[0])
                client.sock.sendall(answer)
                if close or headers.get(b"connection", b"").lower() == b"close":
                    return
        finally:
            if upstream is not None:
                upstream.sock.close()

    @staticmethod
    def _forward(proxy: S3Proxy, upstream: _Peer | None, request: bytes, method: bytes
                 ) -> tuple[_Peer | None, bytes, bool]:  # fmt: skip
        """Send one request upstream and read its answer: (the connection to keep, the answer,
        whether the client's connection must close after it)."""
        for attempt in (1, 2):  # a kept-alive upstream connection the server closed: once more
            if upstream is None:
                upstream = _Peer(socket.create_connection(proxy.upstream, timeout=120))
            try:
                upstream.sock.sendall(request)
                while True:
                    head, start, headers = upstream.head()
                    status = int(start.split(b" ")[1])
                    if status >= 200 or status == 101:
                        break  # an interim 1xx answer is dropped: the client never asked for one
                closing = headers.get(b"connection", b"").lower() == b"close"
                if method == b"HEAD" or status in (204, 304):
                    answer, ended = head, False
                elif b"content-length" in headers or b"transfer-encoding" in headers:
                    answer, ended = head + upstream.body(headers), False
                else:
                    answer, ended = head + upstream.rest(), True
                if closing or ended:
                    upstream.sock.close()
                    return None, answer, ended
                return upstream, answer, False
            except (_Closed, OSError):
                upstream.sock.close()
                upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
