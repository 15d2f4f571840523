"""install-cron refuses an entry that could never work, before anything is written: --args the task
would reject, a task that needs --host without one, and (the preflight, run with the entry's own
interpreter in cron's environment) an inv, lock folder or inventory that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.host import cron_entry
from remediations.host import install_cron as cron

ROOT = Path(__file__).resolve().parents[3]
CONTROLLER = {"ansible_connection": "local"}


@pytest.mark.parametrize(
    ("task", "needs_host"),
    [("health", True), ("wal-cleanup", True), ("ensure-healthy", True), ("unblock-expired", True),
     ("backup-check", False), ("restore-test", False)],
)  # fmt: skip
def test_a_task_that_needs_hosts_is_refused_without_host(task: str, needs_host: bool) -> None:
    """From the registry: a task neither run from the controller nor with default hosts needs --host."""
    if needs_host:
        with pytest.raises(UsageError, match=rf"--task {task} needs --host: give the hosts in --args"):
            cron.InstallCron(task, "@daily", inventory="/i.yml")
    else:
        cron.InstallCron(task, "@daily", inventory="/i.yml")
    cron.InstallCron(task, "@daily", args="--host db1", inventory="/i.yml")
    cron.InstallCron(task, "@daily", args="--host=db1", inventory="/i.yml")
    cron.InstallCron(task, None, remove=True, inventory="/i.yml")  # removing runs nothing


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ("--host db1 --hots db2", "No idea what '--hots' is"),
        ("--host db1 stray", "No idea what 'stray' is"),
        ("--host", "needed value and was not given one"),
        ("--host db1 --parallel", "needed value"),
    ],
)
def test_args_the_task_would_refuse_are_refused(args: str, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        cron.InstallCron("health", "@daily", args=args, inventory="/i.yml")
    message = str(caught.value)
    assert message.startswith(f"--args {args!r}: inv health would refuse it on every run (")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("task", "args", "words"),
    [
        ("health", "--host web01 --service 'bad;name'", "--service 'bad;name': not a compose service name"),
        ("health", "--host web01 --service '$(id)'", "not a compose service name"),
        ("health", "--host web01 --service", "needed value"),  # a bare --service meant every service
        ("wal-cleanup", "--host db1 --drop-inactive-slot 'x;rm'", "--drop-inactive-slot"),
    ],
)
def test_values_the_task_would_refuse_are_refused_at_install(task: str, args: str, words: str) -> None:
    """Not only the flags: the values too, as the task checks them before it connects anywhere."""
    with pytest.raises(UsageError) as caught:
        cron.InstallCron(task, "@daily", args=args, inventory="/i.yml")
    message = str(caught.value)
    assert f"inv {task} would refuse it on every run" in message and words in message, message
    assert "\n" not in message


def test_task_flags_are_what_inv_would_parse() -> None:
    flags = cron_entry.task_flags("health", ["--host", "db1", "--json", "--service", "api"])
    assert flags["host"] == "db1" and flags["json"] is True
    # Whatever spelling reaches --inventory (a short flag too, if the front end has one) is refused.
    with pytest.raises(UsageError, match="passes --inventory itself"):
        cron_entry.check_task_flags("health", {"host": "db1", "inventory": "/x.yml"})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def controller_entry(tmp_path: Path, inventory: str, args: str = "--host db1", **host_vars: str) -> str:
    """The refusal install-cron gives for a controller entry ("" when it would install it)."""
    remediation = cron.InstallCron("health", "@daily", args=args, inventory=inventory)
    host = Host("localhost", {**CONTROLLER, "lock_dir": str(tmp_path), **host_vars})
    try:
        remediation.validate(host)
    except UsageError as exc:
        return str(exc)
    return ""


def test_the_preflight_refuses_what_every_run_would_fail_on(tmp_path: Path) -> None:
    good = write(tmp_path / "hosts.yml", "all:\n  hosts:\n    db1:\n      ansible_host: 127.0.0.1\n")
    assert controller_entry(tmp_path, good) == ""
    cases = [
        (controller_entry(tmp_path, str(tmp_path / "missing.yml")), "missing.yml: inventory not found"),
        (controller_entry(tmp_path, write(tmp_path / "bad.yml", "all: [\n")), "bad.yml"),
        (controller_entry(tmp_path, good, args="--host db9"), "'db9'"),
        (controller_entry(tmp_path, good, cron_inv="/no/inv", cron_python=sys.executable), "/no/inv is not"),
        (controller_entry(tmp_path, good, cron_inv="/no/inv"), "interpreter /no/python cannot run the"),
        (controller_entry(tmp_path, good, lock_dir="/nonexistent"), "lock folder /nonexistent"),
        (controller_entry(tmp_path, good, cron_python="/usr/bin/false"), "cannot run the cron runner"),
    ]
    for message, words in cases:
        assert message.startswith("the entry would fail on every run: ") and words in message, message
        assert message.endswith("; nothing written") and "\n" not in message


def test_the_default_inv_is_the_one_beside_this_python() -> None:
    remediation = cron.InstallCron("health", "@daily", args="--host db1", inventory="/i.yml")
    line = remediation.job(Host("localhost", CONTROLLER)).line
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    assert f" {bin_dir}/python -m remediations.reporting.cronlog --name health " in line, line
    assert line.endswith(f" -- {bin_dir}/inv health --inventory /i.yml --host db1 >> {cron.DEFAULT_LOG} 2>&1")


def test_a_restore_pitr_switch_is_refused_at_install_and_its_drill_is_not() -> None:
    """Every cron run of a switch would refuse (a person must run it): refused now, in one line."""
    with pytest.raises(UsageError) as caught:
        switch = "--host db1 --to '2024-01-15 14:30:00+03' --yes"
        cron.InstallCron("restore-pitr", "@weekly", args=switch, inventory="/i.yml")
    message = str(caught.value)
    assert "inv restore-pitr would refuse it on every run" in message and "give --drill" in message, message
    assert "\n" not in message
    assert "REMEDIATIONS_RUN_ID" not in os.environ, "the check leaves the environment as it was"
    cron.InstallCron("restore-pitr", "@weekly", args="--host db1 --drill", inventory="/i.yml")


@pytest.mark.parametrize(
    ("args", "words"),
    [("--host db9", "the entry would fail on every run: its inventory: "), ("", "needs --host")],
)
def test_the_cli_refuses_in_one_line_with_exit_2_and_writes_nothing(
    tmp_path: Path, args: str, words: str
) -> None:
    name = f"rmtest-refused-{os.getpid()}"
    good = write(tmp_path / "hosts.yml", "all:\n  hosts:\n    db1:\n      ansible_host: 127.0.0.1\n")
    argv = [str(Path(sys.executable).parent / "inv"), "install-cron", "--task", "health", "--schedule",
            "@daily", "--name", name, "--inventory", good, "--args", args]  # fmt: skip
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr and done.stdout == ""
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    assert name not in listed.stdout
