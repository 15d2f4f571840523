"""Cron entries you can read afterwards, on the lab: the entry install-cron wrote, run as cron runs it
(`sh -c` with cron's environment, no TTY), and by a real cron daemon (Debian's `cron`) on db1.

Each run leaves a start line, its output and an end line with the exit status; a run that finds the
previous one still holding the entry's lock leaves one `skipped` line and exits 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from tests import labkit
from tests.labkit import inv

pytestmark = pytest.mark.lab

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
CRON_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SHELL": "/bin/sh", "LOGNAME": "root"}
HOST = "db1"
# db1 runs no compose project: its health check is then green (the lab's vars give every host one).
NO_COMPOSE = {HOST: {"compose_project_dir": "", "api_health_url": ""}}


def run(*args: str, audit: Path, inventory: Path) -> labkit.Ran:
    return inv(*args, "--json", audit=audit, inventory=inventory)


def entry_command(crontab: str, name: str) -> str:
    """The command of the entry `name` in a crontab's text (the line under its marker, without the
    schedule's five fields)."""
    lines = crontab.splitlines()
    line = lines[lines.index(f"# remediations: {name} (managed by inv install-cron; do not edit)") + 1]
    return line.split(" ", 5)[5]


def controller_crontab() -> str:
    return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False).stdout


def remove_entry(name: str, text: str) -> str | None:
    from remediations.facts.crontab import edit

    cleaned, action = edit(text, name, None)
    return None if action == "none" else cleaned


@pytest.fixture
def controller_entry() -> Iterator[str]:
    """An entry name in the controller's crontab, removed again after the test."""
    name = f"rmtest-log-{os.getpid()}"
    yield name
    cleaned = remove_entry(name, controller_crontab())
    if cleaned is not None:
        argv = ["crontab", "-"] if cleaned else ["crontab", "-r"]
        subprocess.run(argv, input=cleaned, text=True, check=True)


def run_like_cron(command: str, timeout: float = 120) -> int:
    """`command` as cron runs it: `sh -c`, cron's environment, stdin not a TTY, a session of its own."""
    done = subprocess.run(["/bin/sh", "-c", command], env=CRON_ENV, cwd="/", stdin=subprocess.DEVNULL,
                          capture_output=True, start_new_session=True, timeout=timeout,
                          check=False)  # fmt: skip
    assert done.stdout == b"" and done.stderr == b"", "cron would mail this output"
    return done.returncode


def runs_in(log: str, name: str) -> list[dict[str, Any]]:
    """The runs of entry `name` in a log's text: each a dict of start, output lines, end (or skipped)."""
    runs: list[dict[str, Any]] = []
    for line in log.splitlines():
        head = re.match(rf"({STAMP}) {re.escape(name)} (.*)$", line)
        if not head:
            continue
        rest = head.group(2)
        if rest.startswith("start run="):
            runs.append({"start": line, "id": rest[len("start run=") :].split(":", 1)[0], "output": []})
        elif rest.startswith("| "):
            runs[-1]["output"].append(rest[2:])
        elif rest.startswith("exit="):
            runs[-1]["end"] = line
        elif rest.startswith("skipped: "):
            runs.append({"skipped": line})
    return runs


