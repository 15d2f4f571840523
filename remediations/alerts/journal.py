"""Where the receiver's decisions go: every one to the audit log (with the alert's fingerprint),
the ones that matter to the team's channel (one short message each, sent from a thread of its own
so a slow channel never holds up an alert), and all of them to the receiver's /metrics."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from remediations.alerts.intake import Event
from remediations.reporting.audit import AuditLog
from remediations.reporting.notify import Message, NotifyConfig, send
from remediations.reporting.redact import Redactor

TASK = "alerts.serve"
PREFIX = "alerts: "


class Metrics:
    """The receiver's own series, in a registry of its own (prometheus_client)."""

    def __init__(self) -> None:
        from prometheus_client import GC_COLLECTOR, CollectorRegistry, Counter, Gauge, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # a long-lived service: its memory, fds, CPU
        self.registry.register(GC_COLLECTOR)  # and its collector (on: the start-up pause is over)
        self.posts = Counter(
            "remediations_alert_posts", "Webhook POSTs by HTTP status code", ["code"], registry=self.registry
        )
        self.alerts = Counter(
            "remediations_alerts_received",
            "Alerts received, re-sends included, by status",
            ["status"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "remediations_alert_decisions",
            "Decisions by kind (queued, deduped, succeeded, failed, cooled-down, circuit-open, …)",
            ["decision"],
            registry=self.registry,
        )
        self.circuits = Gauge(
            "remediations_alert_circuits_open", "Circuits open (rule@host keys)", registry=self.registry
        )
        self.running = Gauge(
            "remediations_alert_actions_running", "Actions running now", registry=self.registry
        )
        self.waiting = Gauge(
            "remediations_alert_actions_waiting",
            "Actions queued, being planned or awaiting approval",
            registry=self.registry,
        )

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


def audit_record(audit: AuditLog, event: Event) -> dict[str, Any]:
    """One decision as an audit line (task alerts.serve): the receiver's, or a person's."""
    fields = {"check": False, "host": event.host or None, "step": event.decision, "status": event.decision,
              "message": event.message, "duration": 0.0, "fingerprint": event.fingerprint,
              "alert": event.alert, "rule": event.rule, "action": event.action}  # fmt: skip
    return audit._record(TASK, {"rule": event.rule, "alert": event.alert}, **fields)


class Journal:
    def __init__(
        self,
        audit: AuditLog,
        notify: NotifyConfig,
        redactor: Redactor,
        metrics: Metrics,
        say: Callable[[str], None] = print,
    ) -> None:
        self.audit = audit
        self.notify = notify
        self.redactor = redactor
        self.metrics = metrics
        self.say = say
        self._outbox: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        self._sender = threading.Thread(target=self._send_loop, name="alerts-notify", daemon=True)
        self._sender.start()

    def record(self, events: Iterable[Event]) -> None:
        records: list[dict[str, Any]] = []
        for event in events:
            self.metrics.decisions.labels(event.decision).inc()
            records.append(audit_record(self.audit, event))
            self.say(self.redactor.text(f"{event.decision}: {event.message}"))
            if event.tell:
                try:
                    self._outbox.put_nowait(event.message)
                except queue.Full:
                    self.say(
                        "the channel's outbox is full (1000 messages): this one is only in the audit log"
                    )
        if records:
            self.audit.write_lines(records)

    def _send_loop(self) -> None:
        while True:
            text = self._outbox.get()
            if text is None:
                return
            for warning in send(self.notify, Message.of_text(PREFIX + text), self.redactor):
                self.say(warning)

    def close(self, timeout: float = 10.0) -> None:
        self._outbox.put(None)
        self._sender.join(timeout)
