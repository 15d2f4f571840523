"""The real front end in a subprocess: `python -m invoke …` from the project root, as on-call types it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediations.cli import Flags, execute
from remediations.reporting import audit as audit_mod

ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("boto3", "botocore", "docker", "psycopg", "paramiko", "fabric")
COMMON_FLAGS = (
    "--host",
    "--inventory",
    "--check",
    "--diff",
    "--json",
    "--parallel",
    "--serial",
    "--max-fail",
    "--lock-wait",
)


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def inv(*args: str, audit: Path, env: dict[str, str] | None = None) -> Ran:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATIONS_")}
    environ.update({"REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1", **(env or {})})
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def write_inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]], **all_vars: Any) -> Path:
    data = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "lock_dir": str(tmp_path / "lock"),
                "compose_project_name": "shop",
                "api_service": "api",
                **all_vars,
            },
            "children": {"api": {"hosts": hosts}},
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def good_inventory(tmp_path: Path) -> Path:
    return write_inventory(tmp_path, {"local1": {"compose_project_dir": str(tmp_path / "no such project")}})


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_one_error_line(ran: Ran, *fragments: str) -> str:
    assert ran.code == 2, ran
    assert "Traceback" not in ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert ran.stdout == ""
    return lines[0]


def test_unknown_host_is_one_line_exit_2_and_audited(good_inventory: Path, audit: Path) -> None:
    ran = inv("restart-api", "--host", "nosuchhost", "--inventory", str(good_inventory), audit=audit)
    line = assert_one_error_line(ran, str(good_inventory), "'nosuchhost'")
    assert line == (
        f"error: {good_inventory}: unknown host or group 'nosuchhost' (groups: all, api, ungrouped); "
        "check --host or the inventory"
    )
    [record] = audit_records(audit)
    assert (record["task"], record["step"], record["status"], record["host"]) == (
        "restart-api",
        "arguments",
        "failed",
        None,
    )
    assert record["message"] == line.removeprefix("error: ")
    assert record["arguments"]["host"] == "nosuchhost"


BAD_INPUT = [
    pytest.param("malformed", ["--host", "local1"], ("malformed YAML",), id="malformed-yaml"),
    pytest.param("missing-file", ["--host", "local1"], ("inventory not found",), id="missing-inventory"),
    pytest.param(
        "no-project-dir",
        ["--host", "local1"],
        ("missing required var 'compose_project_dir'",),
        id="missing-required-var",
    ),
    pytest.param(
        "good", ["--host", "local1", "--max-fail", "lots"], ("--max-fail 'lots'",), id="bad-max-fail"
    ),
    pytest.param("good", ["--host", "local1", "--parallel", "0"], ("--parallel '0'",), id="parallel-0"),
    pytest.param("good", [], ("--host is required",), id="no-host"),
    pytest.param("good", ["--host", "local1,!local1"], ("selects no host",), id="all-excluded"),
    pytest.param("ssh-no", ["--host", "remote1"], ("StrictHostKeyChecking=no",), id="host-key-checking-off"),
]


@pytest.mark.parametrize(("inventory_kind", "args", "fragments"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, audit: Path, inventory_kind: str, args: list[str], fragments: tuple[str, ...]
) -> None:
    project = str(tmp_path / "project")
    path = tmp_path / "hosts.yml"
    if inventory_kind == "malformed":
        path.write_text("all:\n  hosts:\n    local1: {ansible_connection: local\n  vars: [\n")
    elif inventory_kind == "no-project-dir":
        write_inventory(tmp_path, {"local1": {}})
    elif inventory_kind == "ssh-no":
        write_inventory(
            tmp_path,
            {
                "remote1": {
                    "ansible_connection": "ssh",
                    "ansible_host": "127.0.0.1",
                    "compose_project_dir": project,
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no",
                }
            },
        )
    elif inventory_kind == "good":
        write_inventory(tmp_path, {"local1": {"compose_project_dir": project}})
    ran = inv("restart-api", *args, "--inventory", str(path), audit=audit)
    assert_one_error_line(ran, *fragments)
    [record] = audit_records(audit)
    assert record["step"] == "arguments"
    assert not (tmp_path / "lock").exists()  # nothing ran: no host was locked


def test_list_works_without_heavy_imports(tmp_path: Path) -> None:
    environ = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "invoke", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listed = done.stdout.split()
    assert "restart-api" in listed
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "remediations.cli" in imported  # tasks.py was loaded, and its imports were seen
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY_MODULES) == []


def task_names(listing: str) -> list[str]:
    """The task names in `inv --list` output (a wrapped docstring's next lines are indented further)."""
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line[2] != " "]


def test_list_is_only_remediations() -> None:
    """The on-call list has no lab task: building test hosts is not a remediation."""
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "NO_COLOR": "1"}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    names = task_names(done.stdout)
    assert "restart-api" in names
    assert [n for n in names if "lab" in n or n in ("up", "down", "status")] == []


