"""The runner of an install-cron entry: one lock per entry, and log lines you can read the next morning.

An entry installed by install-cron runs

    cd PROJECT && PYTHON -m remediations.reporting.cronlog --name NAME --lock LOCK -- \
        INV TASK ARGS >> LOG 2>&1

and this module writes, for each run (UTC timestamps, the entry's name on every line):

    2026-12-01T03:00:01Z restore-test start run=20261201T030001Z-4242: inv restore-test --inventory …
    2026-12-01T03:00:02Z restore-test | <each line the task printed>
    2026-12-01T03:04:10Z restore-test exit=0 ok (249.1s) run=20261201T030001Z-4242

A run that finds the previous one still holding the lock runs nothing and writes one line,

    2026-12-01T03:00:01Z restore-test skipped: previous run still holds the lock (pid 4242, run=…, since …)

and exits 0 (SKIPPED_EXIT): cron does not count it as a failure (Debian's `cron -L 4` logs every
non-zero exit as a failed job). A finished run exits with the task's own code, so a failed check
is a failed job. The run id is handed to the task (REMEDIATIONS_RUN_ID): the audit log's records
of the run carry the same id.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

RUN_ID_ENV = "REMEDIATIONS_RUN_ID"
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SKIPPED_EXIT = 0  # a skipped run is not a failed one (see the module docstring)
CANNOT_START_EXIT = 127  # the task's command could not be started at all
# The task's exit codes (see remediations/cli.py) as the word the end line shows.
OUTCOMES = {0: "ok", 1: "failed", 2: "bad-input", 3: "warned", 130: "interrupted", 143: "terminated"}


def stamp(now: dt.datetime | None = None) -> str:
    """A UTC ISO 8601 timestamp to the second: 2026-12-01T03:00:01Z."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(now: dt.datetime | None = None, pid: int | None = None) -> str:
    """The same shape as an interactive run's id (audit.Actor): 20261201T030001Z-4242."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{pid if pid is not None else os.getpid()}"


def outcome(code: int) -> str:
    """The word for a task's exit code; a negative code is the signal that killed it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == CANNOT_START_EXIT:
        return "failed: could not start"
    return OUTCOMES.get(code, "failed")


def clean(text: str) -> str:
    """One log line: control characters (a carriage return, an escape sequence) shown, not obeyed."""
    return "".join(f"\\x{ord(c):02x}" if _control(c) else c for c in text)


def _control(char: str) -> bool:
    code = ord(char)
    return (code < 0x20 and char != "\t") or 0x7F <= code <= 0x9F or char in "\u2028\u2029"


def start_line(name: str, run_id: str, command: Sequence[str], at: str) -> str:
    return f"{at} {name} start run={run_id}: {clean(shlex.join(command))}"


def output_line(name: str, text: str, at: str) -> str:
    return f"{at} {name} | {clean(text)}"


def end_line(name: str, run_id: str, code: int, seconds: float, at: str, note: str = "") -> str:
    """`code` < 0: killed by that signal, shown as the shell shows it (exit=143 killed by SIGTERM)."""
    detail = f"{seconds:.1f}s" + (f"; {clean(note)}" if note else "")
    return f"{at} {name} exit={exit_status(code)} {outcome(code)} ({detail}) run={run_id}"


def exit_status(code: int) -> int:
    """The exit status a shell reports for a child's return code (128 + N for signal N)."""
    return 128 - code if code < 0 else code


def skipped_line(name: str, holder: str, at: str) -> str:
    """The line of a run that did not start: not `exit=`, so no grep for failures matches it."""
    return f"{at} {name} skipped: previous run still holds the lock ({clean(holder) or 'holder unknown'})"


def holder_text(pid: int, run_id: str, since: str) -> str:
    return f"pid {pid}, run={run_id}, since {since}"


# --------------------------------------------------------------------------------------------
# The lock: flock(2) on a file per entry; the holder writes who it is into the file
# --------------------------------------------------------------------------------------------


