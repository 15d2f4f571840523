"""The receiver's HTTP side (standard library, one thread per request):

    POST /alertmanager      Alertmanager's webhook (version 4), `Authorization: Bearer TOKEN`
    POST /approve/ID        approve a waiting action (same token; body {"by": "name"} optional)
    GET  /metrics           the receiver's Prometheus series
    GET  /healthz           200 when the store answers

Answers: 200 once the notification is stored (whatever it decided); 400 for a body that is not a
version 4 payload and 413 for one too large (Alertmanager does not retry a 4xx: a malformed payload
would fail again); 401 without the right token; 503 only when it could not be stored, so that a
retry by Alertmanager is the only thing that can bring an alert twice, and the store dedupes it.
"""

from __future__ import annotations

import gc
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from remediations.alerts import intake
from remediations.alerts.journal import Journal
from remediations.alerts.payload import PayloadError, parse, shown
from remediations.alerts.rules import Rule
from remediations.alerts.store import Store, StoreError
from remediations.core.errors import UsageError
from remediations.core.inventory import Inventory

MAX_BODY = 4 * 1024 * 1024
READ_TIMEOUT = 10.0
APPROVE = re.compile(r"/approve/(\d{1,12})")


class Receiver:
    def __init__(
        self,
        store: Store,
        rules: Sequence[Rule],
        inventory: Inventory,
        journal: Journal,
        token: str,
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.rules = list(rules)
        self.inventory = inventory
        self.journal = journal
        self.token = token
        self.wake = wake
        self._last_refusal: dict[str, float] = {}

    def refusal(self, header: str | None, client: str) -> str:
        """Why the request is not authorized ("" when it is); said in the log at most every 10 s."""
        scheme, _, given = (header or "").strip().partition(" ")
        if not header:
            why = "no Authorization header: a bearer token is required (Alertmanager: authorization)"
        elif scheme.lower() != "bearer":
            why = f"Authorization is {shown(scheme, 20)!r}, not Bearer (Alertmanager: type: Bearer)"
        elif not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            why = "the bearer token is not this receiver's (its --token-env / --token-file)"
        else:
            return ""
        now = time.monotonic()
        if now - self._last_refusal.get(why, -60.0) >= 10.0:
            self._last_refusal[why] = now
            self.journal.say(f"refused a request from {client}: {why}")
        return why

    def notification(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            notification = parse(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:  # JSON's and PayloadError
            what = str(exc).splitlines()[0][:300] if isinstance(exc, PayloadError) else "the body is not JSON"
            self.journal.record([intake.Event("malformed", f"a POST was refused: {what}", tell=False)])
            return 400, {"error": what}
        for alert in notification.alerts:
            self.journal.metrics.alerts.labels(alert.status).inc()
        try:
            outcome = intake.receive(self.store, notification, self.rules, self.inventory)
        except StoreError as exc:
            self.journal.say(f"could not store a notification: {exc}")
            return 503, {"error": "the receiver could not store it; Alertmanager will send it again"}
        try:
            self.journal.record(outcome.events)
        except OSError as exc:  # stored, so not lost: the audit log is what failed
            self.journal.say(f"the audit log could not be written: {exc}")
        self.wake()
        return 200, {"stored": len(notification.alerts), "decisions": outcome.counts}

    def approval(self, action_id: int, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            given = json.loads(body or b"{}")
            by = str(given.get("by") or "http") if isinstance(given, dict) else "http"
            message = approve(self.store, action_id, by[:100])
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        except UsageError as exc:
            return 409, {"error": str(exc)}
        action = self.store.action(action_id)
        if action is not None:
            self.journal.record([intake.about(action, "approved", message)])
        self.wake()
        return 200, {"approved": action_id, "message": message}


def approve(store: Store, action_id: int, by: str, now: float | None = None) -> str:
    """Queue a waiting action; UsageError (one line) when it is not waiting or expired."""
    now = time.time() if now is None else now
    action = store.action(action_id)
    if action is None:
        raise UsageError(f"no action {action_id} (`inv alerts.status` lists them)")
    if action.state != "awaiting-approval":
        raise UsageError(f"action {action_id} is {action.state}, not awaiting approval: nothing to approve")
    if action.expires is not None and action.expires < now:
        raise UsageError(
            f"action {action_id}'s approval expired: nothing runs (the alert, if it fires again, asks again)"
        )
    command = list(action.command)
    if command and command[0] == "runbook" and "--yes" not in command:
        command.insert(len(command) - 1, "--yes")  # before --json: the person said yes to the whole
    with store.transaction() as db:
        done = db.execute(
            "UPDATE actions SET state = 'queued', approved_by = ?, command = ?, updated = ?, "
            "reason = ? WHERE id = ? AND state = 'awaiting-approval'",
            (by, json.dumps(command), now, f"approved by {by}", action_id),
        )
        if done.rowcount == 0:
            raise UsageError(
                f"action {action_id} changed while approving: run `inv alerts.status` and try again"
            )
    return f"action {action_id} ({action.rule} on {action.host}) approved by {by}: it runs next"


class _Handler(BaseHTTPRequestHandler):
    server_version = "remediations-alerts"
    timeout = READ_TIMEOUT  # a client that sends nothing (headers or body) is dropped, not waited for
    receiver: Receiver  # set on the class made per server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # each decision is in the journal; request lines would only repeat them

    def _answer(self, code: int, data: dict[str, Any] | bytes, kind: str = "application/json") -> None:
        body = data if isinstance(data, bytes) else (json.dumps(data) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="remediations-alerts"')
        self.end_headers()
        self.wfile.write(body)
        if self.command == "POST":
            self.receiver.journal.metrics.posts.labels(str(code)).inc()

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, self.receiver.journal.metrics.text(), "text/plain; version=0.0.4")
        elif self.path == "/healthz":
            try:
                self.receiver.store.query("SELECT 1")
                # the collector is on in a long-lived receiver (tasks.py pauses it for start-up)
                self._answer(200, {"ok": True, "gc_enabled": gc.isenabled()})
            except StoreError as exc:
                self._answer(503, {"error": str(exc)})
        else:
            self._answer(404, {"error": "GET /metrics or /healthz; Alertmanager POSTs to /alertmanager"})

    def do_POST(self) -> None:
        approve_id = APPROVE.fullmatch(self.path)
        if self.path != "/alertmanager" and approve_id is None:
            self._answer(404, {"error": "POST /alertmanager (the webhook) or /approve/ID"})
            return
        refused = self.receiver.refusal(self.headers.get("Authorization"), self.client_address[0])
        if refused:
            self._answer(401, {"error": refused})
            return
        body = self._body()
        if body is None:
            return
        if approve_id is not None:
            self._answer(*self.receiver.approval(int(approve_id.group(1)), body))
        else:
            self._answer(*self.receiver.notification(body))

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"error": "Content-Length is required"})
            return None
        if length < 0 or length > MAX_BODY:
            self._answer(413, {"error": f"the body is larger than {MAX_BODY} bytes"})
            return None
        try:
            return self.rfile.read(length)
        except OSError:
            return None


def make_server(receiver: Receiver, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"receiver": receiver})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="alerts-http", daemon=True)
    thread.start()
    return thread
