"""A local HTTP server that holds notifications to the documented rules of the two chat APIs.

Telegram Bot API `POST /bot<token>/sendMessage` (https://core.telegram.org/bots/api#sendmessage):
`text` is 1-4096 characters after entity parsing (no parse_mode: the text as sent; counted here in
UTF-16 code units, the unit Telegram's entity offsets use, so an emoji counts 2 — the stricter
reading); leading and trailing whitespace does not count and an empty text is refused. Errors are
JSON `{"ok": false, "error_code": N, "description": "…"}`; flood control is a 429 whose
`parameters.retry_after` says how many seconds to wait.

Slack incoming webhook `POST /services/…` (https://api.slack.com/messaging/webhooks): a JSON body
with `text` (or blocks); errors are a plain-text body: 400 `invalid_payload` (the body is not what
its content type says), 400 `no_text`; 429 with a `Retry-After` header when rate limited; success is
200 `ok`. Text over 40,000 characters is truncated, not refused: the server records that. Text is
read as Slack reads it: `<…>` is a control sequence (a mention `<@U…>`, `<!channel>`, a link) and
`&amp; &lt; &gt;` are the escaped characters; `rendered` is what the channel shows.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TELEGRAM_MAX = 4096
SLACK_TRUNCATES_AT = 40_000
TOKEN_PATH = re.compile(r"/bot(\d+:[A-Za-z0-9_-]+)/sendMessage\Z")
SLACK_CONTROL = re.compile(r"<([^>]*)>")


@dataclass
class Delivered:
    channel: str  # "telegram" or "slack"
    path: str
    payload: dict[str, Any]
    text: str
    rendered: str = ""  # Slack: what the channel shows
    controls: list[str] = field(default_factory=list)  # Slack: <…> sequences acted on
    truncated: bool = False


@dataclass
class ChatAPIs:
    url: str
    delivered: list[Delivered] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # (channel, status, body)
    requests: int = 0
    # channel → answer its next requests 429 with these waits, in turn
    rate_limit: dict[str, list[float]] = field(default_factory=dict)

    def _flood(self, channel: str) -> float | None:
        waits = self.rate_limit.get(channel)
        return waits.pop(0) if waits else None


def _telegram(api: ChatAPIs, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    def error(code: int, description: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
        api.refused.append(("telegram", code, description))
        data = {"ok": False, "error_code": code, "description": description, **extra}
        return code, {"Content-Type": "application/json"}, json.dumps(data).encode()

    if not TOKEN_PATH.fullmatch(path):
        return error(404, "Not Found")
    try:
        payload = json.loads(body)
    except ValueError:
        return error(400, "Bad Request: can't parse JSON")
    if not isinstance(payload, dict) or not str(payload.get("chat_id", "")).strip():
        return error(400, "Bad Request: chat_id is empty")
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        return error(400, "Bad Request: message text is empty")
    if "parse_mode" in payload:
        return error(400, "Bad Request: this fake accepts plain text only")
    if len(text.strip().encode("utf-16-le")) // 2 > TELEGRAM_MAX:
        return error(400, "Bad Request: message is too long")
    wait = api._flood("telegram")
    if wait is not None:
        return error(429, f"Too Many Requests: retry after {wait:g}", parameters={"retry_after": wait})
    api.delivered.append(Delivered("telegram", path, payload, text))
    result = {"ok": True, "result": {"message_id": len(api.delivered), "text": text.strip()}}
    return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()


def _slack(api: ChatAPIs, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
    def error(
        code: int, text: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        api.refused.append(("slack", code, text))
        return code, {"Content-Type": "text/plain", **(headers or {})}, text.encode()

    if not path.startswith("/services/"):
        return error(404, "no_service")
    try:
        payload = json.loads(body) if content_type.startswith("application/json") else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return error(400, "invalid_payload")
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        return error(400, "no_text")
    wait = api._flood("slack")
    if wait is not None:
        return error(429, "rate_limited", {"Retry-After": f"{wait:g}"})
    shown = text[:SLACK_TRUNCATES_AT]
    controls = SLACK_CONTROL.findall(shown)
    rendered = SLACK_CONTROL.sub(lambda m: m.group(1).split("|")[-1], shown)
    rendered = rendered.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    api.delivered.append(
        Delivered("slack", path, payload, text, rendered, controls, len(text) > SLACK_TRUNCATES_AT)
    )
    return 200, {"Content-Type": "text/plain"}, b"ok"


@contextmanager
def chat_apis() -> Iterator[ChatAPIs]:
    """Both APIs on one 127.0.0.1 port: /bot… is Telegram, /services/… is a Slack webhook."""

    class Handler(BaseHTTPRequestHandler):
        api: ChatAPIs

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.api.requests += 1
            if self.path.startswith("/bot"):
                status, headers, answer = _telegram(self.api, self.path, body)
            else:
                status, headers, answer = _slack(
                    self.api, self.path, body, self.headers.get("Content-Type", "")
                )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read what was delivered."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.api = ChatAPIs(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Handler.api
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
