"""Short run summaries to a Slack-compatible incoming webhook and/or a Telegram chat.

Configured by inventory vars (in `all`) or the environment, the environment winning:
  notify_slack_webhook        / REMEDIATIONS_SLACK_WEBHOOK
  notify_telegram_bot_token   / REMEDIATIONS_TELEGRAM_BOT_TOKEN
  notify_telegram_chat_id     / REMEDIATIONS_TELEGRAM_CHAT_ID
  notify_telegram_api         / REMEDIATIONS_TELEGRAM_API   (default https://api.telegram.org)
  notify_on                   / REMEDIATIONS_NOTIFY_ON      (changes | failures | always | never)
  notify_environment          / REMEDIATIONS_NOTIFY_ENVIRONMENT (default: the inventory's name)
A notification that fails is reported as a warning (with the API's own words) and never fails the
remediation.

A message is written for someone woken at 3 a.m.: the outcome and the environment first
("FAILED prod: restart-api on 1 of 12 hosts (11 ok)"), then one line per host that did not stay ok,
failed first, then who ran it. It always fits ONE message of the channel's documented size (Telegram
sendMessage: 4096 characters, counted here in UTF-16 units, the stricter reading; Slack: the 4,000
characters Slack recommends): when the hosts do not fit, the lines that fit are kept and the rest
is summed up as "… and K more"; the lead line and the run id are never dropped.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from remediations.core.results import HostResult, RunResult, Status
from remediations.reporting.redact import MASK, Redactor

TIMEOUT = 5.0
TELEGRAM_LIMIT = 4096  # sendMessage: "1-4096 characters after entities parsing"
SLACK_LIMIT = 4000  # Slack truncates past 40,000 characters and recommends at most 4,000
HOST_LINE_LIMIT = 300  # one host's line: a reason, not its whole output
MAX_RETRY_WAIT = 10.0  # a 429 asking to wait longer than this is reported, not waited out
SETTINGS = {
    "slack_webhook": "SLACK_WEBHOOK",
    "telegram_bot_token": "TELEGRAM_BOT_TOKEN",
    "telegram_chat_id": "TELEGRAM_CHAT_ID",
    "telegram_api": "TELEGRAM_API",
    "on": "NOTIFY_ON",
    "environment": "NOTIFY_ENVIRONMENT",
}
# An inventory file named like this says nothing about the environment; its folder does
# (inventories/prod/hosts.yml is "prod").
GENERIC_INVENTORY_NAMES = {"hosts", "inventory", "main", "all"}


@dataclass(frozen=True)
class NotifyConfig:
    slack_webhook: str = ""
    telegram_bot_token: str = ""
    telegram_chat_id: str = ""
    telegram_api: str = "https://api.telegram.org"
    on: str = "changes"
    environment: str = ""

    @classmethod
    def load(cls, variables: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> NotifyConfig:
        values: dict[str, str] = {}
        for field_name, env in SETTINGS.items():
            value = environ.get(f"REMEDIATIONS_{env}") or variables.get(f"notify_{field_name}")
            if value:
                values[field_name] = str(value)
        return cls(**values)

    def wants(self, run: RunResult) -> bool:
        counts = run.counts()
        if self.on == "always":
            return True
        if self.on == "failures":
            return counts["failed"] > 0
        if self.on == "changes":
            return (counts["failed"] + counts["changed"]) > 0 and not run.check
        return False


def environment_name(inventory_source: str) -> str:
    """The environment an inventory file stands for: `inventories/prod.yml` → prod,
    `inventories/staging/hosts.yml` → staging; "" for an inventory that is not a file."""
    if not inventory_source or inventory_source.startswith("<"):
        return ""
    path = PurePath(inventory_source)
    stem = path.name
    for suffix in (".yml", ".yaml", ".ini", ".json"):
        stem = stem.removesuffix(suffix)
    if stem in GENERIC_INVENTORY_NAMES and path.parent.name not in ("", ".", "inventories"):
        return path.parent.name
    return stem


# ---- the message --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """What to say, in parts a channel can fit to its size: `head` and `tail` are never dropped,
    `items` (one line per host, most urgent first) are kept while they fit."""

    head: Sequence[str]
    items: Sequence[str] = ()
    tail: Sequence[str] = ()
    more: str = "… and {count} more"  # what stands for the items that did not fit

    @classmethod
    def of_text(cls, text: str) -> Message:
        first, *rest = text.splitlines() or [""]
        return cls([first], rest)

    def lines(self) -> list[str]:
        return [*self.head, *self.items, *self.tail]


OUTCOME = {
    Status.FAILED: "FAILED",
    Status.CHANGED: "CHANGED",
    Status.OK: "OK",
    Status.SKIPPED: "SKIPPED",
}
CHECK_OUTCOME = {Status.CHANGED: "WOULD CHANGE"}
URGENCY = {Status.FAILED: 0, Status.CHANGED: 1, Status.SKIPPED: 2}


def summary(run: RunResult, actor: str, environment: str = "", run_id: str = "") -> Message:
    """The message for `run`: outcome and environment first, then the hosts that did not stay ok."""
    counts = run.counts()
    outcome = max((h.status for h in run.hosts), key=lambda s: s.rank, default=Status.OK)
    word = (CHECK_OUTCOME.get(outcome) if run.check else None) or OUTCOME[outcome]
    where = f" {environment}" if environment else ""
    mode = " (check)" if run.check else ""
    total = len(run.hosts)
    scope = f"on {counts[outcome.value]} of {total} hosts" if total else "on no hosts"
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != outcome.value)
    head = [f"{word}{where}: {run.task}{mode} {scope}" + (f" ({others})" if others else "")]
    if run.interrupted:
        head.append(f"interrupted by {run.interrupted}")
    if run.stopped_early:
        head.append(f"stopped early: {run.stopped_early}")
    notable = sorted(
        (h for h in run.hosts if h.status in URGENCY), key=lambda h: URGENCY[h.status]
    )  # sorted() is stable: inventory order within each outcome
    items = [_host_line(h) for h in notable]
    where_rest = f" (every host is in the audit log, run {run_id})" if run_id else " (see the audit log)"
    return Message(head, items, [f"by {actor}"], "… and {count} more" + where_rest)


def _host_line(host: HostResult) -> str:
    # A reason may carry a command's output: one line per host reads better in a chat.
    reason = " ⏎ ".join(line.strip() for line in host.message.splitlines() if line.strip())
    return f"- {host.host}: {host.status.value}: {reason}"


# ---- fitting a message to a channel ----------------------------------------------------------


def utf16_units(text: str) -> int:
    """Length as Telegram counts it (entity offsets are UTF-16 code units): an emoji counts 2."""
    return len(text.encode("utf-16-le")) // 2


_SLACK_ENTITY = re.compile(r"&(?:amp|lt|gt);")


def slack_escape(text: str) -> str:
    """Slack's text escaping: &, < and > as &amp; &lt; &gt; (nothing else), so a reason that reads
    like <@U123> or <!channel> is shown, not acted on."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Channel:
    name: str
    limit: int
    measure: Callable[[str], int] = len
    escape: Callable[[str], str] = field(default=lambda text: text)

    def render(self, message: Message, redactor: Redactor) -> str:
        """The message redacted, escaped, and cut to fit this channel."""
        head = [self._line(line, redactor, self.limit // 5) for line in message.head]
        tail = [self._line(line, redactor, self.limit // 5) for line in message.tail]
        items = [self._line(line, redactor, HOST_LINE_LIMIT) for line in message.items]
        fixed = sum(self.measure(line) + 1 for line in [*head, *tail])
        kept: list[str] = []
        used = fixed
        for index, line in enumerate(items):
            left = len(items) - index - 1
            more = self.escape(message.more.format(count=left)) if left else ""
            need = self.measure(line) + 1 + (self.measure(more) + 1 if more else 0)
            if used + need > self.limit:
                kept.append(self.escape(message.more.format(count=len(items) - index)))
                break
            kept.append(line)
            used += self.measure(line) + 1
        return "\n".join([*head, *kept, *tail])

    def _line(self, line: str, redactor: Redactor, limit: int) -> str:
        # Redact before escaping (a secret is matched as it was written), then cut outside any
        # mask or escape so neither is left half there.
        return clip(self.escape(redactor.text(line)), limit, self.measure)


def clip(text: str, limit: int, measure: Callable[[str], int] = len) -> str:
    """`text` cut to at most `limit` units with "…", never inside a mask (*****) or a Slack escape."""
    if measure(text) <= limit:
        return text
    cut = min(len(text), limit)  # every character is at least one unit
    while cut > 0 and measure(text[:cut]) + 1 > limit:
        cut -= max(1, (measure(text[:cut]) + 1 - limit) // 2)  # code points: never half a character
    for protected in (re.escape(MASK), _SLACK_ENTITY.pattern):
        for match in re.finditer(protected, text):
            if match.start() < cut < match.end():
                cut = match.start()
    return text[:cut] + "…"


TELEGRAM = Channel("telegram", TELEGRAM_LIMIT, utf16_units)
SLACK = Channel("slack", SLACK_LIMIT, len, slack_escape)


# ---- sending --------------------------------------------------------------------------------


class Refused(Exception):
    """The API answered with an error: its status and its own description."""

    def __init__(self, status: int, description: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {description}" if description else f"HTTP {status}")
        self.status = status
        self.description = description
        self.retry_after = retry_after


def _post_json(url: str, payload: Mapping[str, Any]) -> None:
    import urllib.error  # with urllib.request and http.client: imported when a run sends, not at start-up
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise ValueError("URL must start with http:// or https://")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raise _refusal(exc.code, exc.read(65536), exc.headers.get("Retry-After")) from None


def _refusal(status: int, body: bytes, retry_header: str | None) -> Refused:
    """The API's own words: Telegram's JSON `description` and `parameters.retry_after`, Slack's
    plain-text error (`invalid_payload`, `no_text`, …) and its Retry-After header."""
    text = body.decode("utf-8", "replace").strip()
    description, retry_after = text, _seconds(retry_header)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        description = str(data.get("description") or data.get("error") or text)
        parameters = data.get("parameters")
        if isinstance(parameters, dict) and retry_after is None:
            retry_after = _seconds(parameters.get("retry_after"))
    return Refused(status, " ".join(description.split())[:300], retry_after)


def _seconds(value: object) -> float | None:
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


def _deliver(url: str, payload: Mapping[str, Any], sleep: Callable[[float], None]) -> None:
    """POST once; after a 429 that asks for a short wait, wait and POST once more."""
    try:
        _post_json(url, payload)
    except Refused as exc:
        if exc.status != 429 or exc.retry_after is None or exc.retry_after > MAX_RETRY_WAIT:
            if exc.status == 429 and exc.retry_after is not None:
                note = f"(not retried: longer than {MAX_RETRY_WAIT:g} s)"
                raise Refused(429, f"{exc.description} {note}".strip()) from None
            raise
        sleep(exc.retry_after)
        _post_json(url, payload)


def send(
    config: NotifyConfig,
    message: Message | str,
    redactor: Redactor,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Post `message` to every configured channel; returns one warning per channel that failed."""
    if isinstance(message, str):
        message = Message.of_text(message)
    # Learn the channel secrets first: a token set only in the environment is not an inventory var.
    redactor.add_value(config.telegram_bot_token)
    redactor.add_value(config.slack_webhook)
    warnings = []
    targets: list[tuple[str, str, dict[str, Any]]] = []
    if config.slack_webhook:
        targets.append(("slack", config.slack_webhook, {"text": SLACK.render(message, redactor)}))
    if config.telegram_bot_token and config.telegram_chat_id:
        url = f"{config.telegram_api.rstrip('/')}/bot{config.telegram_bot_token}/sendMessage"
        text = TELEGRAM.render(message, redactor)  # plain text: no parse_mode, nothing to escape
        payload = {"chat_id": config.telegram_chat_id, "text": text, "disable_web_page_preview": True}
        targets.append(("telegram", url, payload))
    if targets:
        import http.client
        import urllib.error
    for name, url, payload in targets:
        try:
            _deliver(url, payload, sleep)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException, Refused) as exc:
            reason = getattr(exc, "reason", None) or exc
            warnings.append(redactor.text(f"notification to {name} failed: {reason}"))
    return warnings
