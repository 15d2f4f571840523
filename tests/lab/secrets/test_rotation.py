"""Secret rotation on the lab: rotate-secret and rotation-status on api1, rotate-db-password between db1
and api1 (a real PostgreSQL, psycopg through the SSH connection), all against real containers.

Every changing test watches the host while the task runs: the process list of the whole machine and
the env file (its text and mode) every few milliseconds. The secret must never be in the process list,
and every snapshot of the file must be whole (old or new value, mode 600).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lab import hosts as lab_mod
from remediations.facts import envfile
from tests import labkit
from tests.labkit import COMPOSE, ROOT, inv
from tests.quartet import quartet
from tests.unit.reporting.test_notify_audit import Recorder, server  # noqa: F401 - the webhook fixture

pytestmark = pytest.mark.lab

HOST = "api1"
DB = "db1"
ENV = "/srv/shop/.env"
KEY = "DATABASE_PASSWORD"
ROLE = "shop_app"
BASELINE_ENV = (lab_mod.ASSETS / "env").read_text()
OLD = envfile.parse(BASELINE_ENV)[KEY]
RECORDS = "/var/lib/remediations/rotations.json"
FAST = {"health_timeout": 15}


def sh(host: str, script: str, check: bool = True, input: bytes | None = None) -> str:
    done = lab_mod.exec_on(host, ["sh", "-c", script], check=check, timeout=120, input=input)
    return done.stdout.decode()


def env_text() -> str:
    return sh(HOST, f"cat {ENV}")


def env_value(key: str = KEY) -> str:
    return envfile.parse(env_text())[key]


def running(service: str) -> dict[str, str]:
    ids = sh(HOST, f"cd /srv/shop && {' '.join(COMPOSE)} ps -a -q {service}").split()
    assert len(ids) == 1, ids
    data = json.loads(sh(HOST, f"docker inspect {ids[0]}"))[0]
    return dict(item.split("=", 1) for item in data["Config"]["Env"])


def records() -> list[dict[str, Any]]:
    text = sh(HOST, f"cat {RECORDS} 2>/dev/null || true")
    return json.loads(text) if text.strip() else []


def pin(value: str | None) -> None:
    """The api accepts only `value` as DATABASE_PASSWORD (None: any)."""
    if value is None:
        sh(HOST, "rm -f /srv/shop/pins/DATABASE_PASSWORD")
    else:
        digest = hashlib.sha256(value.encode()).hexdigest()
        sh(HOST, f"mkdir -p /srv/shop/pins && echo {digest} > /srv/shop/pins/DATABASE_PASSWORD")


def reset() -> None:
    labkit.reset_shop(HOST, RECORDS)


@pytest.fixture
def baseline(lab: Any) -> Iterator[None]:
    reset()
    yield
    reset()


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return labkit.write_inventory(tmp_path / "inventory.yml", all_vars=FAST)


# ------------------------------------------------------------------------------------ the watcher


@dataclass
class Watch:
    processes: str
    snapshots: list[tuple[str, str]]  # (mode, text) of the env file


class Watcher:
    """A loop on the host: `ps -eo args` (every process on the machine) and the env file, until stopped."""

    OUT = "/var/log/rotation-watch.txt"
    STOP = "/run/rotation-watch.stop"

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        loop = (
            f"rm -f {self.STOP}; while [ ! -e {self.STOP} ]; do echo '@@ps'; ps -eo args; "
            f"echo \"@@env $(stat -c %a {ENV})\"; cat {ENV}; echo '@@end'; sleep 0.01; done"
        )
        sh(host, f"rm -f {self.STOP} {self.OUT}; nohup sh -c {json.dumps(loop)} > {self.OUT} 2>&1 &")
        time.sleep(0.2)

    def stop(self) -> Watch:
        sh(self.host, f"touch {self.STOP}; sleep 0.2")
        text = sh(self.host, f"cat {self.OUT}; rm -f {self.OUT} {self.STOP}")
        processes: list[str] = []
        snapshots: list[tuple[str, str]] = []
        section, mode, body = "", "", []  # whole marker lines only: the loop's own ps line holds them too
        for line in text.splitlines():
            if line == "@@ps" or line.startswith("@@env ") or line == "@@end":
                if section == "env" and line == "@@end":
                    snapshots.append((mode, "".join(f"{b}\n" for b in body)))
                section = "ps" if line == "@@ps" else "env" if line.startswith("@@env ") else ""
                mode, body = (line[6:].strip(), []) if section == "env" else (mode, [])
            elif section == "ps":
                processes.append(line)
            elif section == "env":
                body.append(line)
        assert len(snapshots) > 10, f"the watcher saw too little: {text[:300]}"
        return Watch("\n".join(processes), snapshots)


def assert_whole(watch: Watch, values: set[str]) -> None:
    """Every snapshot of the env file is whole: all baseline lines, the key one of `values`, mode 600."""
    for mode, text in watch.snapshots:
        parsed = envfile.parse(text)
        assert mode == "600", f"the env file was mode {mode} during the run"
        assert parsed.get("APP_ENV") == "lab" and "MAINTENANCE_MODE" in parsed, f"half a file: {text!r}"
        assert parsed.get(KEY) in values, "the file held a value that is neither the old nor the new one"


def diffs(ran: labkit.Ran, host: str = HOST) -> str:
    return "\n".join(step["diff"] for step in ran.host(host)["steps"])


def assert_nowhere(secret: str, *texts: str) -> None:
    assert len(secret) >= 16
    for text in texts:
        assert secret not in text


# ---------------------------------------------------------------------------------- rotate-secret


def shop_state() -> tuple[str, str, list[dict[str, Any]]]:
    """What rotate-secret changes on api1: the env file, the api container, the rotation records."""
    return env_text(), labkit.started_at(HOST), records()


def test_rotate_secret_quartet_backup_mode_and_no_leak(baseline: None, audit: Path, inventory: Path) -> None:
    watcher = Watcher()
    runs = quartet("rotate-secret", "--host", HOST, "--name", KEY, "--diff", hosts=[HOST], audit=audit,
                   state=shop_state, inventory=inventory)  # fmt: skip
    watch = watcher.stop()
    check, apply, again, recheck = runs.check, runs.apply, runs.again, runs.check_again
    assert check.code == 0, check.stderr + check.stdout
    assert "would rotate DATABASE_PASSWORD in /srv/shop/.env on api1" in check.host(HOST)["message"]
    assert "recreate api, worker" in check.host(HOST)["message"]
    assert "DATABASE_PASSWORD: ***** → *****" in diffs(check)
    assert apply.code == 0, apply.stderr + apply.stdout
    new = env_value()
    assert new != OLD and len(new) == 32 and new.isalnum()
    # The rest of the file is as it was, the mode 600, the backup 600 with the old value.
    assert env_text() == BASELINE_ENV.replace(f"{KEY}={OLD}", f"{KEY}={new}")
    assert sh(HOST, f"stat -c %a:%u {ENV}").strip() == "600:0"
    backups = sh(HOST, f"ls {ENV}.*.bak").split()
    assert len(backups) == 1
    assert sh(HOST, f"stat -c %a {backups[0]}").strip() == "600"
    assert envfile.parse(sh(HOST, f"cat {backups[0]}"))[KEY] == OLD
    # Every service that reads the file runs with the new value, healthy.
    assert running("api")[KEY] == new and running("worker")[KEY] == new
    assert labkit.health(HOST) == "healthy"
    [record] = records()
    assert record["status"] == "done" and record["backup"] == backups[0] and record["name"] == KEY
    assert new not in json.dumps(record) and OLD not in json.dumps(record)
    # The value is nowhere: output, audit, the process list of the machine during the runs.
    assert_nowhere(new, apply.stdout, apply.stderr, audit.read_text(), watch.processes)
    assert_whole(watch, {OLD, new})
    assert "DATABASE_PASSWORD: ***** → *****" in diffs(apply)

    assert again.code == 0, again.stdout
    assert "was rotated" in again.host(HOST)["message"] and "--max-age 0 rotates it now" in again.stdout
    assert env_value() == new
    assert recheck.code == 0

    status = inv("rotation-status", "--host", HOST, "--json", audit=audit, inventory=inventory)
    assert status.code == 0, status.stdout
    [line] = [s["message"] for s in status.host(HOST)["steps"]]
    assert line.startswith("env secret DATABASE_PASSWORD (DATABASE_PASSWORD in /srv/shop/.env): done at ")
    assert f"backup {backups[0]}" in line
    assert_nowhere(new, status.stdout, audit.read_text())


def test_rotate_secret_value_from_stdin_never_shown_or_sent(
    baseline: None,
    audit: Path,
    inventory: Path,
    server: Recorder,  # noqa: F811
) -> None:
    value = "Given-On-Stdin-" + os.urandom(8).hex()
    env = {"REMEDIATIONS_SLACK_WEBHOOK": server.url, "REMEDIATIONS_NOTIFY_ON": "always"}
    watcher = Watcher()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "rotate-secret", "--host", HOST, "--name", KEY, "--service", "api",
         "--value-from-stdin", "--diff", "--inventory", str(inventory)],
        input=value + "\n", capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1", **env},
    )  # fmt: skip
    watch = watcher.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert env_value() == value and running("api")[KEY] == value
    # --service api: the worker reads the same file and is left alone, and the output says so.
    assert running("worker")[KEY] == OLD
    assert "worker also read(s) the file and still run(s) the old value" in done.stdout
    payloads = b"".join(r.body for r in server.requests).decode()
    assert server.requests and "rotate-secret" in payloads
    assert_nowhere(value, done.stdout, done.stderr, audit.read_text(), payloads, watch.processes)
    assert_whole(watch, {OLD, value})

    same = subprocess.run(
        [sys.executable, "-m", "invoke", "rotate-secret", "--host", HOST, "--name", KEY, "--service", "api",
         "--value-from-stdin", "--inventory", str(inventory)],
        input=value, capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"},
    )  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "already has the given value" in same.stdout
    assert len(sh(HOST, f"ls {ENV}.*.bak").split()) == 1  # no second backup: nothing was written


def test_rotate_secret_unhealthy_with_the_new_value_rolls_back(
    baseline: None, audit: Path, inventory: Path
) -> None:
    pin(OLD)  # the api accepts only the old value
    ran = inv("rotate-secret", "--host", HOST, "--name", KEY, "--json", audit=audit, inventory=inventory)
    assert ran.code == 1, ran.stdout + ran.stderr
    result = ran.host(HOST)
    assert result["status"] == "failed"
    assert "restored from /srv/shop/.env." in result["message"]
    assert "the services are healthy with the old value again" in result["message"]
    assert env_text() == BASELINE_ENV and sh(HOST, f"stat -c %a {ENV}").strip() == "600"
    assert running("api")[KEY] == OLD and labkit.health(HOST) == "healthy"
    assert records()[-1]["status"] == "rolled-back"
    status = inv("rotation-status", "--host", HOST, "--json", audit=audit, inventory=inventory)
    assert status.code == 1 and status.host(HOST)["status"] == "failed"
    assert ": rolled-back at " in status.stdout


def test_rotate_secret_interrupted_then_finished_by_a_rerun(
    baseline: None, audit: Path, inventory: Path
) -> None:
    argv = [sys.executable, "-m", "invoke", "rotate-secret", "--host", HOST, "--name", KEY, "--inventory",
            str(inventory)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit)},
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while env_value() == OLD:  # the moment the new value is in the file, the controller dies
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it wrote"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    pending = env_value()
    assert records()[-1]["status"] in ("pending", "set")
    status = inv("rotation-status", "--host", HOST, audit=audit, inventory=inventory)
    assert status.code == 1 and "UNFINISHED" in status.stdout

    check = inv("rotate-secret", "--host", HOST, "--name", KEY, "--check", "--json", audit=audit,
                inventory=inventory)  # fmt: skip
    assert check.host(HOST)["status"] == "changed"
    assert "would finish the interrupted rotation" in check.host(HOST)["message"]
    rerun = inv("rotate-secret", "--host", HOST, "--name", KEY, "--json", audit=audit, inventory=inventory)
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    assert "was interrupted after writing /srv/shop/.env: finishing it" in rerun.stdout
    assert env_value() == pending  # finished with the value it had written, not a third one
    assert running("api")[KEY] == pending and running("worker")[KEY] == pending
    assert records()[-1]["status"] == "done"
    assert_nowhere(pending, rerun.stdout, audit.read_text())
    final = inv("rotate-secret", "--host", HOST, "--name", KEY, "--json", audit=audit, inventory=inventory)
    assert final.host(HOST)["status"] == "ok"


def test_rotate_secret_refusals_change_nothing(baseline: None, audit: Path, inventory: Path) -> None:
    before = labkit.started_at(HOST)
    absent = inv("rotate-secret", "--host", HOST, "--name", "STRIPE_API_KEY", "--json", audit=audit,
                 inventory=inventory)  # fmt: skip
    assert absent.code == 1 and absent.host(HOST)["status"] == "failed"
    assert (
        "STRIPE_API_KEY not set in /srv/shop/.env; nothing changed. Pass --create to add it" in absent.stdout
    )
    wrong_service = inv("rotate-secret", "--host", HOST, "--name", KEY, "--service", "nope", "--json",
                        audit=audit, inventory=inventory)  # fmt: skip
    assert wrong_service.code == 1 and "unknown service 'nope'" in wrong_service.stdout
    for args, message in [
        (("--name", "NOT A NAME"), "error: --name 'NOT A NAME': give the env file's variable name"),
        (("--name", KEY, "--length", "8"), "error: --length '8': give a number of characters from 16"),
        (("--name", KEY, "--alphabet", "emoji"), "error: --alphabet 'emoji': give one of alnum"),
        (("--name", KEY, "--max-age", "soon"), "error: --max-age 'soon': give a duration"),
    ]:
        bad = inv("rotate-secret", "--host", HOST, *args, audit=audit, inventory=inventory)
        assert bad.code == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()], bad.stderr
        assert bad.stderr.startswith(message), bad.stderr
    empty = subprocess.run(
        [sys.executable, "-m", "invoke", "rotate-secret", "--host", HOST, "--name", KEY, "--value-from-stdin",
         "--inventory", str(inventory)],
        input="", capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit)},
    )  # fmt: skip
    assert empty.returncode == 2 and empty.stderr.strip() == (
        "error: --value-from-stdin: stdin was empty; pipe the new value in"
    )
    assert env_text() == BASELINE_ENV and records() == [] and labkit.started_at(HOST) == before
    assert sh(HOST, f"ls {ENV}.*.bak 2>/dev/null || true").strip() == ""

    created = inv("rotate-secret", "--host", HOST, "--name", "STRIPE_API_KEY", "--create", "--service", "api",
                  "--json", audit=audit, inventory=inventory)  # fmt: skip
    assert created.code == 0, created.stdout
    assert len(env_value("STRIPE_API_KEY")) == 32 and running("api")["STRIPE_API_KEY"] == env_value(
        "STRIPE_API_KEY"
    )


# ----------------------------------------------------------------------------- rotate-db-password


def psql(sql: str) -> str:
    argv = "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -q -t -A -v ON_ERROR_STOP=1 " \
           "-h /run/postgresql -d postgres -f -"  # fmt: skip
    return sh(DB, argv, input=sql.encode())


def login(password: str) -> str:
    """ "" when shop_app logs in to db1 from the controller with `password`, else the error."""
    try:
        with psycopg.connect(host="198.18.0.21", port=5432, user=ROLE, password=password, dbname="postgres",
                             connect_timeout=10) as conn:  # fmt: skip
            conn.execute("SELECT 1")
        return ""
    except psycopg.OperationalError as exc:
        return str(exc)


@pytest.fixture
def db_role(baseline: None) -> Iterator[None]:
    """Role shop_app on db1 with the password api1's env file holds."""
    psql(f"DROP ROLE IF EXISTS {ROLE};\nCREATE ROLE {ROLE} LOGIN PASSWORD '{OLD}';\n")
    yield
    psql(f"DROP ROLE IF EXISTS {ROLE};\n")


