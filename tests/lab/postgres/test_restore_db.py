"""restore-db on the lab: db1's database shop put back from a dump in the lab's S3 (moto), with the
api hosts' compose services (api, worker) as its writers. Real pg_dump / pg_restore, real compose,
a real SIGTERM and SIGKILL of the front end mid-restore. Every test leaves db1's shop and the api
services as it found them (the fixture swaps back and starts them)."""

# ruff: noqa: S608 - the SQL of these tests is built from the tests' own constant names

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as labhosts
from tests import labkit, pglab
from tests.lab.postgres.test_restore_stream import Proxy

pytestmark = pytest.mark.lab

PREFIX = "restoredb/"
STATE = "/var/lib/remediations/restore-db-shop.json"
WRITERS = [(h, s) for h in ("api1", "api2") for s in ("api", "worker")]
BIG_ROWS = 120_000  # a dump of about 4 MiB: a restore that takes seconds behind a 1 MiB/s proxy


def db_names() -> list[str]:
    return pglab.sql("db1", "select datname from pg_database order by datname").split()


def shop_oid() -> str:
    return pglab.sql("db1", "select oid from pg_database where datname = 'shop'")


def count(table: str, db: str = "shop") -> int:
    return int(pglab.sql("db1", f"select count(*) from {table}", db=db))


def dump_of(db: str, name: str, truncate_to: int | None = None) -> str:
    """pg_dump -Fc of `db` on db1, put under PREFIX (one PUT: its ETag is its MD5); the key."""
    data = labhosts.exec_on(
        "db1", ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_dump", "-Fc", "-d", db], timeout=180
    ).stdout
    if truncate_to is not None:
        data = data[:truncate_to]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{PREFIX}{name}-{stamp}.dump"
    pglab.put_object(key, data)
    return key


def state() -> dict[str, Any]:
    done = labhosts.exec_on("db1", ["sh", "-c", f"cat {STATE} 2>/dev/null || true"])
    text = done.stdout.decode().strip()
    return json.loads(text) if text else {}


def running(host: str, service: str) -> bool:
    ids = labhosts.exec_on(host, [*labkit.COMPOSE, "ps", "-q", "--status", "running", service]).stdout
    return bool(ids.split())


def writers_started() -> dict[str, str]:
    """Each writer's container start time ("" when not running)."""
    found = {}
    for host, service in WRITERS:
        ids = labhosts.exec_on(host, [*labkit.COMPOSE, "ps", "-q", service]).stdout.decode().split()
        info = json.loads(labhosts.exec_on(host, ["docker", "inspect", *ids]).stdout) if ids else []
        found[f"{host}:{service}"] = "".join(
            c["State"]["StartedAt"] for c in info if c["State"]["Status"] == "running"
        )
    return found


def snapshot() -> tuple[Any, ...]:
    """What a run that changes nothing leaves as it was."""
    return shop_oid(), db_names(), state(), writers_started(), count("orders")


@pytest.fixture(scope="module")
def dumps(lab: Any) -> Iterator[dict[str, Any]]:
    """shop on db1, and under PREFIX: its dump; the same truncated; a dump whose table owner is a
    role the server no longer has (reads fine, fails to restore); a bigger one (BIG_ROWS)."""
    pglab.make_shop()
    found: dict[str, Any] = {"orders": count("orders")}
    found["good"] = dump_of("shop", "shop")
    found["truncated"] = dump_of("shop", "truncated", truncate_to=20_000)
    pglab.sql("db1", "drop database if exists rdbsrc")
    pglab.sql("db1", "drop role if exists rmtest_gone")
    pglab.sql("db1", "create role rmtest_gone")
    pglab.sql("db1", "create database rdbsrc")
    pglab.sql(
        "db1", pglab.SHOP_SQL.format(rows=200) + "alter table orders owner to rmtest_gone;", db="rdbsrc"
    )
    found["no_role"] = dump_of("rdbsrc", "no-role")
    pglab.sql("db1", "drop database rdbsrc")
    pglab.sql("db1", "drop role rmtest_gone")
    pglab.sql("db1", "create database rdbsrc")
    filler = (
        "create table filler (id int primary key, payload text not null);"
        "insert into filler select g, md5(g::text) || md5((g * 7)::text) "
        f"from generate_series(1, {BIG_ROWS}) g;"
    )
    pglab.sql("db1", pglab.SHOP_SQL.format(rows=500) + filler, db="rdbsrc")
    found["big"] = dump_of("rdbsrc", "big")
    found["big_size"] = pglab.s3().head_object(Bucket=pglab.BUCKET, Key=found["big"])["ContentLength"]
    pglab.sql("db1", "drop database rdbsrc")
    yield found
    s3 = pglab.s3()
    for key in [v for k, v in found.items() if k not in ("orders", "big_size")]:
        s3.delete_object(Bucket=pglab.BUCKET, Key=key)


