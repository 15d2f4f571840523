"""One client of the Telegram Bot API: a method call, its `ok` / `result` / `description` /
`error_code` answer, 429's `parameters.retry_after` honoured (bounded), a deadline on every request.

The token is part of every request's path (`/bot<token>/<method>`), so it would be in any message an
HTTP library builds from the URL: every message this module raises is its own, with the token masked
(`bot<token>`), and no library exception is chained to it. No proxy from the environment is used and
no redirect is followed (`http.client`, not urllib): the token goes to the configured server only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from remediations.core.errors import HostError, UsageError
from remediations.core.validate import shown

DEFAULT_API = "https://api.telegram.org"
DEFAULT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 30.0  # a 429 asking to wait longer than this fails the call: run again later
MAX_ATTEMPTS = 3  # one call and at most two retries after a 429
MAX_ANSWER_BYTES = 1024 * 1024
TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{10,200}")
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # setWebhook's secret_token, as the Bot API allows
WEBHOOK_PORTS = (443, 80, 88, 8443)  # the only ports the Bot API sets a webhook on
MAX_URL_LENGTH = 2048
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
TOKEN_MASK = "<token>"  # noqa: S105 - what a masked token reads as


class BotApiError(HostError):
    """A Bot API call failed; `code` is its error_code (or the HTTP status), 0 when there was no answer."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def is_token(text: str) -> bool:
    return bool(TOKEN.fullmatch(text))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_url(value: object, where: str) -> str:
    """The Bot API's base URL: https, or http to a loopback address (a local Bot API server, a test
    peer); no user, query or fragment. UsageError otherwise."""
    text = value if isinstance(value, str) else ""
    parts = urlsplit(text) if text and not _BAD_URL_CHARS.search(text) and len(text) <= 500 else None
    try:
        port_ok = parts is not None and (parts.port is None or 0 < parts.port < 65536)
    except ValueError:
        port_ok = False
    plain = parts is not None and port_ok and bool(parts.hostname) and not parts.username
    plain = plain and parts is not None and not parts.query and not parts.fragment
    loopback_http = parts is not None and parts.scheme == "http" and _loopback(parts.hostname or "")
    secure = parts is not None and (parts.scheme == "https" or loopback_http)
    if not (plain and secure):
        raise UsageError(f"{where}: api_url {shown(value)}: give https://HOST[/PATH] (http:// only to a "
                         "loopback address), e.g. https://api.telegram.org")  # fmt: skip
    return text.rstrip("/")


def check_webhook_url(value: object, flag: str = "--set") -> str:
    """A webhook URL the Bot API takes: https, a host, one of its ports, on one line."""
    text = value if isinstance(value, str) else ""
    clean = bool(text) and not _BAD_URL_CHARS.search(text) and len(text) <= MAX_URL_LENGTH
    parts = urlsplit(text) if clean else None
    try:
        port = None if parts is None else (parts.port or 443)
    except ValueError:
        port = None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.fragment:
        raise UsageError(f"{flag} {shown(value)}: the Bot API needs an https:// URL with a host, on one line "
                         f"(at most {MAX_URL_LENGTH} characters, no fragment)")  # fmt: skip
    if port not in WEBHOOK_PORTS:
        raise UsageError(f"{flag} {shown(value)}: the Bot API sets webhooks on ports 443, 80, 88 or 8443 "
                         "only")  # fmt: skip
    return text


def check_secret_token(value: str, where: str) -> str:
    """setWebhook's secret_token: 1-256 characters of A-Z a-z 0-9 _ - (never shown)."""
    if not SECRET_TOKEN.fullmatch(value):
        raise UsageError(f"{where}: a secret token is 1-256 characters of A-Z, a-z, 0-9, _ and - "
                         f"(this one has {len(value)} characters; its value is not shown)")  # fmt: skip
    return value


def _default_connect(scheme: str, host: str, port: int | None, timeout: float) -> Any:
    import http.client  # imported when a call is made, not at start-up

    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


