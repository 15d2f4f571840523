"""logs, run-in-service and migrate through the real front end (`python -m invoke …`) on a local host:
the words after `--` arrive one by one as typed (Invoke itself keeps only their space-joined text),
bad input is one line and exit 2 with nothing run, and the text listings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from remediations import invoke_errors
from remediations.core.results import HostResult, RunResult, Status, StepResult
from remediations.docker.logs import listing
from tests import labkit

ROOT = Path(__file__).resolve().parents[3]


def inventory(tmp_path: Path, **host_vars: object) -> Path:
    data = {"all": {"vars": {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock"),
                             "compose_project_dir": str(tmp_path / "project"), "compose_project_name": "shop",
                             "api_service": "api"},
                    "hosts": {"local1": dict(host_vars)}}}  # fmt: skip
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(tmp_path: Path, *args: str, command: tuple[str, ...] | None = None,
        **host_vars: object) -> labkit.Ran:  # fmt: skip
    argv = [sys.executable, "-m", "invoke", *args, "--inventory", str(inventory(tmp_path, **host_vars))]
    if command is not None:
        argv += ["--", *command]
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "NO_COLOR": "1"}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False)
    return labkit.Ran(done.returncode, done.stdout, done.stderr)


RIS = ("run-in-service", "--host", "local1", "--service", "api")


@pytest.mark.parametrize(("command", "args", "want"), [
    ((), (), "the command after -- is required: give the command to run after --, e.g. -- alembic upgrade"),
    (None, (), "the command after -- is required"),
    (("",), (), "the command after --: give a command, e.g. -- alembic upgrade head"),
    # the words are counted as typed: "a b" is one word, so the escape is in word 4, not word 5
    (("sh", "-c", "a b", "\x1b[2J"), (), "the command after --: word 4 '\\x1b[2J' has a control character"),
    (("sh", "-c", "echo a\nreboot"), (), "word 3 'echo a\\nreboot' has a control character"),
    (("x" * 9000,), (), "longer than 8192 characters"),
    (("true",), ("--expect-same-as", "alembic heads"), "--expect-same-as compares with --verify's output"),
    (("true",), ("--verify", "a", "--verify-check", "m"), "--verify-check and --verify both"),
    (("true",), ("--verify", "alembic 'current"), "--verify \"alembic 'current\": No closing quotation"),
    (("true",), ("--verify", "test -f /a\n; reboot"), "--verify 'test -f /a\\n; reboot': one line"),
    (("true",), ("--via", "docker"), "--via 'docker': give auto, exec or run"),
    (("true",), ("--verify-check", "nosuch"), "host local1: --verify-check 'nosuch': no such entry in its "
                                              "service_checks var (it has none)"),
    (("true",), ("--timeout", "0.5s"), "--timeout '0.5s': give a duration of 1s or more"),
])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_runs(
    tmp_path: Path, command: tuple[str, ...] | None, args: tuple[str, ...], want: str
) -> None:
    ran = run(tmp_path, *RIS, *args, command=command)
    assert ran.code == 2, (ran.code, ran.stdout, ran.stderr)
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in ran.stderr, ran.stderr
    assert want in lines[0], lines[0]
    assert [r["step"] for r in labkit.audit_lines(tmp_path / "audit.jsonl")] == ["arguments"]
    assert not (tmp_path / "lock").exists()


def test_the_words_after_the_double_dash_are_audited_as_typed(tmp_path: Path) -> None:
    """The project directory is missing, so the run fails on the host; its audit record holds the
    command word by word (Invoke's own remainder would be the one string 'sh -c echo a b')."""
    ran = run(tmp_path, *RIS, command=("sh", "-c", "echo a b"))
    assert ran.code == 1, ran.stdout + ran.stderr
    records = labkit.audit_lines(tmp_path / "audit.jsonl")
    assert records and all(r["arguments"]["command"] == ["sh", "-c", "echo a b"] for r in records), records
    assert "does not exist" in ran.stdout


def test_remainder_is_read_from_the_argv_invoke_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invoke_errors, "_REMAINDER", [])
    monkeypatch.setattr(sys, "argv", ["inv", "run-in-service", "--", "sh", "-c", "a b"])
    assert invoke_errors.remainder() == ["sh", "-c", "a b"]  # not installed: this process's argv
    invoke_errors._remember_remainder(["inv", "x", "--host", "h", "--", "alembic", "--", "-v"])
    assert invoke_errors.remainder() == ["alembic", "--", "-v"]
    invoke_errors._remember_remainder(["inv", "x"])
    assert invoke_errors.remainder() == []


def test_named_check_from_the_inventory_is_split_and_checked(tmp_path: Path) -> None:
    checks = {"migrations": {"verify": "sh -c 'exit 1' x", "expect_same_as": "alembic heads"}}
    ran = run(tmp_path, *RIS, "--verify-check", "migrations", "--check", command=("true",),
              service_checks=checks)  # fmt: skip
    assert ran.code == 1 and "does not exist" in ran.stdout, ran.stdout + ran.stderr  # got to the host


def step(name: str, **data: object) -> StepResult:
    return StepResult(name, Status.OK, "", "", 0.0, dict(data))


def test_the_listing_prefixes_host_and_service_and_says_the_cut() -> None:
    one = HostResult("api1")
    one.add(step("read"))
    one.add(step("lines", label="api", container="shop-api-1", lines=["a", "b"], cut=3))
    two = HostResult("api2")
    two.add(step("lines", label="api", container="shop-api-1", lines=["x"], cut=0))
    two.add(step("lines", label="api", container="shop-api-2", lines=["y"], cut=0))
    two.add(step("lines", label="ringo-api.service", lines=["z"], cut=0))
    run = RunResult("logs", False)
    run.hosts.extend([one, two])
    assert listing(run.hosts).splitlines() == [
        "api1 api -- 3 earlier line(s) cut (raise --tail, or narrow --since / --grep)",
        "api1 api | a",
        "api1 api | b",
        "api2 api/shop-api-1 | x",
        "api2 api/shop-api-2 | y",
        "api2 ringo-api.service | z",
    ]
