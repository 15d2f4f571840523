"""The database runbooks on the lab, with the real `inv` in a fresh process.

database-down: db1's own cluster (the lab starts it with pg_ctl, not systemd) has its postmaster
killed with SIGKILL; check mode shows the path and leaves it down; a real run starts it again and
its rows are there; on a healthy server the runbook stops after its probe. db1 is started again
after every test, whatever happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from tests import labkit, pglab
from tests.labkit import inv

pytestmark = pytest.mark.lab

HOST = "db1"
DATA = lab_mod.PG_DATA
LOG = f"/var/log/postgresql/postgresql-{lab_mod.PG_VERSION}-lab.log"


def pg_isready() -> int:
    argv = ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_isready", "-h", "/run/postgresql", "-p",
            "5432", "-t", "3"]  # fmt: skip
    return lab_mod.exec_on(HOST, argv, check=False, timeout=30).returncode


def postmaster_pid() -> int:
    text = lab_mod.exec_on(HOST, ["head", "-n", "1", f"{DATA}/postmaster.pid"], timeout=30).stdout.decode()
    return int(text.strip())


def alive(pid: int) -> bool:
    return lab_mod.exec_on(HOST, ["kill", "-0", str(pid)], check=False, timeout=30).returncode == 0


def kill_postmaster() -> int:
    """SIGKILL to db1's postmaster; waits until it is gone and the server answers no more."""
    pid = postmaster_pid()
    lab_mod.exec_on(HOST, ["kill", "-KILL", str(pid)], timeout=30)
    deadline = time.monotonic() + 30
    while alive(pid) or pg_isready() == 0:
        assert time.monotonic() < deadline, "db1's postmaster did not die"
        time.sleep(0.2)
    return pid


def ensure_db1_up() -> None:
    """db1's cluster running again, as the lab starts it (a stale postmaster.pid is pg_ctl's)."""
    if pg_isready() == 0:
        return
    start = ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_ctl", "-D", DATA, "-l", LOG, "-w",
             "-t", "60", "start"]  # fmt: skip
    for _ in range(5):
        if lab_mod.exec_on(HOST, start, check=False, timeout=90).returncode == 0 or pg_isready() == 0:
            return
        time.sleep(2)  # the killed postmaster's backends may still hold its shared memory
    raise AssertionError("db1's cluster did not start again: run `python -m lab up`")


def rows() -> str:
    return pglab.sql(HOST, "select count(*) from orders; select count(*) from customers", db="shop")


@pytest.fixture
def db1(lab: Any) -> Iterator[str]:
    """db1 up, with the shop database restore_check_tables asks for; up again afterwards."""
    ensure_db1_up()
    has = pglab.sql(HOST, "select count(*) from pg_database where datname = 'shop'")
    count = pglab.sql(HOST, "select count(*) from orders", db="shop", check=False) if has == "1" else ""
    if not count.isdigit() or int(count) < 100:
        pglab.make_shop(150)
    try:
        yield rows()
    finally:
        ensure_db1_up()


def path_of(ran: labkit.Ran) -> list[tuple[str, str]]:
    [host] = json.loads(ran.stdout)["hosts"]
    return [(s["id"], s["status"]) for s in host["steps"]]


def test_database_down_on_a_healthy_server_stops_after_its_probe(db1: str, audit: Path) -> None:
    started = postmaster_pid()
    check = inv("runbook", "database-down", "--host", HOST, "--check", "--json", audit=audit)
    assert check.code == 0, check.stderr + check.stdout
    assert path_of(check) == [("probe", "ok")]
    [host] = json.loads(check.stdout)["hosts"]
    assert "database shop: checks passed: orders" in host["steps"][0]["message"], host
    real = inv("runbook", "database-down", "--host", HOST, audit=audit)
    assert real.code == 0 and "database-down on db1: ok: probe ok" in real.stdout, real.stdout
    assert postmaster_pid() == started and rows() == db1


