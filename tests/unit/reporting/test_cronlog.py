"""The runner of install-cron entries: its log lines, its lock, the preflight. Real processes and
real flock(2) locks: the runner in a subprocess, as cron starts it, with cron's PATH."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remediations.reporting import cronlog
from remediations.reporting.audit import Actor

ROOT = Path(__file__).resolve().parents[3]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
CRON_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SHELL": "/bin/sh", "PYTHONPATH": str(ROOT)}


def runner(name: str, lock: Path, *command: str) -> list[str]:
    return [sys.executable, "-m", "remediations.reporting.cronlog", "--name", name, "--lock", str(lock),
            "--", *command]  # fmt: skip


def run_entry(name: str, lock: Path, log: Path, *command: str) -> int:
    """The runner as an entry runs it: output appended to the log, no TTY, cron's environment."""
    with log.open("ab") as out:
        done = subprocess.run(runner(name, lock, *command), stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, env=CRON_ENV, cwd=ROOT, start_new_session=True,
                              timeout=60, check=False)  # fmt: skip
    return done.returncode


def test_a_run_is_bracketed_by_a_start_and_an_end_line(tmp_path: Path) -> None:
    log, lock = tmp_path / "cron.log", tmp_path / "e.lock"
    script = 'echo "run $REMEDIATIONS_RUN_ID"; echo oops >&2; printf "a\\033[2Jb\\r\\n"; exit 1'
    assert run_entry("backup-check", lock, log, "sh", "-c", script) == 1
    lines = log.read_text().splitlines()
    assert len(lines) == 5, lines
    start = re.fullmatch(rf"({STAMP}) backup-check start run=(\d{{8}}T\d{{6}}Z-\d+): sh -c .*", lines[0])
    assert start, lines[0]
    run_id = start.group(2)
    assert re.fullmatch(rf"{STAMP} backup-check \| run {run_id}", lines[1]), lines[1]
    assert re.fullmatch(rf"{STAMP} backup-check \| oops", lines[2]), lines[2]
    # A terminal escape or a carriage return in the task's output is shown, not obeyed.
    assert lines[3].endswith("backup-check | a\\x1b[2Jb\\x0d"), lines[3]
    end = re.fullmatch(rf"({STAMP}) backup-check exit=1 failed \((\d+\.\d)s\) run={run_id}", lines[4])
    assert end, lines[4]
    assert end.group(1) >= start.group(1)
    assert lock.read_text() == "", "the holder's note stays after the run"


@pytest.mark.parametrize(
    ("code", "word"),
    [(0, "ok"), (1, "failed"), (2, "bad-input"), (3, "warned"), (130, "interrupted"), (143, "terminated"),
     (9, "failed")],
)  # fmt: skip
def test_the_end_line_says_the_exit_status_in_a_word(tmp_path: Path, code: int, word: str) -> None:
    log = tmp_path / "cron.log"
    assert run_entry("health", tmp_path / "l", log, "sh", "-c", f"exit {code}") == code
    assert re.search(rf" health exit={code} {word} \(\d+\.\ds\) run=\S+$", log.read_text()), log.read_text()


def test_a_task_killed_by_a_signal_and_one_that_cannot_start(tmp_path: Path) -> None:
    log = tmp_path / "cron.log"
    assert run_entry("health", tmp_path / "l", log, "sh", "-c", "kill -KILL $$") == 128 + 9
    assert " health exit=137 killed by SIGKILL (" in log.read_text()
    assert run_entry("health", tmp_path / "l", log, "/nonexistent/inv", "health") == 127
    last = log.read_text().splitlines()[-1]
    assert "exit=127 failed: could not start" in last and "cannot run /nonexistent/inv" in last, last


