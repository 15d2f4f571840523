"""Being told to stop: SIGINT (Ctrl-C) and SIGTERM end a run cleanly instead of killing it.

On the first signal the run finishes or stops the step in progress, starts no new step, command or
host, releases its host locks and writes its audit records; the exit code says which signal it was
(130 for SIGINT, 143 for SIGTERM). A second signal exits at once, saying the hosts in progress may
be half-changed. One run per process: the request is process-wide.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}

_requested = threading.Event()
_signal_name = ""
_local = threading.local()  # `shielded` depth of this thread


def requested() -> str | None:
    """The name of the signal that asked the run to stop, or None (None too inside `shielded`)."""
    if getattr(_local, "shielded", 0):
        return None
    return _signal_name if _requested.is_set() else None


@contextmanager
def shielded() -> Iterator[None]:
    """Within the block this thread goes on after a stop request: its steps and commands still
    start. For the cleanup a stopped remediation owes the host (a drill drops its scratch
    database); keep it short. A second signal still exits at once."""
    _local.shielded = getattr(_local, "shielded", 0) + 1
    try:
        yield
    finally:
        _local.shielded -= 1


def request(name: str) -> None:
    """Ask the run to stop, as a signal does (for callers that are not signals, and for tests)."""
    global _signal_name
    if not _requested.is_set():
        _signal_name = name
        _requested.set()


def clear() -> None:
    global _signal_name
    _requested.clear()
    _signal_name = ""


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`, waking early when a stop is requested; True if it was."""
    return _requested.wait(seconds)


def sleep(seconds: float) -> None:
    """time.sleep that a stop request cuts short (for tenacity's `sleep=`)."""
    _requested.wait(seconds)


def _handler(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _requested.is_set():
        sys.stderr.write(
            f"\n{name} again: exiting now; hosts in progress may be half-changed (see the audit log's "
            "'started' records)\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_CODES.get(name, 1))
    request(name)
    sys.stderr.write(
        f"\n{name}: stopping after the current step; no new step or host is started "
        "(send it again to exit at once)\n"
    )
    sys.stderr.flush()


@contextmanager
def handled() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM request a stop instead of killing the process.
    Outside the main thread (signals cannot be caught there) the block runs unchanged."""
    clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