def take_lock(path: str) -> tuple[int | None, str]:
    """(fd, "") with the lock held, or (None, the holder's own account) when another run holds it.

    The file keeps what the holder wrote ("pid 4242, run=…, since …"); a lock held by something
    else (an entry from before these logs, run under flock(1)) has nothing in it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        return None, holder
    return fd, ""


def write_holder(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)


# --------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------


def emit(line: str) -> None:
    """One line to stdout (the entry appends it to the log) in one write: O_APPEND keeps lines of
    runs of other entries sharing the log from cutting into each other."""
    data = (line + "\n").encode("utf-8", "replace")
    while data:
        data = data[os.write(1, data) :]


def run(name: str, lock: str, command: Sequence[str], *, write: Callable[[str], None] = emit) -> int:
    """Run `command` under the entry's lock, bracketed by a start and an end line; its exit code,
    or SKIPPED_EXIT (one `skipped` line, nothing run) when the previous run still holds the lock."""
    try:
        fd, holder = take_lock(lock)
    except OSError as exc:
        write(f"{stamp()} {name} exit=1 failed (cannot open the lock {clean(lock)}: {exc.strerror})")
        return 1
    if fd is None:
        write(skipped_line(name, holder, stamp()))
        return SKIPPED_EXIT
    run_id = new_run_id()
    began, started_at = time.monotonic(), stamp()
    write_holder(fd, holder_text(os.getpid(), run_id, started_at))
    write(start_line(name, run_id, command, started_at))
    try:
        code, note = _child(name, command, run_id, fd, write)
        write(end_line(name, run_id, code, time.monotonic() - began, stamp(), note))
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)
    return exit_status(code)


def _child(
    name: str, command: Sequence[str], run_id: str, fd: int, write: Callable[[str], None]
) -> tuple[int, str]:
    """Run the task, each output line prefixed as it comes; (exit code, a note for the end line)."""
    env = {**os.environ, RUN_ID_ENV: run_id}
    try:
        # The task keeps the lock's file descriptor, as under flock(1): if this runner is killed,
        # a task still running goes on holding the lock, and the next run is still skipped.
        # Its own process group: a signal passed on reaches the whole task (a shell's children too),
        # so the output pipe closes and the end line gets written.
        child = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, pass_fds=(fd,), start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return CANNOT_START_EXIT, f"cannot run {command[0]}: {exc.strerror}"
    forwarded: list[str] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        forwarded.append(signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    assert child.stdout is not None
    for raw in child.stdout:
        write(output_line(name, raw.decode("utf-8", "replace").rstrip("\n"), stamp()))
    code = child.wait()
    return code, (f"the runner got {', '.join(forwarded)} and passed it on" if forwarded else "")


# --------------------------------------------------------------------------------------------
# The preflight: install-cron runs it where cron will run the entry, with the entry's interpreter
# --------------------------------------------------------------------------------------------

PREFLIGHT_OK = "@@preflight ok"
PREFLIGHT_ERROR = "@@preflight error: "


def preflight(inv: str, inventory: str, select: str | None, lock: str) -> str:
    """What would make every run of the entry fail ("" when nothing found): the inv script, the
    lock's folder, the inventory (it must exist and parse), and the hosts --host names in it."""
    from remediations.core.errors import UsageError
    from remediations.core.inventory import load

    if not (os.path.isfile(inv) and os.access(inv, os.X_OK)):
        return f"{inv} is not an executable file (set the host var cron_inv to the project's inv)"
    try:  # its #! line names an interpreter this host has, with Invoke installed
        done = subprocess.run([inv, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{inv} does not run ({exc})"
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"{inv} does not run (exit code {done.returncode}" + (f": {said[-1][:200]})" if said else ")")
    folder = os.path.dirname(lock) or "/"
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
        return f"the lock folder {folder} is not a writable folder (set the host var lock_dir)"
    try:
        hosts = load(inventory)
        if select:
            hosts.select(select)
    except UsageError as exc:
        return f"its inventory: {exc}"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m remediations.reporting.cronlog",
        description="Run an install-cron entry's task under its lock, with timestamped log lines.",
    )
    parser.add_argument("--name", help="the entry's name, on every log line")
    parser.add_argument("--lock", required=True, help="the entry's lock file")
    parser.add_argument("--preflight", action="store_true", help="check the entry can run; run nothing")
    parser.add_argument("--inventory", help="with --preflight: the inventory the entry runs with")
    parser.add_argument("--select", help="with --preflight: the task's --host, checked in the inventory")
    parser.add_argument("command", nargs="+", help="the task's command line (after --)")
    given = parser.parse_args(argv)
    if given.preflight:
        problem = preflight(given.command[0], given.inventory or "", given.select, given.lock)
        print(PREFLIGHT_ERROR + clean(problem) if problem else PREFLIGHT_OK)
        return 2 if problem else 0
    if not given.name:
        parser.error("--name is required")
    return run(given.name, given.lock, given.command)


if __name__ == "__main__":
    sys.exit(main())