def test_an_installed_entry_run_as_cron_runs_it_logs_its_runs(
    lab: Any, controller_entry: str, tmp_path: Path
) -> None:
    """The exact installed command line, run by `sh -c` as cron would: a start line, the task's
    output, `exit=0 ok`, the run id also in the audit log; a second run while a first holds the
    lock: one `skipped` line naming it, exit 0, the task not run."""
    cron_audit = tmp_path / "cron-audit.jsonl"
    inventory = labkit.write_inventory(tmp_path / "hosts.yml", all_vars={"audit_log": str(cron_audit)},
                                       host_vars=NO_COMPOSE)  # fmt: skip
    log = tmp_path / "logs" / "cron.log"
    ran = run("install-cron", "--task", "health", "--schedule", "0 4 * * 0", "--name", controller_entry,
              "--args", f"--host {HOST}", "--log", str(log), audit=tmp_path / "a.jsonl",
              inventory=inventory)  # fmt: skip
    assert ran.code == 0 and ran.host("localhost")["status"] == "changed", ran.stdout + ran.stderr
    command = entry_command(controller_crontab(), controller_entry)

    assert run_like_cron(command) == 0
    [first] = runs_in(log.read_text(), controller_entry)
    assert first["start"].endswith(f" health --inventory {inventory} --host {HOST}"), first["start"]
    assert any(HOST in line for line in first["output"]), first["output"]
    ended = rf"{STAMP} {controller_entry} exit=0 ok \(\d+\.\ds\) run={first['id']}"
    assert re.fullmatch(ended, first["end"]), first["end"]
    records = labkit.audit_lines(cron_audit)
    assert records and {r["run_id"] for r in records} == {first["id"]}, records

    # A run still going (the entry's runner holding its lock: a task that takes long) ...
    lock = shlex.split(command)[shlex.split(command).index("--lock") + 1]
    runner = [sys.executable, "-m", "remediations.reporting.cronlog", "--name", controller_entry,
              "--lock", lock, "--", "sleep", "60"]  # fmt: skip
    with log.open("ab") as out:
        holder = subprocess.Popen(runner, stdout=out, stderr=subprocess.STDOUT, cwd=labkit.ROOT, env=CRON_ENV)
    try:
        deadline = time.monotonic() + 20
        while len(runs_in(log.read_text(), controller_entry)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # ... and the next one, as cron starts it.
        assert run_like_cron(command) == 0
    finally:
        holder.terminate()
        holder.wait(timeout=20)
    runs = runs_in(log.read_text(), controller_entry)
    assert [("skipped" in r) for r in runs] == [False, False, True], runs
    assert re.fullmatch(
        rf"{STAMP} {controller_entry} skipped: previous run still holds the lock \(pid {holder.pid}, "
        rf"run={runs[1]['id']}, since {STAMP}\)",
        runs[2]["skipped"],
    ), runs[2]
    assert {r["run_id"] for r in labkit.audit_lines(cron_audit)} == {first["id"]}, "the skipped run ran"
    # `grep NAME LOG`, read for failures, finds none: the skipped run is no failed check.
    ends = [line for line in log.read_text().splitlines() if " exit=" in line]
    assert [" exit=0 ok " in line for line in ends] == [True, False], ends  # the second: the holder stopped
    assert "killed by SIGTERM" in ends[1]


# ------------------------------------------------------------------ a real cron daemon on db1


def on_host(
    argv: list[str], input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return lab.exec_on(HOST, argv, input=input, check=check)


@pytest.fixture
def db1_crontab(lab: Any) -> Iterator[None]:
    """db1's root crontab, put back as it was after the test."""
    assert on_host(["mountpoint", "-q", "/var/spool/cron"], check=False).returncode == 0
    saved = on_host(["crontab", "-l"], check=False)
    yield
    if saved.returncode == 0:
        on_host(["crontab", "-"], input=saved.stdout)
    else:
        on_host(["crontab", "-r"], check=False)


@pytest.mark.slow_faults
def test_a_real_cron_daemon_logs_a_run_and_a_skipped_one(db1_crontab: None, tmp_path: Path) -> None:
    """Debian's cron on db1 runs two installed entries at the next minute: one logs start, output
    and `exit=0 ok`; the other finds its lock held by a run still going and logs `skipped`."""
    log = f"/var/log/rmtest-cron-{os.getpid()}/cron.log"  # db1's own /var/log
    cron_audit = tmp_path / "cron-audit.jsonl"
    with labkit.host_venv("rmtest-cron-venv") as venv:
        cron_vars = {"cron_project_dir": str(labkit.ROOT), "cron_inv": str(venv / "inv"),
                     "audit_log": str(cron_audit)}  # fmt: skip
        inventory = labkit.write_inventory(tmp_path / "hosts.yml", all_vars=cron_vars, host_vars=NO_COMPOSE)
        names = ("rmtest-cron-ran", "rmtest-cron-busy")
        with lab.cron_daemon(HOST):
            for name in names:
                ran = run("install-cron", "--task", "health", "--host", HOST, "--name", name, "--schedule",
                          "* * * * *", "--args", f"--host {HOST}", "--log", log, audit=tmp_path / "a.jsonl",
                          inventory=inventory)  # fmt: skip
                assert ran.host(HOST)["status"] == "changed", ran.stdout + ran.stderr
            # A run of the second entry still going when the minute comes (its runner, on db1).
            lock = "/run/lock/remediations-cron-rmtest-cron-busy.lock"
            hold = (f"cd {shlex.quote(str(labkit.ROOT))} && exec {venv}/python -m "
                    f"remediations.reporting.cronlog --name holder --lock {lock} -- "
                    "sh -c 'echo holding; sleep 150'")  # fmt: skip
            holder = subprocess.Popen(lab_argv(["sh", "-c", hold]), stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout is not None and "start run=" in holder.stdout.readline()
                text = wait_for(log, lambda t: both_logged(t, names), timeout=130)
            finally:
                holder.terminate()
                holder.wait(timeout=20)
                for name in names:
                    run("install-cron", "--task", "health", "--host", HOST, "--name", name, "--remove",
                        audit=tmp_path / "a.jsonl", inventory=inventory)  # fmt: skip
                on_host(["rm", "-rf", str(Path(log).parent)], check=False)
    first = runs_in(text, names[0])[0]
    assert re.fullmatch(rf"{STAMP} {names[0]} exit=0 ok \(\d+\.\ds\) run={first['id']}", first["end"]), first
    assert any(HOST in line for line in first["output"]), first["output"]
    assert first["id"] in {r["run_id"] for r in labkit.audit_lines(cron_audit)}
    skipped = runs_in(text, names[1])[0]
    assert re.fullmatch(rf"{STAMP} {names[1]} skipped: previous run still holds the lock \(pid \d+, "
                        rf"run=\S+, since {STAMP}\)", skipped.get("skipped", "")), skipped  # fmt: skip


def both_logged(text: str, names: tuple[str, str]) -> bool:
    """The first entry's run ended, and the second entry logged a run or a skip."""
    ran, busy = runs_in(text, names[0]), runs_in(text, names[1])
    return bool(ran) and "end" in ran[0] and bool(busy)


def lab_argv(argv: list[str]) -> list[str]:
    """`argv` inside db1's network and mount namespaces (as exec_on runs it), for a Popen."""
    from lab.base import _ns_argv
    from lab.state import _host

    return _ns_argv(_host(HOST), argv)


def wait_for(path: str, done: Any, timeout: float) -> str:
    """The text of `path` on db1 once `done(text)` holds; AssertionError with its tail after `timeout`."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        got = on_host(["cat", path], check=False)
        text = got.stdout.decode() if got.returncode == 0 else ""
        if done(text):
            return text
        time.sleep(2)
    raise AssertionError(f"cron did not log the runs within {timeout:.0f}s; {path}: {text[-2000:]!r}")


# ------------------------------------------------------------------ the schedule, judged by cron itself

SCHEDULES = [
    "0 4 * * 0", "*/5 * * * *", "0 0 1 jan,jul *", "30 2 * * mon-fri", "0 3 1-15/2 * 7", "5/15 * * * *",
    "0 4 * * SUN", "@daily", "@reboot", "@weekly", "@hourly", "@annually", "@midnight",
    "60 4 * * 0", "0 24 * * 0", "0 4 0 * *", "0 4 * 13 *", "0 4 * * 8", "0 4 * * funday", "*/0 * * * *",
    "5-1 * * * *", "0 4 * *", "0 4 * * 0 1", "@sometimes", "1,,2 * * * *", ",1 * * * *", "0-60 * * * *",
    "* * 32 * *", "x * * * *", "-1 * * * *", "1- * * * *",
]  # fmt: skip


def cron_accepts(schedule: str) -> bool:
    """Whether Debian's `crontab` (on db1, whose spool is its own) installs a line with `schedule`."""
    done = on_host(["crontab", "-"], input=f"{schedule} /bin/true\n".encode(), check=False)
    return done.returncode == 0


def test_install_cron_accepts_no_schedule_cron_rejects(db1_crontab: None) -> None:
    """The oracle: every schedule install-cron accepts, Debian's crontab accepts too; one crontab
    refuses is refused by install-cron before any host is touched. install-cron is stricter only
    where it says so."""
    from remediations.core.errors import UsageError
    from remediations.host.install_cron import validate_schedule

    verdicts = {}
    for schedule in SCHEDULES:
        try:
            validate_schedule(schedule)
            ours = True
        except UsageError:
            ours = False
        verdicts[schedule] = (ours, cron_accepts(schedule))
    accepted_by_us_only = [s for s, (ours, theirs) in verdicts.items() if ours and not theirs]
    assert not accepted_by_us_only, f"install-cron accepts what cron rejects: {accepted_by_us_only}"
    stricter = [s for s, (ours, theirs) in verdicts.items() if theirs and not ours]
    # On purpose: a backwards range (cron runs it at no minute or wraps, by version), and a sixth
    # field (cron takes it as the start of the command).
    assert stricter == ["5-1 * * * *", "0 4 * * 0 1"], f"install-cron refuses what cron accepts: {stricter}"
    assert sum(theirs for _, theirs in verdicts.values()) >= 12, verdicts  # the oracle said yes too


def test_an_entry_db1_could_not_run_is_refused_there(db1_crontab: None, tmp_path: Path) -> None:
    """With --host the entry runs on that host: the preflight runs there, with the entry's Python.
    The controller's venv Python is under its own /root, which db1 does not see; an inventory db1
    does not have. The host fails saying so, and db1's crontab is as it was."""
    before = on_host(["crontab", "-l"], check=False)
    with labkit.host_venv("rmtest-refused-venv") as venv:
        no_inventory = {"cron_project_dir": str(labkit.ROOT), "cron_inv": str(venv / "inv"),
                        "cron_inventory": "/nonexistent.yml"}  # fmt: skip
        cases = [
            (labkit.LAB_INVENTORY, "cannot run the cron runner"),
            (labkit.write_inventory(tmp_path / "x.yml", all_vars=no_inventory),
             "/nonexistent.yml: inventory not found"),
        ]
        for inventory, words in cases:
            ran = run("install-cron", "--task", "health", "--host", HOST, "--schedule", "@daily", "--args",
                      f"--host {HOST}", audit=tmp_path / "a.jsonl", inventory=inventory)  # fmt: skip
            assert ran.code == 1, ran.stdout + ran.stderr
            message = ran.host(HOST)["message"]
            assert message.startswith(f"the entry would fail on every run on {HOST}: "), message
            assert words in message and message.endswith("; nothing written"), message
            after = on_host(["crontab", "-l"], check=False)
            assert (after.returncode, after.stdout) == (before.returncode, before.stdout)
