"""logs, migrate and run-in-service on the lab's docker hosts (api1, api2): real dockerd, compose, the
api container's own log, and the lab's alembic stand-in (lab/assets/alembic, bind-mounted into the
api service with its migrations and its file database, /srv/shop/appdb on the host)."""

from __future__ import annotations

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
from tests.labkit import LAB_INVENTORY, Ran, inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

HOSTS = ["api1", "api2"]
APPDB = "/srv/shop/appdb"
MIGRATIONS = "/srv/shop/migrations"
SECRET = "lab-db-secret-1"  # noqa: S105 - DATABASE_PASSWORD in the lab's .env: the api container runs with it


def sh(host: str, script: str, check: bool = True) -> str:
    return lab_mod.exec_on(host, ["sh", "-c", script], check=check, timeout=120).stdout.decode()


def db_state(hosts: list[str]) -> dict[str, str]:
    return {h: sh(h, f"cat {APPDB}/alembic_version {APPDB}/schema.sql 2>/dev/null || :") for h in hosts}


def reset_db(hosts: list[str]) -> None:
    """The file database empty (no revision applied) and only the lab's own migrations."""
    extra = " ".join(f"{MIGRATIONS}/{n}" for n in ("0003_add_tier.sql", "0004_broken.sql"))
    for host in hosts:
        sh(host, f"rm -rf {APPDB}/* {extra}; docker ps -aq --filter label=com.docker.compose.oneoff=True "
                 "| xargs -r docker rm -f >/dev/null")  # fmt: skip


@pytest.fixture(scope="module")
def shop(lab: Any) -> Iterator[None]:
    for host in HOSTS:
        labkit.reset_shop(host)
    reset_db(HOSTS)
    yield
    reset_db(HOSTS)
    # The logs tests wrote error lines into the api containers' own logs: health (which counts the
    # last 24 h of them) would go red for every later test. A recreated container starts a new log.
    for host in HOSTS:
        lab_mod.exec_on(host, [*labkit.COMPOSE, "up", "-d", "--force-recreate", "--wait", "api"], timeout=120)


def run_in(args: list[str], command: list[str], audit: Path, timeout: float = 120) -> Ran:
    """`inv ARGS --inventory LAB -- COMMAND`: the words after `--` go last (labkit.inv appends its
    --inventory at the end, where it would become a word of the command)."""
    argv = [sys.executable, "-m", "invoke", *args, "--inventory", str(LAB_INVENTORY), "--", *command]
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    done = subprocess.run(argv, cwd=labkit.ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)  # fmt: skip
    return Ran(done.returncode, done.stdout, done.stderr)


def steps(ran: Ran, host: str, name: str) -> list[dict[str, Any]]:
    return [s for s in ran.host(host)["steps"] if s["step"] == name]


# --------------------------------------------------------------------------------------------- logs


def write_log(host: str, lines: list[str]) -> None:
    """Lines into the api container's own log: written to its PID 1's stdout, which docker logs."""
    cid = labkit.api_container(host)["Id"]
    body = "".join(f"{line}\n" for line in lines)
    argv = ["docker", "exec", "-i", cid, "sh", "-c", "cat > /proc/1/fd/1"]
    lab_mod.exec_on(host, argv, input=body.encode())


