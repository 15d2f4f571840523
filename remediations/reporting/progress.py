"""Progress of long work, phase by phase, on stderr (stdout stays the result: --json stays clean).

A phase says what it is doing when it starts ("listing versions under s3://b/p/ …"), how far it
got while it runs ("12,000 versions of 3,400 keys so far"), and what it did when it ends. On a
terminal the running line is rewritten in place at most once a second; elsewhere (cron mail, a
log file, a CI job) each phase's first and last line are written and, in between, at most one line
per `interval` seconds (the `progress_interval` inventory var, default 60), so a long copy shows it
is alive without filling the mail.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from remediations.core.units import human_age, human_bytes

REFRESH = 1.0  # a terminal's running line is rewritten at most this often
DEFAULT_INTERVAL = 60.0  # not a terminal: at most one running line this often


class Progress:
    """Phase lines for one task. Thread-safe: copies finish in worker threads."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.live = self.stream.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self.every = min(REFRESH, interval) if self.live else interval
        self.clock = clock
        self.lines = 0  # lines written (a terminal's rewrites count too), for tests and the curious
        self._shown = 0.0
        self._open = False  # a terminal line waits for its end
        self._lock = threading.Lock()

    def begin(self, text: str) -> None:
        """A phase starts: always shown."""
        with self._lock:
            self._write(text, end=False)
            self._shown = self.clock()

    def update(self, text: Callable[[], str]) -> None:
        """How far the phase got: shown when due (`text` is only made then)."""
        with self._lock:
            now = self.clock()
            if now - self._shown < self.every:
                return
            self._shown = now
            self._write(text(), end=False)

    def end(self, text: str) -> None:
        """A phase ends: always shown, and a terminal keeps it."""
        with self._lock:
            self._write(text, end=True)

    def _write(self, text: str, end: bool) -> None:
        line = f"{self.label}: {text}"
        try:
            if self.live:
                self.stream.write(f"\r\033[K{line}" + ("\n" if end else ""))
                self._open = not end
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr gone: the work goes on without progress
            return
        self.lines += 1


class Meter:
    """Keys and bytes done of a known total: "120/400 keys (30%), 1.2 GB of 4.0 GB, 12.3 MB/s, ETA 3m"."""

    def __init__(self, keys: int, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys, self.size = keys, size
        self.done_keys = self.done_bytes = 0
        self.clock = clock
        self.start = clock()
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.done_keys += 1
            self.done_bytes += size

    def text(self) -> str:
        with self._lock:
            keys, done = self.done_keys, self.done_bytes
        elapsed = max(self.clock() - self.start, 1e-6)
        by_bytes = self.size > 0
        fraction = done / self.size if by_bytes else keys / max(self.keys, 1)
        text = f"{keys:,}/{self.keys:,} keys ({fraction:.0%})"
        if by_bytes:
            text += f", {human_bytes(done)} of {human_bytes(self.size)}, {human_bytes(done / elapsed)}/s"
        else:
            text += f", {keys / elapsed:.1f} keys/s"
        if 0 < fraction < 1:
            text += f", ETA {human_age(elapsed * (1 - fraction) / fraction)}"
        return text
