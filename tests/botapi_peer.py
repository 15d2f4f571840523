"""A Telegram Bot API server on loopback, for tests: the test peer of bot-webhook, not the thing under test.

It answers as the Bot API does (https://core.telegram.org/bots/api): `POST|GET /bot<token>/<method>`
with parameters in the query string, a form or a JSON body; every answer a JSON object with `ok`, and
`result`, or `error_code` and `description` (and `parameters.retry_after` with a 429). A token of the
wrong shape is 404 Not Found, a well-formed one it does not know 401 Unauthorized, an unknown method
404. getWebhookInfo, setWebhook and deleteWebhook keep each bot's webhook (URL, secret token, pending
updates, last error) with setWebhook's own checks: an https URL on ports 443, 80, 88 or 8443, a
secret_token of 1-256 characters of A-Z a-z 0-9 _ -. Faults on demand: the next N calls answered 429
with a retry_after, or every call left hanging (no answer) until released.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TOKEN_SHAPE = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")
SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
PORTS = (443, 80, 88, 8443)


@dataclass
class Webhook:
    url: str = ""
    secret_token: str | None = None
    pending_update_count: int = 0
    max_connections: int = 40
    last_error_date: int | None = None
    last_error_message: str | None = None
    ip_address: str | None = None

    def info(self) -> dict[str, Any]:
        """getWebhookInfo's WebhookInfo: optional fields only when they have a value, as Telegram sends it."""
        found: dict[str, Any] = {"url": self.url, "has_custom_certificate": False,
                                 "pending_update_count": self.pending_update_count}  # fmt: skip
        if self.url:
            found["max_connections"] = self.max_connections
            if self.ip_address:
                found["ip_address"] = self.ip_address
        if self.last_error_date is not None:
            found["last_error_date"] = self.last_error_date
            found["last_error_message"] = self.last_error_message or ""
        return found


@dataclass
class Peer:
    """The server's state: bots by token, the calls it answered, the faults to inject."""

    bots: dict[str, Webhook] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (token, method, params)
    paths: list[str] = field(default_factory=list)  # every request line's path, as sent
    rate_limited: int = 0  # the next N calls answer 429
    retry_after: int = 1
    hanging: threading.Event = field(default_factory=threading.Event)  # set: calls get no answer
    released: threading.Event = field(default_factory=threading.Event)
    url: str = ""  # the base URL, once serving
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_bot(self, token: str, **webhook: Any) -> Webhook:
        self.bots[token] = Webhook(**webhook)
        return self.bots[token]

    def methods(self) -> list[str]:
        return [method for _, method, _ in self.calls]

    def answer(self, token: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls.append((token, method, params))
            if self.rate_limited > 0:
                self.rate_limited -= 1
                return 429, {"ok": False, "error_code": 429,
                             "description": f"Too Many Requests: retry after {self.retry_after}",
                             "parameters": {"retry_after": self.retry_after}}  # fmt: skip
            if not TOKEN_SHAPE.fullmatch(token):
                return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
            bot = self.bots.get(token)
            if bot is None:
                return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
            handler = {"getWebhookInfo": self._info, "setWebhook": self._set, "deleteWebhook": self._delete}
            if method not in handler:
                return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            return handler[method](bot, params)

    def _info(self, bot: Webhook, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": bot.info()}

    def _set(self, bot: Webhook, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = str(params.get("url") or "")
        if not url:
            return self._delete(bot, params)
        parts = urlsplit(url)
        if parts.scheme != "https":
            return bad("bad webhook: An HTTPS URL must be provided for webhook")
        if (parts.port or 443) not in PORTS:
            return bad("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        secret = params.get("secret_token")
        if secret is not None and not SECRET.fullmatch(str(secret)):
            return bad("secret token contains unallowed characters" if secret else "secret token is empty")
        same = bot.url == url and bot.secret_token == secret
        if truthy(params.get("drop_pending_updates")):
            bot.pending_update_count = 0
        bot.url, bot.secret_token = url, secret
        if "max_connections" in params:
            bot.max_connections = int(params["max_connections"])
        bot.ip_address = "149.154.167.220"
        return 200, {"ok": True, "result": True,
                     "description": "Webhook is already set" if same else "Webhook was set"}  # fmt: skip

    def _delete(self, bot: Webhook, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        was = bool(bot.url)
        if truthy(params.get("drop_pending_updates")):
            bot.pending_update_count = 0
        bot.url, bot.secret_token, bot.ip_address = "", None, None
        said = "Webhook was deleted" if was else "Webhook is already deleted"
        return 200, {"ok": True, "result": True, "description": said}


def bad(description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"}


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _handler(peer: Peer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def serve(self) -> None:
            peer.paths.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if peer.hanging.is_set():
                peer.released.wait(60)  # no answer: the client's timeout is under test
                return
            parts = urlsplit(self.path)
            match = re.fullmatch(r"/bot([^/]*)/([A-Za-z]+)", parts.path)
            if match is None:
                status, answer = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
            else:
                status, answer = peer.answer(match.group(1), match.group(2), self.params(parts.query, body))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def params(self, query: str, body: bytes) -> dict[str, Any]:
            found: dict[str, Any] = dict(parse_qsl(query))
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if kind == "application/json" and body:
                found.update(json.loads(body))
            elif kind == "application/x-www-form-urlencoded":
                found.update(parse_qsl(body.decode()))
            return found

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serving() -> Iterator[Peer]:
    """A peer serving on 127.0.0.1 (a free port) until the block ends."""
    peer = Peer()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    peer.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield peer
    finally:
        peer.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def now() -> int:
    return int(time.time())