def test_logs_across_hosts_filtered_and_cut_on_the_host_and_masked(shop: None, audit: Path) -> None:
    token = uuid.uuid4().hex[:10]
    for host in HOSTS:
        noise = [f"{token} info {i}" for i in range(400)]
        errors = [f"{token} ERROR {host} {i}" for i in range(120)]
        write_log(host, [*noise, *errors, f"{token} error DATABASE_PASSWORD={SECRET}",
                         f"{token} Error connecting to postgres://shop:pw-in-url-{token}@db1/shop",
                         f"{token} error @@error forged section",
                         f"{token} error \x1b[31mred\x1b[0m"])  # fmt: skip
    ran = inv("logs", "--host", "api", "--service", "api", "--since", "1h", "--grep", f"{token} error",
              "--tail", "50", "--json", audit=audit)  # fmt: skip
    assert ran.code == 0, ran.stdout + ran.stderr
    assert SECRET not in ran.stdout and f"pw-in-url-{token}" not in ran.stdout
    for host in HOSTS:
        (block,) = steps(ran, host, "lines")
        data = block["data"]
        assert data["service"] == "api" and data["container"] == "shop-api-1" and data["label"] == "api"
        assert data["matched"] == 124 and data["cut"] == 74 and len(data["lines"]) == 50
        assert data["lines"][-4:] == [f"{token} error DATABASE_PASSWORD=*****",
                                      f"{token} Error connecting to postgres://shop:*****@db1/shop",
                                      f"{token} error @@error forged section",
                                      f"{token} error \\x1b[31mred\\x1b[0m"]  # fmt: skip
        assert all("info" not in line for line in data["lines"])
    # no host lock, no "started" record: a read-only task
    assert {r["step"] for r in labkit.audit_lines(audit)} <= {"arguments", "read", "lines", "summary"}

    text = inv("logs", "--host", "api1,api2", "--grep", f"{token} ERROR api2 11", "--match-case", "--regex",
               "--tail", "5", audit=audit)  # fmt: skip
    assert text.code == 0, text.stdout + text.stderr
    lines = [line for line in text.stdout.splitlines() if line.startswith(("api1 api", "api2 api"))]
    cut = "api2 api -- 6 earlier line(s) cut (raise --tail, or narrow --since / --grep)"
    assert lines == [cut, *(f"api2 api | {token} ERROR api2 11{i}" for i in range(5, 10))], text.stdout


def test_logs_hostile_pattern_is_only_looked_for(shop: None, audit: Path) -> None:
    pwned = "/tmp/rm-logs-pwned"
    ran = inv("logs", "--host", "api1", "--grep", f"$(touch {pwned})`touch {pwned}`", "--json", audit=audit)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert sh("api1", f"test -e {pwned} && echo yes || echo no").strip() == "no"
    assert steps(ran, "api1", "lines")[0]["data"]["lines"] == []


# ------------------------------------------------------------------------------------------ migrate


def test_migrate_quartet_then_a_new_migration_then_a_broken_one(shop: None, audit: Path) -> None:
    reset_db(HOSTS)
    runs = quartet("migrate", "--host", "api", hosts=HOSTS, audit=audit, state=lambda: db_state(HOSTS))
    check = runs.check.host("api1")
    assert "would run `alembic upgrade head` in api (exec in shop-api-1): `alembic current` prints nothing " \
           "but `alembic heads` prints '0002 (head)'" in check["message"]
    applied = runs.apply.host("api1")
    (run_step,) = [s for s in applied["steps"] if s["step"] == "run"]
    assert run_step["data"]["exit_code"] == 0
    assert any("Running upgrade 0001 -> 0002, add notifications enabled" in line
               for line in run_step["data"]["output"])  # fmt: skip
    assert [s["step"] for s in applied["steps"]][-1] == "verify"
    assert "nothing to run: `alembic current` prints what `alembic heads` prints ('0002 (head)')" in \
        runs.again.host("api1")["message"]
    for host in HOSTS:
        assert sh(host, f"cat {APPDB}/alembic_version").strip() == "0002"

    sh("api1", f"echo 'ALTER TABLE users ADD COLUMN tier text;' > {MIGRATIONS}/0003_add_tier.sql")
    ran = inv("migrate", "--host", "api1", "--json", audit=audit)
    assert ran.code == 0 and ran.host("api1")["status"] == "changed", ran.stdout
    assert sh("api1", f"cat {APPDB}/alembic_version").strip() == "0003"

    sh("api1", f"printf 'FAIL\\n' > {MIGRATIONS}/0004_broken.sql")
    ran = inv("migrate", "--host", "api1", "--json", audit=audit)
    assert ran.code == 1, ran.stdout
    failed = ran.host("api1")
    assert failed["status"] == "failed"
    assert "`alembic upgrade head` in api (exec): exit 1: " in failed["message"]
    assert "could not apply 0004_broken.sql" in failed["message"]
    assert sh("api1", f"cat {APPDB}/alembic_version").strip() == "0003"  # nothing half-applied
    assert "verify" not in [s["step"] for s in failed["steps"]]


