"""Alertmanager's webhook payload (version 4), checked field by field: one line for what is wrong.

    {"version": "4", "groupKey": "…", "status": "firing", "receiver": "…", "groupLabels": {…},
     "commonLabels": {…}, "commonAnnotations": {…}, "externalURL": "…", "truncatedAlerts": 0,
     "alerts": [{"status": "firing", "labels": {…}, "annotations": {…}, "startsAt": "…",
                 "endsAt": "…", "generatorURL": "…", "fingerprint": "…"}]}

Fields Alertmanager added after 0.25 are optional, and unknown ones are ignored (a newer
Alertmanager must not be refused). An alert without a fingerprint (older senders) gets one from
its labels, as Alertmanager computes it: the same alert always has the same key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ALERTS = 1000
MAX_TEXT = 4096  # one label value, annotation, key


class PayloadError(ValueError):
    """The payload is not an Alertmanager webhook of version 4: the message says which field."""


@dataclass(frozen=True)
class Alert:
    status: str  # firing | resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    fingerprint: str
    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def key(self) -> str:
        """Once per alert, never once per POST: the fingerprint and when it started firing."""
        return f"{self.fingerprint}@{self.starts_at.isoformat()}"


@dataclass(frozen=True)
class Notification:
    status: str
    group_key: str
    receiver: str
    alerts: tuple[Alert, ...]
    common_labels: Mapping[str, str] = field(default_factory=dict)
    truncated: int = 0


def parse(document: Any) -> Notification:
    if not isinstance(document, dict):
        raise PayloadError("the body is not a JSON object")
    version = document.get("version")
    if version != "4":
        raise PayloadError(f"version {version!r}: this receiver reads Alertmanager's webhook version '4'")
    status = _status(document.get("status"), "status")
    alerts = document.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: missing or not a list")
    if len(alerts) > MAX_ALERTS:
        raise PayloadError(f"alerts: {len(alerts)} in one notification, at most {MAX_ALERTS}")
    parsed = tuple(_alert(a, i) for i, a in enumerate(alerts))
    truncated = document.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("truncatedAlerts: not a whole number")
    return Notification(
        status=status,
        group_key=_text(document.get("groupKey", ""), "groupKey"),
        receiver=_text(document.get("receiver", ""), "receiver"),
        alerts=parsed,
        common_labels=_labels(document.get("commonLabels") or {}, "commonLabels"),
        truncated=truncated,
    )


def _status(value: Any, where: str) -> str:
    if value not in ("firing", "resolved"):
        raise PayloadError(f"{where}: {value!r}, not firing or resolved")
    return str(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{where}: not text")
    if len(value) > MAX_TEXT * 4:
        raise PayloadError(f"{where}: longer than {MAX_TEXT * 4} characters")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: not an object of names to text")
    out: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(text, str) or len(name) > MAX_TEXT or len(text) > MAX_TEXT:
            raise PayloadError(f"{where}.{str(name)[:60]}: not text of at most {MAX_TEXT} characters")
        out[name] = text
    return out


def _time(value: Any, where: str) -> dt.datetime:
    if not isinstance(value, str):
        raise PayloadError(f"{where}: not an RFC 3339 time")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes up to nine fractional digits; Python reads six
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(f"{where}: {value[:60]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise PayloadError(f"{where}: {value[:60]!r} has no offset")
    return moment.astimezone(dt.UTC)


def _alert(value: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: not an object")
    labels = _labels(value.get("labels"), f"{where}.labels")
    if not labels:
        raise PayloadError(f"{where}.labels: empty (an alert has at least its alertname)")
    ends = value.get("endsAt")
    ends_at = _time(ends, f"{where}.endsAt") if ends else None
    if ends_at is not None and ends_at.year <= 1:  # Go's zero time: still firing
        ends_at = None
    fingerprint = value.get("fingerprint") or _fingerprint(labels)
    if not isinstance(fingerprint, str) or not fingerprint.isalnum() or len(fingerprint) > 64:
        raise PayloadError(f"{where}.fingerprint: not a short hexadecimal text")
    return Alert(
        status=_status(value.get("status"), f"{where}.status"),
        labels=labels,
        annotations=_labels(value.get("annotations") or {}, f"{where}.annotations"),
        starts_at=_time(value.get("startsAt"), f"{where}.startsAt"),
        ends_at=ends_at,
        fingerprint=fingerprint,
        generator_url=_text(value.get("generatorURL", ""), f"{where}.generatorURL"),
    )


def shown(text: str, limit: int = 200) -> str:
    """A label value as a person reads it in a message or a log: control, format (bidi overrides) and
    line-separator characters escaped so no value can start a line of its own or reorder one, and a
    long value cut with its length said."""
    out = "".join(_shown(c) for c in text[:limit])
    return out if len(text) <= limit else f"{out}…({len(text)} characters)"


def _shown(char: str) -> str:
    if char == " " or (char.isprintable() and unicodedata.category(char) != "Cf"):
        return char
    return f"\\u{ord(char):04x}" if ord(char) > 0xFF else f"\\x{ord(char):02x}"


def _fingerprint(labels: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(labels):
        digest.update(name.encode() + b"\xff" + labels[name].encode() + b"\xff")
    return digest.hexdigest()[:16]
