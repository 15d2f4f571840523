"""Bad input against the lab changes nothing on the hosts; set-env's values on stdin; env backups pruned.

Real sshd, dockerd, compose and PostgreSQL (api1, db1), through the real `inv` front end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from tests import labkit
from tests.labkit import COMPOSE, SHOP_ENV, inv

pytestmark = pytest.mark.lab

HOST = "api1"
FAST = {"health_timeout": 10}
PWNED = "/tmp/rm-validate-pwned"


def sh(script: str, host: str = HOST) -> str:
    return lab_mod.exec_on(host, ["sh", "-c", script], timeout=120).stdout.decode()


def env_of(service: str) -> dict[str, str]:
    ids = sh(f"cd /srv/shop && {' '.join(COMPOSE)} ps -a -q {service}").split()
    assert len(ids) == 1, ids
    data = json.loads(sh(f"docker inspect {ids[0]}"))[0]
    return dict(item.split("=", 1) for item in data["Config"]["Env"])


def backups() -> list[str]:
    return sorted(sh(f"ls {SHOP_ENV}.*.bak 2>/dev/null || true").split())


@pytest.fixture
def baseline(lab: Any) -> Iterator[None]:
    labkit.reset_shop(HOST)
    yield
    labkit.reset_shop(HOST)


@pytest.fixture
def untouched(lab: Any) -> Iterator[None]:
    """api1 is healthy before; afterwards its api was not restarted and its env file not written."""
    labkit.repair(HOST)
    sh(f"rm -f {PWNED}")
    started, env, saved = labkit.started_at(HOST), sh(f"cat {SHOP_ENV}"), backups()
    yield
    try:
        assert labkit.started_at(HOST) == started, "the api container was restarted or recreated"
        assert sh(f"cat {SHOP_ENV}") == env and backups() == saved, "the env file was written"
        assert sh(f"test -e {PWNED} && echo yes || echo no").strip() == "no"
    finally:
        labkit.repair(HOST)


DB = ("rotate-db-password", "--host", "db1", "--env-host", HOST)
BAD = [
    pytest.param(("restart-api", "--host", HOST), {"health_timeout": -5}, "health_timeout: -5 is not",
                 id="health-timeout-negative"),
    pytest.param(("restart-api", "--host", HOST), {"stop_timeout": "soon"}, "stop_timeout: 'soon' is not",
                 id="stop-timeout-text"),
    pytest.param(("restart-api", "--host", HOST), {"ansible_port": "ssh"}, "ansible_port: 'ssh' is not",
                 id="ansible-port-text"),
    pytest.param(("restart-api", "--host", HOST, "--service", f"api; touch {PWNED}"), {},
                 "not a compose service name", id="restart-service-semicolon"),
    pytest.param(("restart-api", "--host", HOST, "--service", f"$(touch {PWNED})"), {},
                 "not a compose service name", id="restart-service-subshell"),
    pytest.param(("set-env", "--host", HOST, "--service", "api\nworker", "--set", "MAINTENANCE_MODE=1"), {},
                 "not a compose service name", id="set-env-service-newline"),
    pytest.param(("set-env", "--host", HOST, "--service", "x" * 100_000, "--set", "MAINTENANCE_MODE=1"), {},
                 "not a compose service name", id="set-env-service-100kB"),
    pytest.param((*DB, "--role", "postgres"), {}, "--role postgres: a superuser or reserved role",
                 id="role-postgres"),
    pytest.param((*DB, "--role", "x; drop table orders"), {}, "give the name of a PostgreSQL login role",
                 id="role-sql"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "host_vars", "fragment"), BAD)
def test_bad_input_changes_nothing_on_the_lab(
    untouched: None, audit: Path, tmp_path: Path, args: tuple[str, ...], host_vars: dict[str, Any],
    fragment: str,
) -> None:  # fmt: skip
    inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={HOST: {**FAST, **host_vars}})
    ran = inv(*args, audit=audit, inventory=inventory, stdin="", timeout=120)
    assert ran.code == 2, (ran.code, ran.stdout[-1500:], ran.stderr[-1500:])
    [line] = ran.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line and len(line) < 400, line[:500]
    if host_vars:
        assert line.startswith(f"error: {inventory}: host {HOST}: ")
    assert "Traceback" not in ran.stderr and ran.stdout == ""
    # no host was reached: nothing but the refusal is audited (no facts step, no lock, no change)
    assert [(r["step"], r["status"], r["host"]) for r in labkit.audit_lines(audit)] == [
        ("arguments", "failed", None)
    ]


def test_set_env_values_from_stdin_never_on_the_command_line(baseline: None, audit: Path, tmp_path: Path
                                                             ) -> None:  # fmt: skip
    """The value reaches the env file and the container; it is never in the controller's argv (what
    `ps` shows every user), nor in output or the audit log, although its name does not look secret."""
    value = f"stdin-value-{uuid.uuid4().hex[:12]}"
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=FAST)
    argv = [sys.executable, "-m", "invoke", "set-env", "--host", HOST, "--service", "api",
            "--values-from-stdin", "--set", "MAINTENANCE_MODE=1", "--json", "--inventory", str(inventory)]
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    with subprocess.Popen(argv, cwd=labkit.ROOT, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        cmdline = b""
        deadline = time.monotonic() + 10
        while b"invoke" not in cmdline and time.monotonic() < deadline:  # until the child has exec'd
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # while it runs, as ps reads it
            time.sleep(0.01)
        stdout, stderr = proc.communicate(f"LAB_FEATURE_KEY={value}\n", timeout=240)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert b"LAB_FEATURE_KEY" not in cmdline and value.encode() not in cmdline
    assert b"--values-from-stdin" in cmdline  # it was the process under test
    assert f"LAB_FEATURE_KEY={value}" in sh(f"cat {SHOP_ENV}").splitlines()
    assert env_of("api")["LAB_FEATURE_KEY"] == value and env_of("api")["MAINTENANCE_MODE"] == "1"
    assert labkit.health(HOST) == "healthy"
    for text in (stdout, stderr, audit.read_text()):
        assert value not in text
    message = json.loads(stdout)["hosts"][0]["message"]
    assert "LAB_FEATURE_KEY: (unset) → *****" in message and "MAINTENANCE_MODE: '0' → '1'" in message


def test_env_backups_beyond_env_backups_keep_are_pruned(baseline: None, audit: Path, tmp_path: Path) -> None:
    """env_backups_keep: 2, then four changes: the two newest backups stay (0600), the older are gone."""
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars={**FAST, "env_backups_keep": 2})
    for value in range(1, 5):
        ran = inv("set-env", "--host", HOST, "--service", "api", "--set", f"MAINTENANCE_MODE={value}",
                  "--json", audit=audit, inventory=inventory)  # fmt: skip
        assert ran.code == 0 and ran.host(HOST)["status"] == "changed", ran.stdout[-2000:] + ran.stderr
    left = backups()
    assert len(left) == 2, left
    # the backups before the 3rd and 4th change: the file as it was with 2, then with 3
    kept = [dict(line.split("=", 1) for line in sh(f"cat {b}").split())["MAINTENANCE_MODE"] for b in left]
    assert kept == ["2", "3"]
    for path in left:
        assert sh(f"stat -c %a {path}").strip() == "600", path
    assert env_of("api")["MAINTENANCE_MODE"] == "4"