def test_a_run_that_finds_the_lock_held_is_skipped_and_exits_0(tmp_path: Path) -> None:
    """The first run holds the entry's lock; the second runs nothing, writes one `skipped` line
    naming the first (pid, run id, since when) and exits 0: not a failure to cron."""
    log, lock, ran = tmp_path / "cron.log", tmp_path / "e.lock", tmp_path / "ran"
    with log.open("ab") as out:
        first = subprocess.Popen(runner("restore-test", lock, "sh", "-c", "echo started; sleep 30"),
                                 stdout=out, stderr=subprocess.STDOUT, env=CRON_ENV, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run_entry("restore-test", lock, log, "touch", str(ran)) == cronlog.SKIPPED_EXIT == 0
    finally:
        first.terminate()
        first.wait(timeout=20)
    assert not ran.exists(), "the skipped run ran its task"
    lines = log.read_text().splitlines()
    first_id = re.search(r"start run=(\S+):", lines[0]).group(1)  # type: ignore[union-attr]
    skipped = [line for line in lines if "skipped" in line]
    assert len(skipped) == 1
    assert re.fullmatch(
        rf"{STAMP} restore-test skipped: previous run still holds the lock \(pid {first.pid}, "
        rf"run={first_id}, since {STAMP}\)",
        skipped[0],
    ), skipped[0]
    assert "exit=" not in skipped[0] and "fail" not in skipped[0]
    # The first run, told to stop, passed it on to its task and says so.
    ended = r"restore-test exit=143 killed by SIGTERM \(.*got SIGTERM and passed it on\) run="
    assert re.search(ended, lines[-1]), lines[-1]


def test_a_lock_held_by_flock_1_is_skipped_too(tmp_path: Path) -> None:
    """An entry from before these logs runs under `flock -n LOCK`: it writes no note, still skipped."""
    log, lock = tmp_path / "cron.log", tmp_path / "e.lock"
    holder = subprocess.Popen(["flock", str(lock), "-c", "echo locked; sleep 30"], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert run_entry("health", lock, log, "true") == 0
    finally:
        holder.kill()
        holder.wait()
    assert log.read_text().endswith(" health skipped: previous run still holds the lock (holder unknown)\n")


def test_the_task_keeps_the_lock_when_the_runner_is_killed(tmp_path: Path) -> None:
    """As under flock(1): the task holds the lock's descriptor, so a runner killed with -9 does not
    let the next run start beside a task still running."""
    log, lock, pid = tmp_path / "cron.log", tmp_path / "e.lock", tmp_path / "task.pid"
    with log.open("ab") as out:
        first = subprocess.Popen(runner("health", lock, "sh", "-c", f"echo $$ > {pid}; exec sleep 30"),
                                 stdout=out, stderr=subprocess.STDOUT, env=CRON_ENV, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (pid.exists() and pid.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        first.kill()
        first.wait()
        assert run_entry("health", lock, log, "true") == 0
        assert "skipped: previous run still holds the lock" in log.read_text().splitlines()[-1]
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid.read_text()), 9)


def test_the_run_id_reaches_the_audit_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cronlog.RUN_ID_ENV, "20261201T030001Z-4242")
    assert Actor.current().run_id == "20261201T030001Z-4242"
    monkeypatch.setenv(cronlog.RUN_ID_ENV, "bad id; rm -rf /")
    assert re.fullmatch(r"\d{8}T\d{6}Z-\d+", Actor.current().run_id)


def test_lines_are_pure_functions_of_their_parts() -> None:
    at = cronlog.stamp(dt.datetime(2026, 12, 1, 4, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert at == "2026-12-01T03:00:01Z"
    assert cronlog.new_run_id(dt.datetime(2026, 12, 1, 3, 0, 1, tzinfo=dt.UTC), 42) == "20261201T030001Z-42"
    assert cronlog.end_line("restore-test", "R", 0, 249.06, at) == (
        "2026-12-01T03:00:01Z restore-test exit=0 ok (249.1s) run=R"
    )
    assert cronlog.output_line("x", "a\u2028b\x85", at) == "2026-12-01T03:00:01Z x | a\\x2028b\\x85"
    assert cronlog.skipped_line("x", "", at).endswith("(holder unknown)")


def preflight(
    tmp_path: Path, inventory: str, select: str | None = None, inv: str = ""
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "remediations.reporting.cronlog", "--preflight", "--lock",
            str(tmp_path / "l.lock"), "--inventory", inventory, *(["--select", select] if select else []),
            "--", inv or str(Path(sys.executable).parent / "inv")]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=CRON_ENV, cwd=ROOT, timeout=60,
                          check=False)  # fmt: skip


def test_preflight(tmp_path: Path) -> None:
    good = tmp_path / "hosts.yml"
    good.write_text("all:\n  hosts:\n    db1:\n      ansible_host: 127.0.0.1\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("all: [\n")
    assert preflight(tmp_path, str(good), "db1").stdout == "@@preflight ok\n"
    cases = [
        (preflight(tmp_path, str(tmp_path / "none.yml")), "none.yml: inventory not found"),
        (preflight(tmp_path, str(bad)), "bad.yml"),
        (preflight(tmp_path, str(good), "db2"), "'db2'"),
        (preflight(tmp_path, str(good), inv="/no/inv"), "/no/inv is not an executable file"),
    ]
    for done, words in cases:
        assert done.returncode == 2, done
        assert done.stdout.startswith("@@preflight error: ") and words in done.stdout, done.stdout
        assert done.stdout.count("\n") == 1


def test_preflight_runs_inv(tmp_path: Path) -> None:
    """An inv whose #! interpreter this host lacks is executable but does not run: refused."""
    good = tmp_path / "hosts.yml"
    good.write_text("all:\n  hosts:\n    db1: {}\n")
    broken = tmp_path / "inv"
    broken.write_text("#!/nonexistent/python3\n")
    broken.chmod(0o755)
    done = preflight(tmp_path, str(good), inv=str(broken))
    assert done.returncode == 2 and f"{broken} does not run (" in done.stdout, done.stdout
