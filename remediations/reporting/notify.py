"""Short run summaries to a Slack-compatible incoming webhook and/or a Telegram chat.

Configured by inventory vars (in `all`) or the environment, the environment winning:
  notify_slack_webhook        / REMEDIATIONS_SLACK_WEBHOOK
  notify_telegram_bot_token   / REMEDIATIONS_TELEGRAM_BOT_TOKEN
  notify_telegram_chat_id     / REMEDIATIONS_TELEGRAM_CHAT_ID
  notify_telegram_api         / REMEDIATIONS_TELEGRAM_API   (default https://api.telegram.org)
  notify_on                   / REMEDIATIONS_NOTIFY_ON      (changes | failures | always | never)
A notification that fails is reported as a warning and never fails the remediation.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remediations.core.results import RunResult, Status
from remediations.reporting.redact import Redactor

TIMEOUT = 5.0
MAX_DETAIL_HOSTS = 10
SETTINGS = {
    "slack_webhook": "SLACK_WEBHOOK",
    "telegram_bot_token": "TELEGRAM_BOT_TOKEN",
    "telegram_chat_id": "TELEGRAM_CHAT_ID",
    "telegram_api": "TELEGRAM_API",
    "on": "NOTIFY_ON",
}


@dataclass(frozen=True)
class NotifyConfig:
    slack_webhook: str = ""
    telegram_bot_token: str = ""
    telegram_chat_id: str = ""
    telegram_api: str = "https://api.telegram.org"
    on: str = "changes"

    @classmethod
    def load(cls, variables: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> NotifyConfig:
        values: dict[str, str] = {}
        for field, env in SETTINGS.items():
            value = environ.get(f"REMEDIATIONS_{env}") or variables.get(f"notify_{field}")
            if value:
                values[field] = str(value)
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


def summary(run: RunResult, actor: str) -> str:
    counts = run.counts()
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    mode = " (check)" if run.check else ""
    lines = [f"{run.task}{mode} by {actor}: {parts or 'no hosts'}"]
    notable = [h for h in run.hosts if h.status in (Status.FAILED, Status.CHANGED)]
    for host in notable[:MAX_DETAIL_HOSTS]:
        lines.append(f"- {host.host}: {host.status.value}: {host.message}")
    if len(notable) > MAX_DETAIL_HOSTS:
        lines.append(f"- … and {len(notable) - MAX_DETAIL_HOSTS} more")
    if run.stopped_early:
        lines.append(f"stopped early: {run.stopped_early}")
    return "\n".join(lines)


def _post_json(url: str, payload: Mapping[str, Any]) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError("URL must start with http:// or https://")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        response.read()


def send(config: NotifyConfig, text: str, redactor: Redactor) -> list[str]:
    """Post `text` to every configured channel; returns one warning per channel that failed."""
    # Learn the channel secrets first: a token set only in the environment is not an inventory var.
    redactor.add_value(config.telegram_bot_token)
    redactor.add_value(config.slack_webhook)
    text = redactor.text(text)
    warnings = []
    targets: list[tuple[str, str, dict[str, Any]]] = []
    if config.slack_webhook:
        targets.append(("slack", config.slack_webhook, {"text": text}))
    if config.telegram_bot_token and config.telegram_chat_id:
        url = f"{config.telegram_api.rstrip('/')}/bot{config.telegram_bot_token}/sendMessage"
        targets.append(
            (
                "telegram",
                url,
                {"chat_id": config.telegram_chat_id, "text": text, "disable_web_page_preview": True},
            )
        )
    for name, url, payload in targets:
        try:
            _post_json(url, payload)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            warnings.append(redactor.text(f"notification to {name} failed: {reason}"))
    return warnings
