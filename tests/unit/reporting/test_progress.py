"""Progress lines: what a terminal sees (one rewritten line per phase) and what cron or a log gets
(each phase's first and last line, and at most one line per interval in between)."""

from __future__ import annotations

import io

from remediations.reporting.progress import Meter, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def phase(progress: Progress, clock: Clock, steps: int, step: float) -> None:
    progress.begin("listing versions under s3://b/p/ …")
    for n in range(1, steps + 1):
        clock.now += step
        progress.update(lambda n=n: f"{n} so far")  # type: ignore[misc]
    progress.end(f"listed {steps}")


def test_not_a_terminal_gets_phase_lines_and_one_line_per_interval() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress("restore-s3-prefix", stream, interval=60, clock=clock)
    phase(progress, clock, steps=100, step=5)  # 500 s of work, an update every 5 s
    lines = stream.getvalue().splitlines()
    assert lines[0] == "restore-s3-prefix: listing versions under s3://b/p/ …"
    assert lines[-1] == "restore-s3-prefix: listed 100"
    assert lines[1:-1] == [f"restore-s3-prefix: {n} so far" for n in (12, 24, 36, 48, 60, 72, 84, 96)]
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()


def test_a_short_phase_off_a_terminal_is_two_lines() -> None:
    clock, stream = Clock(), io.StringIO()
    phase(Progress("t", stream, clock=clock), clock, steps=1000, step=0.01)
    assert stream.getvalue().splitlines() == ["t: listing versions under s3://b/p/ …", "t: listed 1000"]


def test_a_terminal_rewrites_one_line_at_most_once_a_second_and_keeps_the_last() -> None:
    clock, stream = Clock(), Terminal()
    progress = Progress("t", stream, interval=60, clock=clock)
    phase(progress, clock, steps=10, step=0.5)
    writes = stream.getvalue().split("\r\033[K")[1:]
    assert writes == ["t: listing versions under s3://b/p/ …", "t: 2 so far", "t: 4 so far", "t: 6 so far",
                      "t: 8 so far", "t: 10 so far", "t: listed 10\n"]  # fmt: skip
    progress.begin("copying")
    progress.end("copied")
    assert stream.getvalue().endswith("\r\033[Kt: copying\r\033[Kt: copied\n")


def test_meter_by_bytes_with_eta() -> None:
    clock = Clock()
    meter = Meter(4, 4_000_000, clock=clock)
    clock.now += 10
    meter.add(1_000_000)
    assert meter.text() == "1/4 keys (25%), 1.0 MB of 4.0 MB, 100.0 kB/s, ETA 30s"
    for _ in range(3):
        meter.add(1_000_000)
    assert meter.text() == "4/4 keys (100%), 4.0 MB of 4.0 MB, 400.0 kB/s"


def test_meter_without_bytes_counts_keys() -> None:
    clock = Clock()
    meter = Meter(10, 0, clock=clock)
    clock.now += 2
    meter.add(0)
    assert meter.text() == "1/10 keys (10%), 0.5 keys/s, ETA 18s"


def test_a_closed_stream_does_not_stop_the_work() -> None:
    stream = io.StringIO()
    stream.close()
    progress = Progress("t", stream)
    progress.begin("x")
    progress.end("y")
    assert progress.lines == 0