def test_database_down_after_a_killed_postmaster_check_then_repair(db1: str, audit: Path) -> None:
    killed = kill_postmaster()

    check = inv("runbook", "database-down", "--host", HOST, "--check", "--json", audit=audit)
    assert check.code == 0, check.stderr + check.stdout
    path = path_of(check)
    assert path[:2] == [("probe", "failed"), ("restart", "changed")], path
    assert [p[0] for p in path] == ["probe", "restart", "verify", "tell-fixed"], path
    [host] = json.loads(check.stdout)["hosts"]
    probe = host["steps"][0]["message"]
    assert "no answer on port 5432" in probe and "no postmaster runs" in probe, probe
    assert "the server log's last" in probe, probe  # the seeds' "check the logs"
    assert "start the cluster with pg_ctl -D /var/lib/postgresql/15/lab" in host["steps"][1]["message"]
    assert pg_isready() != 0, "check mode started nothing"

    real = inv("runbook", "database-down", "--host", HOST, "--json", audit=audit)
    assert real.code == 0, real.stderr + real.stdout
    assert path_of(real) == [("probe", "failed"), ("restart", "changed"), ("verify", "ok"),
                             ("tell-fixed", "ok")]  # fmt: skip
    assert pg_isready() == 0 and postmaster_pid() != killed
    assert rows() == db1, "the rows are there after the crash and the start"
    task = [r for r in labkit.audit_lines(audit) if r["task"] == "restart-db" and not r.get("check")]
    assert any(r.get("status") == "changed" for r in task), task

    again = inv("restart-db", "--host", HOST, "--json", audit=audit)
    assert again.code == 0, again.stderr + again.stdout
    assert again.host(HOST)["status"] == "ok" and "left alone" in again.host(HOST)["message"]


PREFIX = "dbdown-runbook/"  # this test's dump, not the lab's dumps/


def db_names() -> list[str]:
    return pglab.sql(HOST, "select datname from pg_database order by datname").split()


@pytest.fixture
def damaged_shop(db1: str, tmp_path: Path) -> Iterator[Path]:
    """A dump of the healthy shop under PREFIX, then the damage: its orders table renamed away.
    Afterwards shop has its orders again (the restored copy, or the table renamed back), the
    databases the restore made or kept are dropped, the dump deleted, the writers up."""
    before = set(db_names())
    dump = lab_mod.exec_on(HOST, ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_dump", "-Fc", "-d",
                                  "shop"], timeout=180).stdout  # fmt: skip
    key = f"{PREFIX}shop-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.dump"
    pglab.put_object(key, dump)
    pglab.sql(HOST, "alter table orders rename to orders_gone", db="shop")
    try:
        yield labkit.write_inventory(tmp_path / "inventory.yml", host_vars={HOST: {"dump_s3_prefix": PREFIX}})
    finally:
        ensure_db1_up()
        gone = pglab.sql(HOST, "select to_regclass('orders_gone') is not null", db="shop")
        if gone == "t":
            pglab.sql(HOST, "alter table orders_gone rename to orders", db="shop")
        for name in set(db_names()) - before:
            pglab.sql(HOST, f'drop database "{name}" with (force)')
        lab_mod.exec_on(HOST, ["rm", "-f", "/var/lib/remediations/restore-db-shop.json"])
        pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)
        for api in ("api1", "api2"):
            lab_mod.exec_on(api, [*labkit.COMPOSE, "up", "-d", "--wait"], timeout=120)