@pytest.fixture(autouse=True)
def lab_state(dumps: dict[str, Any]) -> Iterator[None]:
    """After each test: shop is the database it was (a swapped-in copy dropped, the kept old one
    renamed back), no half-made database, no record, every writer up."""
    olds_before = {n for n in db_names() if n.startswith("shop_old_")}
    yield
    names = db_names()
    for name in names:
        if name.startswith("shop_restore_"):
            pglab.sql("db1", f'drop database "{name}" with (force)')
    new_olds = sorted(n for n in names if n.startswith("shop_old_") and n not in olds_before)
    if new_olds:
        pglab.sql("db1", "drop database if exists shop with (force)")
        pglab.sql("db1", f'alter database "{new_olds[0]}" rename to shop')
        for name in new_olds[1:]:
            pglab.sql("db1", f'drop database "{name}" with (force)')
    labhosts.exec_on("db1", ["rm", "-f", STATE])
    for host in ("api1", "api2"):
        labhosts.exec_on(host, [*labkit.COMPOSE, "up", "-d", "--wait"], timeout=120)


def inventory(tmp_path: Path, name: str = "rdb.yml", **db1: Any) -> Path:
    return labkit.write_inventory(tmp_path / name, host_vars={"db1": {"dump_s3_prefix": PREFIX, **db1}})


def run(tmp_path: Path, audit: Path, *args: str, inv_path: Path | None = None, **more: Any) -> labkit.Ran:
    path = inv_path or inventory(tmp_path)
    return labkit.inv("restore-db", "--host", "db1", *args, "--json", audit=audit, inventory=path,
                      env=pglab.AWS_ENV, stdin="", **more)  # fmt: skip


def steps(ran: labkit.Ran) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host("db1")["steps"]}


def all_running() -> bool:
    return all(running(h, s) for h, s in WRITERS) and all(
        labkit.health(h) == "healthy" for h in ("api1", "api2")
    )