def test_lab_tasks_are_reachable_for_development(tmp_path: Path) -> None:
    """`inv -r lab` loads lab/tasks.py, from any folder and without PYTHONPATH (it finds the checkout)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NO_COLOR": "1"}
    inv_bin = Path(sys.executable).parent / "inv"
    listed = subprocess.run(
        [str(inv_bin), "-r", str(ROOT / "lab"), "--list"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env=environ, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = sorted(task_names(listed.stdout))
    assert names == ["down", "status", "up"]
    helped = subprocess.run(
        [str(inv_bin), "-r", str(ROOT / "lab"), "--help", "up"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env=environ, check=False,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--extra-api-hosts" in helped.stdout


def test_importing_tasks_stays_light() -> None:
    probe = (
        f"import sys, tasks; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY_MODULES)!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_explains_every_flag(audit: Path) -> None:
    ran = inv("--help", "restart-api", audit=audit)
    assert ran.code == 0, ran.stderr
    assert "Restart the api service" in ran.stdout
    for flag in (*COMMON_FLAGS, "--service", "--if-unhealthy"):
        assert flag in ran.stdout, flag
    # every flag has its explanation, not just its name (invoke wraps help text: compare words)
    words = " ".join(ran.stdout.split())
    assert "'!name' excludes" in words
    assert "seconds to wait for another run's lock on a host" in words
    assert "restart only hosts whose service is not healthy" in words


def test_json_output_shape_on_a_local_host(tmp_path: Path, good_inventory: Path, audit: Path) -> None:
    """A local host whose project directory is missing: the facts step fails, no docker needed."""
    ran = inv(
        "restart-api", "--host", "api", "--check", "--json", "--inventory", str(good_inventory), audit=audit
    )
    assert ran.code == 1, ran
    assert "Traceback" not in ran.stderr
    document = json.loads(ran.stdout)  # stdout is the JSON document and nothing else
    assert set(document) == {
        "task", "check", "duration", "counts", "stopped_early", "interrupted", "hosts", "warnings",
        "schema", "run_id", "arguments", "started", "ended", "exit_code",  # schema 1 added these
    }
    assert (document["schema"], document["exit_code"]) == (1, ran.code)
    assert (document["task"], document["check"], document["stopped_early"]) == ("restart-api", True, "")
    assert document["counts"] == {"ok": 0, "changed": 0, "failed": 1, "skipped": 0}
    assert document["warnings"] == []
    [host] = document["hosts"]
    assert set(host) == {"host", "status", "message", "duration", "warnings", "steps"}
    assert (host["host"], host["status"]) == ("local1", "failed")
    assert f"project directory {tmp_path / 'no such project'} does not exist" in host["message"]
    [step] = host["steps"]
    assert set(step) == {"step", "status", "message", "diff", "duration", "data", "warning"}
    assert (step["step"], step["status"]) == ("facts", "failed")
    assert isinstance(step["duration"], float | int)
    assert [(r["host"], r["step"], r["status"]) for r in audit_records(audit)] == [
        ("local1", "facts", "failed")
    ]


def test_human_output_has_a_live_line_and_a_summary(good_inventory: Path, audit: Path) -> None:
    ran = inv("restart-api", "--host", "local1", "--check", "--inventory", str(good_inventory), audit=audit)
    assert ran.code == 1
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("failed  local1: project directory ")  # what is wrong, not "unhealthy"
    assert "restart-api --check: 1 failed in " in ran.stdout
    assert "\033[" not in ran.stdout  # NO_COLOR (and not a tty): no colour codes


def test_usage_error_goes_to_the_inventory_audit_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configured = tmp_path / "configured" / "audit.jsonl"
    path = write_inventory(
        tmp_path, {"local1": {"compose_project_dir": str(tmp_path)}}, audit_log=str(configured)
    )
    monkeypatch.delenv("REMEDIATIONS_AUDIT_LOG", raising=False)
    # keep the default log inside tmp_path too, whatever happens
    monkeypatch.setattr(audit_mod, "SYSTEM_AUDIT_LOG", tmp_path / "system" / "audit.jsonl")
    (tmp_path / "system").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from remediations.docker.restart_api import RestartApi

    code, run = execute(RestartApi, Flags(host="nosuchhost", inventory=str(path)), task="restart-api")
    assert (code, run) == (2, None)
    assert capsys.readouterr().err.startswith("error: ")
    assert [r["step"] for r in audit_records(configured)] == ["arguments"]


def test_a_reader_that_closes_the_pipe_never_stops_the_run(tmp_path: Path) -> None:
    """`inv … | head -1`: the first line reaches the reader, the run goes on over every host, the
    audit has them all, and there is no traceback."""
    from tests import labkit

    # local hosts whose project directory is missing: each fails its facts step, no docker needed
    project = {"compose_project_dir": str(tmp_path / "no such project"), "api_service": "api"}
    hosts = {f"h{i}": project for i in range(3)}
    inventory = labkit.write_local_inventory(tmp_path, hosts)
    audit = tmp_path / "audit.jsonl"
    script = (
        f"{shlex.quote(sys.executable)} -m invoke restart-api --host 'h*' --check --parallel 1 "
        f"--inventory {shlex.quote(str(inventory))} | head -c 1"
    )
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {script}"], cwd=ROOT, capture_output=True,
                          text=True, env=environ, timeout=120, check=False)  # fmt: skip
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert {r["host"] for r in labkit.audit_lines(audit)} == set(hosts)