def test_database_down_restores_a_damaged_database_only_after_approval(damaged_shop: Path, db1: str,
                                                                       audit: Path) -> None:  # fmt: skip
    started = postmaster_pid()
    given = ("runbook", "database-down", "--host", HOST)
    check = inv(*given, "--check", "--json", audit=audit, inventory=damaged_shop, env=pglab.AWS_ENV)
    assert check.code == 0, check.stderr + check.stdout
    path = path_of(check)
    assert path[:4] == [("probe", "failed"), ("restart", "ok"), ("verify", "failed"), ("restore", "changed")]
    assert [p[0] for p in path] == ["probe", "restart", "verify", "restore", "verify-restore",
                                    "tell-restored"], path  # fmt: skip
    [host] = json.loads(check.stdout)["hosts"]
    assert "table orders is missing" in host["steps"][0]["message"], host
    assert "left alone" in host["steps"][1]["message"], host  # the server answers: not restarted
    assert host["steps"][3]["note"] == "a real run asks for approval here"

    paused = inv(*given, audit=audit, inventory=damaged_shop, env=pglab.AWS_ENV, stdin="")
    assert paused.code == 3, paused.stderr + paused.stdout
    assert "waiting for approval" in paused.stdout and "--from restore --yes" in paused.stdout
    assert pglab.sql(HOST, "select to_regclass('orders') is null", db="shop") == "t", "nothing restored"

    done = inv(*given, "--from", "restore", "--yes", audit=audit, inventory=damaged_shop, env=pglab.AWS_ENV)
    assert done.code == 0, done.stderr + done.stdout
    assert "database-down on db1: changed" in done.stdout, done.stdout
    assert rows() == db1, "shop holds the dump's rows again"
    olds = [n for n in db_names() if n.startswith("shop_old_")]
    assert olds and pglab.sql(HOST, "select to_regclass('orders_gone') is not null", db=olds[-1]) == "t"
    assert postmaster_pid() == started, "the server was never restarted"


def test_restart_db_force_restarts_a_healthy_server_check_mode_changes_nothing(db1: str, audit: Path) -> None:
    started = postmaster_pid()
    check = inv("restart-db", "--host", HOST, "--force", "--check", "--json", audit=audit)
    assert check.code == 0 and check.host(HOST)["status"] == "changed", check.stdout + check.stderr
    assert "would restart the cluster with pg_ctl" in check.host(HOST)["message"]
    assert postmaster_pid() == started

    real = inv("restart-db", "--host", HOST, "--force", "--json", audit=audit)
    assert real.code == 0 and real.host(HOST)["status"] == "changed", real.stdout + real.stderr
    done = {s["step"]: s for s in real.host(HOST)["steps"]}
    assert done["restart"]["status"] == "changed" and done["verify"]["status"] == "ok", done
    assert postmaster_pid() != started and pg_isready() == 0 and rows() == db1

    for args in ((), ("--check",)):
        again = inv("restart-db", "--host", HOST, *args, "--json", audit=audit)
        assert again.code == 0 and again.host(HOST)["status"] == "ok", again.stdout


@pytest.mark.slow_faults
def test_a_postmaster_that_ignores_shutdown_is_escalated_never_killed(db1: str, audit: Path) -> None:
    """SIGSTOP: the postmaster runs but answers nothing, and cannot stop. restart-db tries a fast
    then an immediate shutdown (60 s each), then fails without starting anything; the runbook
    escalates. The postmaster is the same process afterwards (SIGCONT in the end)."""
    pid = postmaster_pid()
    lab_mod.exec_on(HOST, ["kill", "-STOP", str(pid)], timeout=30)
    try:
        ran = inv("runbook", "database-down", "--host", HOST, "--json", audit=audit, timeout=400)
        assert ran.code == 1, ran.stderr + ran.stdout
        assert path_of(ran) == [("probe", "failed"), ("restart", "failed")], path_of(ran)
        [host] = json.loads(ran.stdout)["hosts"]
        assert "a postmaster runs" in host["steps"][0]["message"], host
        restart = host["steps"][1]
        assert "the server did not stop" in restart["message"], restart
        assert restart["note"].startswith("not sent: no channel"), restart  # escalated (no channel here)
        assert alive(pid) and postmaster_pid() == pid, "never killed"
    finally:
        lab_mod.exec_on(HOST, ["kill", "-CONT", str(pid)], timeout=30)
        deadline = time.monotonic() + 60  # the shutdowns asked for meanwhile now take effect
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
