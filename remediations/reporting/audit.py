"""The audit log: one JSON line per host and step, appended for every run.

Path: $REMEDIATIONS_AUDIT_LOG, else the inventory var `audit_log` (from `all`), else
/var/log/remediations/audit.jsonl when writable, else ~/.local/state/remediations/audit.jsonl.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remediations.core.results import HostResult, RunResult
from remediations.reporting.cronlog import RUN_ID_ENV, RUN_ID_RE
from remediations.reporting.redact import Redactor

AUDIT_ENV = "REMEDIATIONS_AUDIT_LOG"
SYSTEM_AUDIT_LOG = Path("/var/log/remediations/audit.jsonl")
USER_AUDIT_LOG = Path("~/.local/state/remediations/audit.jsonl")


def audit_path(configured: str | None = None) -> Path:
    if os.environ.get(AUDIT_ENV):
        return Path(os.environ[AUDIT_ENV])
    if configured:
        return Path(configured).expanduser()
    system_dir = SYSTEM_AUDIT_LOG.parent
    if os.access(system_dir, os.W_OK) or (not system_dir.exists() and os.access("/var/log", os.W_OK)):
        return SYSTEM_AUDIT_LOG
    return USER_AUDIT_LOG.expanduser()


@dataclass(frozen=True)
class Actor:
    """Who ran it and from where."""

    user: str
    controller: str
    run_id: str

    @classmethod
    def current(cls) -> Actor:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
        given = os.environ.get(RUN_ID_ENV, "")
        if RUN_ID_RE.fullmatch(given):  # a cron entry's runner named the run (its log lines say it)
            return cls(user, socket.gethostname(), given)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return cls(user, socket.gethostname(), f"{stamp}-{os.getpid()}")

    def holder(self, task: str) -> str:
        return f"{self.user}@{self.controller} task={task} run={self.run_id}"


class AuditLog:
    def __init__(self, path: Path, actor: Actor, redactor: Redactor) -> None:
        self.path = path
        self.actor = actor
        self.redactor = redactor

    def _record(self, task: str, arguments: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
        return {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "run_id": self.actor.run_id,
            "user": self.actor.user,
            "controller": self.actor.controller,
            "task": task,
            "arguments": self.redactor.data(dict(arguments)),
            **fields,
        }

    def write_lines(self, records: list[dict[str, Any]]) -> None:
        """Append records under an flock so concurrent runs never interleave a line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(self.redactor.text(json.dumps(r, sort_keys=True, default=str)) + "\n" for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def host(self, run: RunResult, host: HostResult, arguments: Mapping[str, Any]) -> None:
        steps = host.steps or []
        records = [
            self._record(
                run.task,
                arguments,
                check=run.check,
                host=host.host,
                step=s.step,
                status=s.status.value,
                message=s.message,
                duration=round(s.duration, 3),
            )
            for s in steps
        ]
        if records:
            self.write_lines(records)

    def started(self, run: RunResult, host: str, arguments: Mapping[str, Any], holder: str) -> None:
        """Written before the first change on a host, so that even a run killed with SIGKILL leaves
        a trace of what it was doing where (its step records come only at the end)."""
        self.write_lines(
            [
                self._record(
                    run.task,
                    arguments,
                    check=run.check,
                    host=host,
                    step="start",
                    status="started",
                    message=f"started {run.task} on {host}, holding its lock ({holder})",
                    duration=0.0,
                )
            ]
        )

    def usage_error(self, task: str, arguments: Mapping[str, Any], message: str) -> None:
        self.write_lines(
            [
                self._record(
                    task,
                    arguments,
                    check=bool(arguments.get("check")),
                    host=None,
                    step="arguments",
                    status="failed",
                    message=message,
                    duration=0.0,
                )
            ]
        )