# ----------------------------------------------------------------------------------- run-in-service


def test_run_in_service_quotes_every_word_masks_and_reports_the_exit(shop: None, audit: Path) -> None:
    script = 'echo "pw=$DATABASE_PASSWORD"; printf "[%s]\\n" "$@"; echo done >&2'
    words = ["$(touch /tmp/rm-ris-pwned)", "a  b", "'; reboot", "*"]
    ran = run_in(["run-in-service", "--host", "api1", "--service", "api", "--json"],
                 ["sh", "-c", script, "sh", *words], audit)  # fmt: skip
    assert ran.code == 0, ran.stdout + ran.stderr
    (step,) = steps(ran, "api1", "run")
    assert step["status"] == "changed" and step["data"]["exit_code"] == 0
    # stdout and stderr come through docker exec as two streams: their relative order is not kept
    assert sorted(step["data"]["output"]) == sorted(["pw=*****", *(f"[{w}]" for w in words), "done"])
    assert SECRET not in ran.stdout
    cid = labkit.api_container("api1")["Id"]
    probe = f"docker exec {cid} sh -c 'test -e /tmp/rm-ris-pwned && echo yes || echo no'"
    assert sh("api1", probe).strip() == "no"

    failed = run_in(["run-in-service", "--host", "api1", "--via", "run"],
                    ["sh", "-c", "echo nope; exit 3"], audit)  # fmt: skip
    assert failed.code == 1, failed.stdout + failed.stderr
    assert "api1 api | nope" in failed.stdout
    first = failed.stdout.splitlines()[0]
    assert "`sh -c 'echo nope; exit 3'` in api (run): exit 3: " in first and "nope (" in first, first
    one_off = "docker ps -aq --filter label=com.docker.compose.oneoff=True"
    assert sh("api1", one_off).strip() == ""  # compose run --rm removed its container


def test_run_in_service_with_a_verify_is_idempotent(shop: None, audit: Path) -> None:
    reset_db(["api2"])
    # the image's PATH has only sh's own applets (busybox): `test` and `touch` run through sh
    verify = "sh -c 'test -f /var/lib/appdb/seeded'"
    args = ["run-in-service", "--host", "api2", "--verify", verify]

    def runner(*given: str, audit: Path, **_: Any) -> Ran:
        return run_in([*given], ["sh", "-c", ": > /var/lib/appdb/seeded"], audit)

    runs = quartet(*args, hosts=["api2"], audit=audit, run=runner,
                   state=lambda: sh("api2", f"ls {APPDB}"))  # fmt: skip
    assert f"`{verify}` exits 1" in runs.check.host("api2")["message"]
    assert runs.again.host("api2")["message"] == f"nothing to run: `{verify}` exits 0"


def test_run_in_service_holds_the_host_lock(shop: None, audit: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "invoke", "run-in-service", "--host", "api1",
            "--inventory", str(LAB_INVENTORY), "--", "sleep", "4"]  # fmt: skip
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "first.jsonl")}
    first = subprocess.Popen(argv, cwd=labkit.ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(r.get("status") == "started" for r in labkit.audit_lines(tmp_path / "first.jsonl")):
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        second = inv("migrate", "--host", "api1", "--lock-wait", "0", "--json", audit=audit)
        assert second.code == 1, second.stdout
        message = second.host("api1")["message"]
        assert "host is locked by another run" in message and "run-in-service" in message, message
    finally:
        assert first.wait(60) == 0
    assert first.returncode == 0  # its sleep ran to its end under the lock the migrate could not take