def db_state() -> tuple[str, str, list[dict[str, Any]]]:
    """What rotate-db-password changes: the env file, the role's verifier (salted: new on every
    ALTER ROLE), the rotation records."""
    verifier = psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{ROLE}';").strip()  # noqa: S608
    return env_text(), verifier, records()


def db_log() -> str:
    return sh(DB, "cat /var/log/postgresql/postgresql-15-lab.log")


def test_rotate_db_password_happy_path_old_password_refused(
    db_role: None, audit: Path, inventory: Path
) -> None:
    assert login(OLD) == ""
    args = ("rotate-db-password", "--host", DB, "--role", ROLE, "--env-host", HOST, "--service", "api")
    log_before = len(db_log())
    watcher = Watcher()
    runs = quartet(*args, hosts=[DB], audit=audit, state=db_state, inventory=inventory)
    watch = watcher.stop()
    check, apply, again = runs.check, runs.apply, runs.again
    assert check.code == 0, check.stdout + check.stderr
    assert "would set a new password for role shop_app" in check.stdout
    assert apply.code == 0, apply.stdout + apply.stderr
    new = env_value()
    assert new != OLD and running("api")[KEY] == new and labkit.health(HOST) == "healthy"
    assert login(new) == ""
    assert "password authentication failed" in login(OLD)  # the old password is refused
    assert "the old password is refused" in apply.host(DB)["message"]
    verifier = psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{ROLE}';").strip()  # noqa: S608 - a constant
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    server_log = db_log()[log_before:]
    assert_nowhere(new, apply.stdout, apply.stderr, audit.read_text(), watch.processes, server_log, verifier)
    assert_whole(watch, {OLD, new})
    [record] = records()
    assert record["kind"] == "postgres" and record["status"] == "done" and record["detail"]["db_host"] == DB

    assert again.code == 0 and runs.check_again.code == 0, again.stdout
    assert env_value() == new and login(new) == ""


