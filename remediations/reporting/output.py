"""What a person (or a script) reads: a live line per host, then a summary table or JSON.

The --json document's shape is versioned (`"schema": SCHEMA_VERSION`) and described by
run.schema.json beside this module (shipped in the wheel; README "--json output").
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from remediations.core.results import WARNING_EXIT_CODE, HostResult, RunResult, Status

SCHEMA_VERSION = 1  # raise it, and say so in README, whenever a key changes meaning or goes away
SCHEMA_PATH = Path(__file__).with_name("run.schema.json")
USAGE_EXIT_CODE = 2

COLOURS = {
    Status.OK: "\033[32m",
    Status.CHANGED: "\033[33m",
    Status.FAILED: "\033[31m",
    Status.SKIPPED: "\033[36m",
}
RESET = "\033[0m"
REASON_WIDTH = 90


@dataclass(frozen=True)
class RunInfo:
    """What the --json document says about the run beyond its results: who ran what, and when."""

    run_id: str
    arguments: Mapping[str, Any]  # already redacted: secret values are masked
    started: dt.datetime
    ended: dt.datetime


def iso_time(when: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as the audit log writes it."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def run_document(run: RunResult, warnings: list[str], info: RunInfo | None = None) -> dict[str, Any]:
    """The --json document of a run (README "--json output")."""
    head: dict[str, Any] = {"schema": SCHEMA_VERSION}
    if info is not None:
        head.update(run_id=info.run_id, arguments=dict(info.arguments), started=iso_time(info.started),
                    ended=iso_time(info.ended))  # fmt: skip
    return {**head, **run.to_dict(), "exit_code": run.exit_code, "warnings": warnings}


def error_document(message: str, exit_code: int = USAGE_EXIT_CODE) -> dict[str, Any]:
    """The --json document of bad input: nothing ran."""
    return {"schema": SCHEMA_VERSION, "error": message, "exit_code": exit_code}


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class Reporter:
    """Thread-safe: hosts finish in worker threads."""

    def __init__(
        self, stream: TextIO | None = None, as_json: bool = False, show_diff: bool = False
    ) -> None:
        stream = stream or sys.stdout  # looked up now: sys.stdout may have been replaced since import
        self.stream = stream
        self.as_json = as_json
        self.show_diff = show_diff
        self.colour = use_colour(stream)
        self._lock = threading.Lock()
        self.gone = False  # the reader went away (a closed pipe): nothing more is printed

    def _status(self, status: Status, width: int = 7) -> str:
        text = status.value.ljust(width)
        return f"{COLOURS[status]}{text}{RESET}" if self.colour else text

    def _reader_gone(self) -> None:
        """The reader closed the pipe (`inv … | head -1`): stop printing, never stop the run. The
        stream is pointed at /dev/null so that nothing later (or Python's exit flush) fails on it."""
        self.gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stream without a file descriptor (tests): just stop
            pass

    def host_done(self, host: HostResult) -> None:
        if self.as_json or self.gone:
            return
        with self._lock:
            try:
                self._host_lines(host)
            except BrokenPipeError:
                self._reader_gone()

    def _host_lines(self, host: HostResult) -> None:
        print(
            f"{self._status(host.status)} {host.host}: {host.message} ({host.duration:.1f}s)",
            file=self.stream,
            flush=True,
        )
        for warning in host.warnings:
            print(f"    warning: {warning}", file=self.stream)
        if self.show_diff and host.diff:
            for line in host.diff.splitlines():
                print(f"    {line}", file=self.stream)
        self.stream.flush()

    def summary(self, run: RunResult, warnings: list[str], info: RunInfo | None = None) -> None:
        if self.gone:
            return
        try:
            self._summary(run, warnings, info)
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _summary(self, run: RunResult, warnings: list[str], info: RunInfo | None) -> None:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if self.as_json:
            print(json.dumps(run_document(run, warnings, info), indent=2, default=str), file=self.stream)
            return
        rows = [(h.host, h.status, _one_line(h.message), f"{h.duration:.1f}s") for h in run.hosts]
        width = max([len("host"), *(len(r[0]) for r in rows)])
        mode = " --check" if run.check else ""
        print(f"\n{run.task}{mode}: {_counts(run)} in {run.duration:.1f}s", file=self.stream)
        print(f"{'host'.ljust(width)}  {'result'.ljust(7)}  {'time'.rjust(6)}  reason", file=self.stream)
        for name, status, reason, took in rows:
            print(f"{name.ljust(width)}  {self._status(status)}  {took.rjust(6)}  {reason}", file=self.stream)
        if run.stopped_early:
            print(f"stopped early: {run.stopped_early}", file=self.stream)
        self.stream.flush()


def _counts(run: RunResult) -> str:
    text = ", ".join(f"{n} {s}" for s, n in run.counts().items() if n) or "no hosts"
    if run.warned and not run.failed:
        text += f" ({len(run.warned)} with warnings: exit code {WARNING_EXIT_CODE})"
    elif run.warned:
        text += f" ({len(run.warned)} with warnings)"
    return text


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 1] + "…"