def test_check_mode_and_a_run_without_yes_change_nothing(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    before = snapshot()
    ran = run(tmp_path, audit, "--dump", dumps["good"], "--check")
    assert ran.code == 0, ran.stdout + ran.stderr
    got = steps(ran)
    assert got["dump"]["status"] == "ok"
    assert "reads to its end (its CRC32 matches S3's x-amz-checksum-crc32)" in got["dump"]["message"]
    assert "stop api1:api, api1:worker, api2:api, api2:worker" in got["stop"]["message"]
    assert got["restore"]["message"].startswith("would restore it into a new database shop_restore_")
    assert "rename shop to shop_old_" in got["swap"]["message"] and "(kept)" in got["swap"]["message"]
    assert all(got[s]["status"] == "changed" for s in ("stop", "restore", "checks", "swap", "start"))
    assert snapshot() == before

    refused = run(tmp_path, audit, "--dump", dumps["good"])  # no --yes, stdin is no terminal
    assert refused.code == 1, refused.stdout + refused.stderr
    message = refused.host("db1")["message"]
    assert "refused: restoring shop needs --yes" in message and "nothing changed" in message
    assert "\n" not in message and "Traceback" not in refused.stderr
    assert snapshot() == before


def test_restore_brings_the_rows_back_keeps_the_old_database_and_restarts_the_writers(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    pglab.sql("db1", "delete from orders where id % 3 = 0", db="shop")  # the damage, after the dump
    damaged, oid = count("orders"), shop_oid()
    assert damaged < dumps["orders"]
    started = writers_started()
    ran = run(tmp_path, audit, "--dump", dumps["good"], "--yes")
    assert ran.code == 0, ran.stdout + ran.stderr
    assert count("orders") == dumps["orders"]
    assert "the database host fetched" in steps(ran)["restore"]["message"], "its own GET, not the stream"
    olds = [n for n in db_names() if n.startswith("shop_old_")]
    assert len(olds) == 1 and count("orders", db=olds[0]) == damaged, "the old database is kept, renamed"
    assert pglab.sql("db1", f"select oid from pg_database where datname = '{olds[0]}'") == oid
    assert not [n for n in db_names() if n.startswith("shop_restore_")]
    after = writers_started()
    assert all(after[w] and after[w] != started[w] for w in after), (started, after)
    assert all_running()
    verify = steps(ran)["verify"]
    assert verify["data"]["rows_before"]["orders"] == damaged
    assert verify["data"]["rows_after"]["orders"] == dumps["orders"]
    assert f"orders {damaged} → {dumps['orders']}" in verify["message"]
    record = state()
    assert record["phase"] == "idle" and record["live"]["key"] == dumps["good"]

    again = run(tmp_path, audit, "--dump", dumps["good"], "--yes")
    assert again.code == 0 and again.host("db1")["status"] == "ok", again.stdout
    assert "already holds" in again.host("db1")["message"]
    assert writers_started() == after and db_names().count(olds[0]) == 1
    check = run(tmp_path, audit, "--dump", dumps["good"], "--check")
    assert check.code == 0 and check.host("db1")["status"] == "ok", check.stdout


def test_a_corrupted_dump_is_refused_before_anything_stops(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    before = snapshot()
    ran = run(tmp_path, audit, "--dump", dumps["truncated"], "--yes")
    assert ran.code == 1, ran.stdout + ran.stderr
    got = steps(ran)
    assert got["dump"]["status"] == "failed" and "does NOT read" in got["dump"]["message"]
    assert "does not read to its end on the host" in got["decide"]["message"]
    assert "nothing changed" in got["decide"]["message"]
    assert "stop" not in got
    assert snapshot() == before


def test_a_dump_that_fails_to_restore_leaves_production_and_starts_the_writers_again(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    oid, orders, names = shop_oid(), count("orders"), db_names()
    ran = run(tmp_path, audit, "--dump", dumps["no_role"], "--yes")
    assert ran.code == 1, ran.stdout + ran.stderr
    got = steps(ran)
    assert all(got[f"stop {w}"]["status"] == "changed" for w in ("api1:api", "api2:worker"))
    assert got["restore"]["status"] == "failed" and "rmtest_gone" in got["restore"]["message"]
    assert "shop was not touched" in got["restore"]["message"]
    assert got["rollback"]["status"] == "changed"
    assert "swap" not in got
    assert (shop_oid(), count("orders"), db_names()) == (oid, orders, names)
    assert all_running()
    assert state()["phase"] == "idle"


def start_inv(inv_path: Path, audit: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **pglab.AWS_ENV, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "restore-db", "--host", "db1", *args, "--json", "--inventory",
         str(inv_path)],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )  # fmt: skip


def wait_restoring(proc: subprocess.Popen[str], proxy: Proxy, size: int, timeout: float = 120) -> None:
    """Until the dump streams into the new database: the proxy in front of S3 has passed one whole
    dump (the preflight's read) and 1 MiB of the second (the restore's), a third of it."""
    start, deadline = proxy.forwarded, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if proxy.forwarded - start > size + 1024 * 1024:
            return
        time.sleep(0.05)
    out = proc.communicate(timeout=60)[0] if proc.poll() is not None else ""
    raise AssertionError(
        f"the restore never started: exit {proc.poll()}, {proxy.forwarded - start} bytes: {out[-3000:]}"
    )


def kill_mid_restore(slow: Path, audit: Path, key: str, proxy: Proxy, size: int) -> None:
    """A real run SIGKILLed while the dump streams into its new database: no rollback; the record
    says the writers are stopped and a restore is in progress."""
    proc = start_inv(slow, audit, "--dump", key, "--yes")
    try:
        wait_restoring(proc, proxy, size)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = state()
    assert left["phase"] == "restoring" and set(left["writers"]) == {f"{h}:{s}" for h, s in WRITERS}
    assert not running("api1", "api") and not running("api2", "worker")


def sigterm_mid_restore(inv_path: Path, audit: Path, key: str, proxy: Proxy, size: int,
                        during: Callable[[], None] = lambda: None) -> tuple[int, str, str]:  # fmt: skip
    """A real run SIGTERMed while the dump streams into its new database (`during` checks what holds
    just before): its exit code and output."""
    proc = start_inv(inv_path, audit, "--dump", key, "--yes")
    try:
        wait_restoring(proc, proxy, size)
        during()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def assert_rolled_back(ended: tuple[int, str, str], before: tuple[Any, ...]) -> None:
    """Exit 143, the rollback step changed, production (oid, rows, databases) as `before`, writers up."""
    code, out, err = ended
    assert code == 143, out[-3000:] + err[-3000:]
    result = json.loads(out)["hosts"][0]
    rolled = {s["step"]: s for s in result["steps"]}
    assert rolled["rollback"]["status"] == "changed" and "interrupted by SIGTERM" in result["message"]
    assert (shop_oid(), count("orders"), db_names()) == before
    assert all_running() and state()["phase"] == "idle"


def test_sigterm_mid_restore_rolls_back_and_a_killed_run_is_rolled_back_or_finished_by_the_next(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    s3_host, s3_port = labhosts.S3_ENDPOINT.removeprefix("http://").split(":")
    proxy = Proxy((s3_host, int(s3_port)))
    proxy.rate = 1024 * 1024
    # its own file: run() rewrites rdb.yml without the proxy; the controller streams (db1 cannot
    # reach the proxy on the controller's loopback: test_sigterm_while_the_host_fetches… is the
    # host's own GET)
    slow = inventory(tmp_path, "slow.yml", s3_endpoint_url=proxy.url, restore_fetch="controller")
    oid, orders, names = shop_oid(), count("orders"), db_names()
    try:
        def while_restoring() -> None:
            assert any(n.startswith("shop_restore_") for n in db_names())
            assert not running("api1", "api"), "the writers are stopped during the restore"

        ended = sigterm_mid_restore(slow, audit, dumps["big"], proxy, dumps["big_size"], while_restoring)
        assert_rolled_back(ended, (oid, orders, names))

        kill_mid_restore(slow, audit, dumps["big"], proxy, dumps["big_size"])
        aborted = run(tmp_path, audit, "--abort")
        assert aborted.code == 0 and aborted.host("db1")["status"] == "changed", aborted.stdout
        assert "shop untouched" in steps(aborted)["rollback"]["message"]
        assert (shop_oid(), count("orders")) == (oid, orders)
        assert not [n for n in db_names() if n.startswith("shop_restore_")]
        assert all_running() and state()["phase"] == "idle"

        kill_mid_restore(slow, audit, dumps["big"], proxy, dumps["big_size"])
    finally:
        proxy.close()
    assert shop_oid() == oid
    check = run(tmp_path, audit, "--dump", dumps["big"], "--check")
    assert check.code == 0, check.stdout + check.stderr
    assert "record: restoring" in steps(check)["facts"]["message"]
    assert not running("api1", "api"), "check mode starts nothing"
    ran = run(tmp_path, audit, "--dump", dumps["big"], "--yes")
    assert ran.code == 0, ran.stdout + ran.stderr
    assert count("filler") == BIG_ROWS and shop_oid() != oid
    assert not [n for n in db_names() if n.startswith("shop_restore_")]
    assert all_running()
    assert state()["phase"] == "idle" and state()["live"]["key"] == dumps["big"]


def test_sigterm_while_the_host_fetches_the_dump_ends_its_get_and_rolls_back(
    dumps: dict[str, Any], audit: Path, tmp_path: Path
) -> None:
    """The database host's own GET of the dump (through a 1 MiB/s proxy on the bridge, which db1
    reaches): a SIGTERM mid-restore ends the host's curl at once (the keepalive on its stdin stops,
    so the host kills it, and pg_restore fails on the cut dump), and the run rolls back."""
    s3_host, s3_port = labhosts.S3_ENDPOINT.removeprefix("http://").split(":")
    proxy = Proxy((s3_host, int(s3_port)), address=s3_host)
    proxy.rate = 1024 * 1024
    slow = inventory(tmp_path, "slowhost.yml", s3_endpoint_url=proxy.url)
    oid, orders, names = shop_oid(), count("orders"), db_names()
    try:
        def host_fetches() -> None:
            assert proxy.presigned == 2, "the preflight's read and the restore are the host's own GETs"

        ended = sigterm_mid_restore(slow, audit, dumps["big"], proxy, dumps["big_size"], host_fetches)
        ended_at = proxy.forwarded
        time.sleep(2)
        assert proxy.forwarded - ended_at < 256 * 1024, "the host's GET went on after the run ended"
        assert ended_at < 2 * dumps["big_size"], "the restore's GET never finished"
    finally:
        proxy.close()
    assert_rolled_back(ended, (oid, orders, names))