@dataclass
class BotApi:
    """Calls of one bot's Bot API methods (`base` from check_api_url, `token` from is_token)."""

    base: str
    token: str
    timeout: float = DEFAULT_TIMEOUT
    max_retry_after: float = MAX_RETRY_AFTER
    sleep: Callable[[float], None] = time.sleep
    waited: list[float] = field(default_factory=list)  # the retry_after pauses taken, for the result
    connect: Callable[[str, str, int | None, float], Any] = _default_connect

    def mask(self, text: str) -> str:
        return text.replace(self.token, TOKEN_MASK) if self.token else text

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """The method's `result`; BotApiError (token masked) when it fails. A 429 is retried after its
        retry_after, at most MAX_ATTEMPTS calls in all and never a pause over max_retry_after."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        def retry_after(exc: BaseException) -> bool:
            return isinstance(exc, _RateLimited) and exc.seconds <= self.max_retry_after

        def pause(state: Any) -> float:
            seconds = float(state.outcome.exception().seconds)
            self.waited.append(seconds)
            return seconds

        try:
            retrying = Retrying(stop=stop_after_attempt(MAX_ATTEMPTS), retry=retry_if_exception(retry_after),
                                wait=pause, sleep=self.sleep, reraise=True)  # fmt: skip
            for attempt in retrying:
                with attempt:
                    return self._once(method, params or {})
        except _RateLimited as exc:
            raise BotApiError(f"{method}: Telegram answered 429 ({exc.description}) and asks to retry after "
                              f"{exc.seconds:g} s" + (f", more than the {self.max_retry_after:g} s this waits"
                              if exc.seconds > self.max_retry_after else f", {MAX_ATTEMPTS} times")
                              + "; run again later", 429) from None  # fmt: skip
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, params: Mapping[str, Any]) -> Any:
        parts = urlsplit(self.base)
        path = f"{parts.path.rstrip('/')}/bot{self.token}/{method}"
        body = json.dumps(dict(params)).encode()
        where = f"{method} at {parts.scheme}://{parts.netloc}"
        started = time.monotonic()
        try:
            connection = self.connect(parts.scheme, parts.hostname or "", parts.port, self.timeout)
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json",
                                                        "Accept": "application/json"})  # fmt: skip
                response = connection.getresponse()
                status, raw = response.status, response.read(MAX_ANSWER_BYTES + 1)
            finally:
                connection.close()
        except TimeoutError:
            raise BotApiError(f"{where}: no answer within {self.timeout:g} s") from None
        except Exception as exc:  # socket, ssl, http.client: any of them; its text may hold the URL
            spent = time.monotonic() - started
            if spent >= self.timeout and "timed out" in str(exc):
                raise BotApiError(f"{where}: no answer within {self.timeout:g} s") from None
            text = self.mask(" ".join(str(exc).split()))[:200] or type(exc).__name__
            raise BotApiError(f"{where}: {type(exc).__name__}: {text}") from None
        return self._answer(where, status, raw)

    def _answer(self, where: str, status: int, raw: bytes) -> Any:
        try:
            answer = json.loads(raw[:MAX_ANSWER_BYTES]) if len(raw) <= MAX_ANSWER_BYTES else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):  # not the Bot API
            said = self.mask(" ".join(raw[:120].decode("utf-8", "replace").split()))
            raise BotApiError(f"{where}: HTTP {status} and not a Bot API answer ({shown(said)})", status)
        if answer["ok"]:
            return answer.get("result")
        given = answer.get("error_code")
        code = given if isinstance(given, int) else status
        description = self.mask(str(answer.get("description") or "no description"))[:200]
        given_parameters = answer.get("parameters")
        parameters: dict[str, Any] = given_parameters if isinstance(given_parameters, dict) else {}
        if code == 429:
            seconds = parameters.get("retry_after")
            raise _RateLimited(description, float(seconds) if isinstance(seconds, int | float) else 1.0)
        hint = {401: ": Telegram does not know this bot token (revoked? a typo?)",
                404: ": the token is malformed, or the method does not exist"}.get(code, "")  # fmt: skip
        raise BotApiError(f"{where}: error {code}: {description}{hint}", code)


class _RateLimited(Exception):
    def __init__(self, description: str, seconds: float) -> None:
        super().__init__(description)
        self.description, self.seconds = description, max(0.0, seconds)
