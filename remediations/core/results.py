"""Typed results: one per host and step, gathered into a run result that keeps every host."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Exit code of a run in which no host failed but some step warned (a condition a person should
# look at, which the run itself did not cause and cannot fix, e.g. a failing WAL archiver). 1 and 2
# are failure and bad input; the host's status stays ok/changed, so a second run is still "ok".
WARNING_EXIT_CODE = 3


class Status(enum.StrEnum):
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def rank(self) -> int:
        """Worse outcomes rank higher, so a host's status is the worst of its steps."""
        return {"skipped": 0, "ok": 1, "changed": 2, "failed": 3}[self.value]


@dataclass
class StepResult:
    """One step on one host: what happened and why, in words a tired person can read."""

    step: str
    status: Status
    message: str
    diff: str = ""
    duration: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    warning: bool = False  # an ok step whose message a person should read: exit code 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status.value,
            "message": self.message,
            "diff": self.diff,
            "duration": round(self.duration, 3),
            "data": self.data,
            "warning": self.warning,
        }


@dataclass
class HostResult:
    """Every step run on one host, in order."""

    host: str
    steps: list[StepResult] = field(default_factory=list)
    duration: float = 0.0

    @property
    def status(self) -> Status:
        if not self.steps:
            return Status.SKIPPED
        return max((s.status for s in self.steps), key=lambda s: s.rank)

    @property
    def message(self) -> str:
        """The reason of the step that decided the host's status (the last such step)."""
        deciding = [s for s in self.steps if s.status == self.status]
        return deciding[-1].message if deciding else ""

    @property
    def diff(self) -> str:
        return "\n".join(s.diff for s in self.steps if s.diff)

    @property
    def warnings(self) -> list[str]:
        return [s.message for s in self.steps if s.warning]

    def add(self, step: StepResult) -> StepResult:
        self.steps.append(step)
        return step

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status.value,
            "message": self.message,
            "duration": round(self.duration, 3),
            "warnings": self.warnings,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass
class RunResult:
    """A whole run: the task, its mode, and every selected host's outcome."""

    task: str
    check: bool
    hosts: list[HostResult] = field(default_factory=list)
    stopped_early: str = ""
    duration: float = 0.0
    interrupted: str = ""  # the signal that stopped the run (SIGINT, SIGTERM), if one did

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if h.status == Status.FAILED]

    @property
    def warned(self) -> list[HostResult]:
        return [h for h in self.hosts if h.warnings]

    @property
    def exit_code(self) -> int:
        """0 when no host failed, 1 when one did, 3 when none failed but one warned; 130 / 143 when
        SIGINT / SIGTERM stopped the run."""
        if self.interrupted:
            return {"SIGINT": 130, "SIGTERM": 143}.get(self.interrupted, 1)
        return 1 if self.failed else WARNING_EXIT_CODE if self.warned else 0

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for host in self.hosts:
            counts[host.status.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "check": self.check,
            "duration": round(self.duration, 3),
            "counts": self.counts(),
            "stopped_early": self.stopped_early,
            "interrupted": self.interrupted,
            "hosts": [h.to_dict() for h in self.hosts],
        }


class Timer:
    """Wall-clock duration of a block, readable after it ends."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.elapsed = 0.0

    def stop(self) -> float:
        self.elapsed = time.monotonic() - self.start
        return self.elapsed


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    try:
        yield timer
    finally:
        timer.stop()
