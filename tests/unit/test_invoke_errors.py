"""Invoke's own parse errors, through the real `inv` binary as on-call types it: one line, exit 2, a
JSON error object with --json; a closed pipe ends quietly; short flags mean one thing everywhere."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest

import tasks
from remediations.cli import SHORT_FLAGS
from remediations.reporting.output import SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[2]
INV = str(Path(sys.executable).parent / "inv")  # Invoke's own console script, not a Program of ours


def environ(audit: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATIONS_")}
    return env | {"REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}


def inv(*args: str, audit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INV, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=environ(audit), check=False)  # fmt: skip


NO_TASK = "(inv --list shows every task)"
PARSE_ERRORS = [
    pytest.param(["restart-apii", "--host", "prod"],
                 f"error: no task 'restart-apii'; did you mean restart-api? {NO_TASK}", id="unknown-task"),
    pytest.param(["restart-api", "--hots", "prod"],
                 "error: restart-api has no flag '--hots'; did you mean --host? "
                 "(inv --help restart-api lists them)", id="unknown-flag"),
    pytest.param(["rotate-secret", "--host", "prod", "--nmae", "API_TOKEN"],
                 "error: rotate-secret has no flag '--nmae'; did you mean --name? "
                 "(inv --help rotate-secret lists them)", id="unknown-flag-of-another-task"),
    pytest.param(["restart-api", "--host"], "error: --host needs a value (inv --help restart-api)",
                 id="missing-value"),
    pytest.param(["health", "--host", "prod", "--service"],
                 "error: --service needs a value (inv --help health)",
                 id="repeatable-flag-missing-value-at-the-end"),
    pytest.param(["ensure-healthy", "--service", "--host", "prod"],
                 "error: --service needs a value (inv --help ensure-healthy)",
                 id="repeatable-flag-missing-value-before-a-flag"),
    pytest.param(["restart-api", "--host", "prod", "--check=yes"],
                 "error: --check is a switch and takes no value; leave out '=yes'",
                 id="switch-given-a-value"),
    pytest.param(["restart-api", "prod"],
                 "error: 'prod' is neither a flag of restart-api nor a task; "
                 "flags take their value after the name (--host prod)", id="bare-word"),
    pytest.param(["--help", "restart-apii"],
                 f"error: no task 'restart-apii'; did you mean restart-api? {NO_TASK}",
                 id="help-unknown-task"),
    pytest.param(["zzzz"], f"error: no task 'zzzz' {NO_TASK}", id="no-close-match"),
]


@pytest.mark.parametrize(("argv", "line"), PARSE_ERRORS)
def test_invoke_parse_error_is_one_line_and_exit_2(audit: Path, argv: list[str], line: str) -> None:
    done = inv(*argv, audit=audit)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")


@pytest.mark.parametrize("argv", [["restart-api", "--hots", "prod", "--json"], ["restart-apii", "--json"],
                                  ["restart-api", "--json", "--host"]])  # fmt: skip
def test_parse_error_with_json_is_a_json_error_object(audit: Path, argv: list[str]) -> None:
    done = inv(*argv, audit=audit)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    document = json.loads(done.stdout)
    assert document == {"schema": 1, "error": line.removeprefix("error: "), "exit_code": 2}
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def closed_pipe_run(argv: list[str], audit: Path) -> subprocess.CompletedProcess[str]:
    """`argv` with its stdout a pipe whose reader is already gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(argv, cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=environ(audit), check=False)  # fmt: skip
    finally:
        os.close(write_end)
    return subprocess.CompletedProcess(argv, done.returncode, "", done.stderr)


@pytest.mark.parametrize("argv", [["--list"], ["--help", "restart-api"], []],
                         ids=["list", "help-task", "bare"])
def test_listing_to_a_closed_pipe_ends_quietly(audit: Path, argv: list[str]) -> None:
    """(A bare `inv --help` is answered by Invoke before it reads tasks.py: README "Command line".)"""
    done = closed_pipe_run([INV, *argv], audit)
    assert (done.returncode, done.stderr) == (0, "")


def test_bad_input_with_json_to_a_closed_pipe_is_still_one_line(audit: Path, tmp_path: Path) -> None:
    done = closed_pipe_run([INV, "restart-api", "--host", "nosuchhost", "--json", "--inventory",
                            str(tmp_path / "none.yml")], audit)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr


def test_list_into_head_prints_its_first_line_and_no_traceback(audit: Path) -> None:
    script = f"{shlex.quote(INV)} --list | head -1; echo \"status ${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=environ(audit), check=False)  # fmt: skip
    assert done.stdout == "Available tasks:\nstatus 0\n"
    assert done.stderr == ""


# ------------------------------------------------------------------------------------ short flags

# Flags that change or remove something beyond the task's own target, or create what was not there.
DESTROYS_OR_CREATES = {
    "create", "delete_new", "delete_old", "remove", "kill_established", "all", "volumes", "undelete",
    "drop_inactive_slot", "enable", "set", "unset", "if_unhealthy",
}


def short_forms() -> dict[str, set[tuple[str, str]]]:
    """Every short flag of every task: '-x' -> {(task, the long flag it means)}."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, task in tasks.ns.tasks.items():
        for argument in task.get_arguments():
            long_name = argument.attr_name or argument.name
            for short in (n for n in argument.names if len(n) == 1):
                found[short].add((name, long_name))
    return found


def test_a_short_flag_means_the_same_in_every_task() -> None:
    found = short_forms()
    meanings = {short: {long for _, long in uses} for short, uses in found.items()}
    assert meanings == {short: {long} for long, short in SHORT_FLAGS.items()}
    assert {task for task, _ in found["H"]} == set(tasks.ns.tasks)  # in every task, not just some


def test_no_flag_that_destroys_or_creates_has_a_short_form() -> None:
    declared = {a.attr_name or a.name for t in tasks.ns.tasks.values() for a in t.get_arguments()}
    assert {"create", "delete_new", "delete_old", "if_unhealthy"} <= declared  # the walk sees them
    shorted = {long for uses in short_forms().values() for _, long in uses}
    assert shorted & DESTROYS_OR_CREATES == set()
    assert shorted == {"host", "inventory", "check"}


def test_rotate_secret_dash_c_is_no_longer_create(audit: Path) -> None:
    """-c was rotate-secret's --create (and --check was -e): now -c is only Invoke's own --collection."""
    done = inv("rotate-secret", "--host", "prod", "--name", "API_TOKEN", "-c", audit=audit)
    assert done.returncode == 2
    assert done.stderr == "error: --collection needs a value (inv --help rotate-secret)\n"


def test_a_run_to_a_closed_pipe_goes_on_and_keeps_its_exit_code(audit: Path, tmp_path: Path) -> None:
    """`inv … --json | head -1` with the reader already gone: no traceback, every host run and
    audited, and the run's own exit code (1: the hosts' facts fail, their project is missing)."""
    from tests import labkit

    hosts = {f"h{i}": {"compose_project_dir": str(tmp_path / "none"), "api_service": "api"} for i in range(3)}
    inventory = labkit.write_local_inventory(tmp_path, hosts)
    for extra in (["--json"], []):
        audit.unlink(missing_ok=True)
        done = closed_pipe_run([INV, "restart-api", "-H", "h*", "-C", "-i", str(inventory), *extra], audit)
        assert (done.returncode, done.stderr) == (1, ""), extra
        assert {r["host"] for r in labkit.audit_lines(audit)} == set(hosts)