def test_rotate_db_password_app_unhealthy_rolls_role_and_env_back(
    db_role: None, audit: Path, inventory: Path
) -> None:
    pin(OLD)
    ran = inv("rotate-db-password", "--host", DB, "--role", ROLE, "--env-host", HOST, "--service", "api",
              "--json", audit=audit, inventory=inventory)  # fmt: skip
    assert ran.code == 1, ran.stdout + ran.stderr
    message = ran.host(DB)["message"]
    assert "rolled back: shop_app has the old password again" in message, message
    assert "the apps are healthy with it" in message
    assert env_text() == BASELINE_ENV and running("api")[KEY] == OLD and labkit.health(HOST) == "healthy"
    assert login(OLD) == ""
    assert records()[-1]["status"] == "rolled-back"


def test_rotate_db_password_interrupted_then_finished(db_role: None, audit: Path, inventory: Path) -> None:
    argv = [sys.executable, "-m", "invoke", "rotate-db-password", "--host", DB, "--role", ROLE, "--env-host",
            HOST, "--service", "api", "--inventory", str(inventory)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit)},
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while env_value() == OLD:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it wrote"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    pending = env_value()
    # Killed after the env file was written: the role has the old or already the new password,
    # never neither.
    assert login(OLD) == "" or login(pending) == ""
    rerun = inv("rotate-db-password", "--host", DB, "--role", ROLE, "--env-host", HOST, "--service", "api",
                "--json", audit=audit, inventory=inventory)  # fmt: skip
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    assert "finishing it" in rerun.stdout
    assert env_value() == pending and login(pending) == "" and "password authentication failed" in login(OLD)
    assert running("api")[KEY] == pending and records()[-1]["status"] == "done"


def test_rotate_db_password_refusals(db_role: None, audit: Path, inventory: Path) -> None:
    ran = inv("rotate-db-password", "--host", DB, "--role", "no_such_role", "--env-host", HOST, "--json",
              audit=audit, inventory=inventory)  # fmt: skip
    assert ran.code == 1 and ran.host(DB)["status"] == "failed"
    assert "role 'no_such_role' does not exist on db1; nothing changed" in ran.stdout
    psql(f"ALTER ROLE {ROLE} PASSWORD 'something-else-entirely';\n")
    disagree = inv("rotate-db-password", "--host", DB, "--role", ROLE, "--env-host", HOST, "--json",
                   audit=audit, inventory=inventory)  # fmt: skip
    assert disagree.code == 1 and "the app and the database disagree already" in disagree.stdout
    missing = inv("rotate-db-password", "--host", DB, "--role", ROLE, audit=audit, inventory=inventory)
    assert missing.code == 2 and missing.stderr.startswith("error: --env-host is required")
    assert env_text() == BASELINE_ENV and records() == []
    assert "something-else-entirely" not in disagree.stdout + audit.read_text()
