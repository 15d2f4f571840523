"""wal-cleanup, backup-check, restore-test and install-cron on the lab: real PostgreSQL with WAL
archiving to a local archive and to S3 (moto), real pg_basebackup / pg_dump / pg_restore, real cron."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import hosts as lab
from tests import labkit, pglab
from tests.labkit import inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab


def run(*args: str, audit: Path, inventory: Path = labkit.LAB_INVENTORY) -> labkit.Ran:
    return inv(*args, "--json", audit=audit, inventory=inventory, env=pglab.AWS_ENV)


def steps(ran: labkit.Ran, host: str) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host(host)["steps"]}


@pytest.fixture(scope="module")
def shop(lab: Any) -> Iterator[None]:
    """db1 has the shop database, two base backups with WAL between them, a dump and a base backup
    in S3; everything the archive holds is also in S3."""
    pglab.sync_archive_to_s3()
    pglab.make_shop()
    pglab.base_backup()
    pglab.switch_wal(count=2)
    pglab.base_backup(upload=True)
    pglab.switch_wal(count=1)
    pglab.dump_shop()
    yield


def old_segments() -> list[str]:
    """Archived segments older than the cut point of the 2 newest base backups (as pg_archivecleanup)."""
    from remediations.facts import wal as walfacts

    files = [walfacts.ArchiveFile(n, s) for n, s in pglab.archived().items()]
    found = [
        walfacts.parse_history(n, (pglab.archive_dir() / n).read_text())
        for n in pglab.archived()
        if n.endswith(".backup")
    ]
    kept = walfacts.keep_set([b for b in found if b is not None], 2)
    return [f.name for f in walfacts.older_than_cut(files, kept[0].start_segment)]


def test_wal_cleanup_quartet_and_faults(shop: None, audit: Path, tmp_path: Path) -> None:
    pglab.base_backup()  # a new base backup: the cut point moves, older segments become deletable
    doomed = old_segments()
    assert doomed

    # Faults first, with nothing lost: S3 unreachable, then a segment missing from S3.
    bad_s3 = labkit.write_inventory(
        tmp_path / "bad-s3.yml", all_vars={"s3_endpoint_url": "http://198.18.0.1:9"}
    )
    ran = run("wal-cleanup", "--host", "db1", audit=audit, inventory=bad_s3)
    assert ran.code == 1 and "cannot reach the S3 endpoint" in ran.host("db1")["message"]
    assert set(doomed) <= set(pglab.archived())

    s3 = pglab.s3()
    missing = doomed[len(doomed) // 2]
    body = s3.get_object(Bucket=pglab.BUCKET, Key=f"wal/{missing}")["Body"].read()
    s3.delete_object(Bucket=pglab.BUCKET, Key=f"wal/{missing}")
    try:
        ran = run("wal-cleanup", "--host", "db1", audit=audit)
        assert ran.code == 1
        assert f"{missing} is missing from s3://{pglab.BUCKET}/wal/" in ran.host("db1")["message"]
        left = pglab.archived()
        older = doomed[: doomed.index(missing)]
        assert not set(older) & set(left), "segments before the missing one are deleted"
        assert set(doomed[doomed.index(missing) :]) <= set(left), "the missing one and newer ones are kept"
    finally:
        s3.put_object(Bucket=pglab.BUCKET, Key=f"wal/{missing}", Body=body)

    # The quartet, on what the fault left: check, apply, apply again, check again.
    doomed = old_segments()
    assert doomed and doomed[0] == missing
    runs = quartet("wal-cleanup", "--host", "db1", "--diff", hosts=["db1"], audit=audit,
                   state=pglab.archived, env=pglab.AWS_ENV)  # fmt: skip
    decide = steps(runs.check, "db1")["decide"]
    assert decide["data"]["count"] == len(doomed) and decide["data"]["bytes"] == 16 * 1024**2 * len(doomed)
    assert all(f"- {name}" in decide["diff"] for name in doomed)
    assert "pg_wal/ holds" in steps(runs.check, "db1")["pg_wal"]["message"]
    assert steps(runs.apply, "db1")["verify"]["status"] == "ok"
    assert not set(doomed) & set(pglab.archived())
    assert any(n.endswith(".backup") for n in pglab.archived()), "history files are kept"
    # pg_wal/ itself was never touched: PostgreSQL still archives and answers.
    pglab.switch_wal()


def test_wal_cleanup_compares_content_not_size(shop: None, audit: Path) -> None:
    """Every WAL segment is 16 MiB: an S3 object of that size with other bytes is no copy of it."""
    pglab.base_backup()
    doomed = old_segments()
    assert len(doomed) >= 2, doomed
    s3 = pglab.s3()
    for name in doomed:  # in S3 as the archive_command puts them: one PUT each
        pglab.put_object(f"wal/{name}", (pglab.archive_dir() / name).read_bytes())
    corrupt = doomed[len(doomed) // 2]
    good = (pglab.archive_dir() / corrupt).read_bytes()
    other = hashlib.sha256(b"rmtest").digest() * (len(good) // 32)
    assert len(other) == len(good) and other != good
    md5 = {body: hashlib.md5(body, usedforsecurity=False).hexdigest() for body in (good, other)}
    older, kept = doomed[: doomed.index(corrupt)], doomed[doomed.index(corrupt) :]
    try:
        # A single-part object: its ETag is the MD5 of the other bytes.
        assert pglab.put_object(f"wal/{corrupt}", other) == md5[other]
        ran = run("wal-cleanup", "--host", "db1", audit=audit)
        assert ran.code == 1, ran.stdout
        why = f"{corrupt} in s3://{pglab.BUCKET}/wal/ has MD5 {md5[other]} (ETag) but {md5[good]} here"
        assert why in ran.host("db1")["message"]
        assert f"kept it and every newer one ({len(kept) - 1} more" in ran.host("db1")["message"]
        left = pglab.archived()
        assert set(kept) <= set(left), "the differing segment and every newer one are kept"
        assert not set(older) & set(left), "the segments before it are deleted"
        # A multipart object (ETag `…-2`, not an MD5): read back, it differs just the same.
        assert pglab.put_object(f"wal/{corrupt}", other, multipart=True).endswith("-2")
        ran = run("wal-cleanup", "--host", "db1", audit=audit)
        assert ran.code == 1
        assert f"has MD5 {md5[other]} (read back) but {md5[good]} here" in ran.host("db1")["message"]
        assert steps(ran, "db1")["checksums"]["data"]["read_back"] == 1
        assert set(kept) <= set(pglab.archived())
    finally:
        # The good bytes again, as a multipart upload: read back, they match.
        pglab.put_object(f"wal/{corrupt}", good, multipart=True)
    assert s3.head_object(Bucket=pglab.BUCKET, Key=f"wal/{corrupt}")["ContentLength"] == len(good)
    ran = run("wal-cleanup", "--host", "db1", audit=audit)
    assert ran.code == 0 and ran.host("db1")["status"] == "changed", ran.stdout
    assert steps(ran, "db1")["checksums"]["data"]["read_back"] == 1
    assert not set(kept) & set(pglab.archived())


def wait_archiver(failing: bool, timeout: float = 60) -> str:
    """Until pg_stat_archiver on db1 says the archiver is (or is no longer) failing: its last attempt
    failed after the last success. Returns the last failed segment."""
    deadline = time.monotonic() + timeout
    while True:
        state = pglab.sql(
            "db1",
            "select coalesce(last_failed_time > last_archived_time, last_failed_time is not null)::text"
            " || ' ' || coalesce(last_failed_wal, '-') from pg_stat_archiver",
        )
        now_failing, last_failed = state.split()
        if (now_failing == "true") is failing or time.monotonic() > deadline:
            assert (now_failing == "true") is failing, state
            return last_failed
        time.sleep(0.5)


def test_wal_cleanup_warns_of_a_failing_archiver_and_an_idle_slot(
    shop: None, audit: Path, tmp_path: Path
) -> None:
    drop_slot = (
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
        "where slot_name = 'rmtest_idle'"
    )
    pglab.sql("db1", drop_slot)
    health_inventory = labkit.write_inventory(
        tmp_path / "health.yml", host_vars={"db1": {"health_services": [], "api_health_url": ""}}
    )
    pglab.sql("db1", "select pg_create_physical_replication_slot('rmtest_idle', true)")
    try:
        pglab.sql("db1", "alter system set archive_command = 'false'")
        pglab.sql("db1", "select pg_reload_conf()")
        pglab.sql("db1", "insert into walfiller values (2); select pg_switch_wal()")
        last_failed = wait_archiver(failing=True)

        text = inv("wal-cleanup", "--host", "db1", audit=audit, env=pglab.AWS_ENV)
        assert text.code == 3, text.stdout + text.stderr
        lines = text.stdout.splitlines()
        assert any(
            line.startswith("    warning: archiver is FAILING:") and f"last on {last_failed}" in line
            for line in lines
        ), text.stdout
        assert any(
            line.startswith("    warning: inactive physical replication slot 'rmtest_idle' retains ")
            and "of WAL" in line
            for line in lines
        ), text.stdout
        assert "(1 with warnings: exit code 3)" in text.stdout
        as_json = run("wal-cleanup", "--host", "db1", audit=audit)
        assert as_json.code == 3 and as_json.host("db1")["status"] == "ok"
        assert len(as_json.host("db1")["warnings"]) == 2

        health = run("health", "--host", "db1", audit=audit, inventory=health_inventory)
        assert health.code == 1, health.stdout
        check = steps(health, "db1")["postgres archiver"]
        assert check["status"] == "failed" and check["data"]["check"]["colour"] == "red"
        assert "postgres archiver (archiver is FAILING" in health.host("db1")["message"]
    finally:
        pglab.sql("db1", "alter system reset archive_command")
        pglab.sql("db1", "select pg_reload_conf()")
        pglab.sql("db1", drop_slot)
    wait_archiver(failing=False)
    pglab.wait_archived()
    assert "pg_archive_wal" in pglab.sql("db1", "show archive_command"), "db1's archive_command is back"
    again = inv("wal-cleanup", "--host", "db1", audit=audit, env=pglab.AWS_ENV)
    assert again.code == 0 and "warning:" not in again.stdout, again.stdout
    health = run("health", "--host", "db1", audit=audit, inventory=health_inventory)
    assert health.code == 0 and steps(health, "db1")["postgres archiver"]["status"] == "ok"


def test_wal_cleanup_missing_archive_dir(shop: None, audit: Path, tmp_path: Path) -> None:
    inventory = labkit.write_inventory(
        tmp_path / "inv.yml", host_vars={"db1": {"wal_archive_dir": "/nonexistent/wal"}}
    )
    pglab.wait_archived()  # the previous test's last switch may still be on its way to the archive
    before = pglab.archived()
    ran = run("wal-cleanup", "--host", "db1", audit=audit, inventory=inventory)
    assert ran.code == 1
    assert "archive directory /nonexistent/wal does not exist" in ran.host("db1")["message"]
    assert pglab.archived().keys() >= before.keys()


def test_drop_inactive_slot_only_on_request(shop: None, audit: Path) -> None:
    pglab.sql(
        "db1",
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
        "where slot_name = 'rmtest_idle'",
    )
    pglab.sql("db1", "select pg_create_physical_replication_slot('rmtest_idle', true)")
    try:
        report = run("wal-cleanup", "--host", "db1", "--check", audit=audit)
        assert "inactive physical slot 'rmtest_idle' retains" in steps(report, "db1")["pg_wal"]["message"]
        check = run(
            "wal-cleanup", "--host", "db1", "--drop-inactive-slot", "rmtest_idle", "--check", audit=audit
        )
        assert steps(check, "db1")["drop-slot"]["status"] == "changed"
        assert (
            pglab.sql("db1", "select count(*) from pg_replication_slots where slot_name = 'rmtest_idle'")
            == "1"
        )
        drop = run("wal-cleanup", "--host", "db1", "--drop-inactive-slot", "rmtest_idle", audit=audit)
        assert steps(drop, "db1")["drop-slot"]["status"] == "changed", drop.stdout
        assert (
            pglab.sql("db1", "select count(*) from pg_replication_slots where slot_name = 'rmtest_idle'")
            == "0"
        )
        again = run("wal-cleanup", "--host", "db1", "--drop-inactive-slot", "rmtest_idle", audit=audit)
        assert steps(again, "db1")["drop-slot"]["status"] == "ok"
    finally:
        pglab.sql(
            "db1",
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
            "where slot_name = 'rmtest_idle'",
        )


def test_backup_check_green_then_red(shop: None, audit: Path, tmp_path: Path) -> None:
    pglab.dump_shop()
    ran = run("backup-check", audit=audit)
    assert ran.code == 0, ran.stdout + ran.stderr
    got = steps(ran, "localhost")
    assert got["s3-dump"]["status"] == "ok" and "readable" in got["s3-dump"]["message"]
    assert got["s3-basebackup"]["status"] == "ok"

    stale = labkit.write_inventory(tmp_path / "rpo.yml", all_vars={"backup_rpo_hours": 1e-6})
    ran = run("backup-check", audit=audit, inventory=stale)
    assert ran.code == 1 and "older than the RPO" in steps(ran, "localhost")["s3-dump"]["message"]

    unreachable = labkit.write_inventory(
        tmp_path / "s3.yml", all_vars={"s3_endpoint_url": "http://198.18.0.1:9"}
    )
    ran = run("backup-check", audit=audit, inventory=unreachable)
    assert ran.code == 1 and "cannot reach the S3 endpoint" in ran.host("localhost")["message"]

    key = pglab.dump_shop(truncate_to=3000)  # the newest dump is now a truncated one
    try:
        ran = run("backup-check", audit=audit)
        assert ran.code == 1
        assert "NOT readable by pg_restore" in steps(ran, "localhost")["s3-dump"]["message"]
        assert "lab-test-secret-key" not in ran.stdout + audit.read_text()
    finally:
        pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return labkit.write_inventory(
        tmp_path / "restore.yml",
        all_vars={
            "restore_test_json": str(tmp_path / "{host}.json"),
            "restore_test_metrics": str(tmp_path / "prom" / "restore_test_{host}.prom"),
        },
    )


def scratch_exists() -> bool:
    return (
        pglab.sql("dbrestore", "select count(*) from pg_database where datname = 'restore_test_scratch'")
        == "1"
    )


def test_restore_test_passes_and_cleans_up_a_leftover(shop: None, audit: Path, results: Path) -> None:
    pglab.dump_shop()
    # a scratch database left behind by a killed earlier run
    pglab.sql("dbrestore", "drop database if exists restore_test_scratch")
    pglab.sql(
        "dbrestore",
        "create database restore_test_scratch; comment on database restore_test_scratch is "
        "'remediations restore-test scratch database'",
    )
    check = run("restore-test", "--check", audit=audit, inventory=results)
    assert check.code == 0 and "would restore" in check.host("dbrestore")["message"]
    ran = run("restore-test", audit=audit, inventory=results)
    assert ran.code == 0, ran.stdout + ran.stderr
    got = steps(ran, "dbrestore")
    assert got["cleanup"]["status"] == "changed"
    assert got["checks"]["status"] == "ok" and "orders" in got["checks"]["data"]["rows"]
    assert {"restore", "checks", "drop", "report"} <= got.keys() and "download" not in got
    assert not scratch_exists()
    report = json.loads((results.parent / "dbrestore.json").read_text())
    assert report["success"] is True and report["rows"]["orders"] >= 100
    assert set(report["phases"]) == {"restore", "checks"}
    metrics = (results.parent / "prom" / "restore_test_dbrestore.prom").read_text()
    assert 'restore_test_success{restore_host="dbrestore"} 1' in metrics
    assert (
        f'restore_test_rows{{restore_host="dbrestore",table="orders"}} {report["rows"]["orders"]}' in metrics
    )
    assert (
        "restore_test_duration_seconds{" in metrics
        and "restore_test_last_success_timestamp_seconds{" in metrics
    )
    assert not any(p.name.endswith(".tmp") for p in (results.parent / "prom").iterdir())

    # A corrupt (truncated) dump fails, the scratch database is dropped, the last success is kept.
    key = pglab.dump_shop(truncate_to=3000)
    try:
        bad = run("restore-test", audit=audit, inventory=results)
    finally:
        pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)
    assert bad.code == 1
    assert "pg_restore failed" in steps(bad, "dbrestore")["restore"]["message"]
    assert steps(bad, "dbrestore")["drop"]["status"] == "ok"
    assert not scratch_exists()
    failed = json.loads((results.parent / "dbrestore.json").read_text())
    assert failed["success"] is False and failed["last_success_timestamp"] == report["last_success_timestamp"]
    assert (
        'restore_test_success{restore_host="dbrestore"} 0'
        in (results.parent / "prom" / "restore_test_dbrestore.prom").read_text()
    )


def test_restore_test_refusals_and_faults(shop: None, audit: Path, tmp_path: Path, results: Path) -> None:
    protected = labkit.write_inventory(
        tmp_path / "prod.yml", host_vars={"dbrestore": {"restore_database": "shop"}}
    )
    ran = run("restore-test", audit=audit, inventory=protected)
    assert ran.code == 2 and "production database" in ran.stderr

    too_few = labkit.write_inventory(
        tmp_path / "few.yml",
        host_vars={
            "dbrestore": {
                "restore_check_tables": {"orders": 10**9},
                "restore_test_json": str(tmp_path / "r.json"),
                "restore_test_metrics": str(tmp_path / "r.prom"),
            }
        },
    )
    ran = run("restore-test", audit=audit, inventory=too_few)
    assert ran.code == 1 and "fewer than the minimum" in steps(ran, "dbrestore")["checks"]["message"]
    assert not scratch_exists()

    # Another run holds the restore host's lock: this one fails on it.
    proc = subprocess.Popen(
        [
            "nsenter",
            "--net=/run/netns/dbrestore",
            "--mount=/run/remediations-lab/mnt/dbrestore",
            "--",
            "flock",
            "/run/lock/remediations.lock",
            "-c",
            "echo locked; sleep 60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        ran = run("restore-test", "--lock-wait", "1", audit=audit, inventory=results)
        assert ran.code == 1 and "locked by another run" in ran.host("dbrestore")["message"]
    finally:
        proc.kill()
        proc.wait()

    # PostgreSQL down on the restore host.
    ctl = ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_ctl", "-D", lab.PG_DATA]
    lab.exec_on("dbrestore", [*ctl, "-m", "fast", "-w", "stop"], timeout=60)
    try:
        ran = run("restore-test", audit=audit, inventory=results)
        assert ran.code == 1 and "does not answer" in ran.host("dbrestore")["message"]
    finally:
        lab.exec_on(
            "dbrestore",
            [*ctl, "-l", f"/var/log/postgresql/postgresql-{lab.PG_VERSION}-lab.log", "-w", "start"],
            timeout=90,
        )


@pytest.fixture
def cron_name() -> Iterator[str]:
    name = f"rmtest-{os.getpid()}"
    yield name
    text = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False).stdout
    from remediations.host import install_cron as cron

    cleaned, action = cron.edit(text, name, None)
    if action != "none":
        subprocess.run(["crontab", "-"], input=cleaned, text=True, check=True)


def crontab() -> str:
    return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False).stdout


def crontab_code() -> int:
    return subprocess.run(["crontab", "-l"], capture_output=True, check=False).returncode


def test_install_cron_quartet(audit: Path, cron_name: str, tmp_path: Path) -> None:
    log = str(tmp_path / "logs" / "cron.log")
    args = (
        "install-cron",
        "--task",
        "restore-test",
        "--schedule",
        "0 4 * * 0",
        "--name",
        cron_name,
        "--log",
        log,
    )
    before, code_before = crontab(), crontab_code()
    runs = quartet(*args, hosts=["localhost"], audit=audit, state=crontab, env=pglab.AWS_ENV)
    assert runs.check.code == 0, runs.check.stdout + runs.check.stderr
    assert steps(runs.check, "localhost")["decide"]["message"] == f"would add crontab entry {cron_name!r}"
    # The wording of the change itself, as the summary shows it (issue 13: no "addd").
    applied = runs.apply.host("localhost")["message"]
    assert applied.startswith(f"added crontab entry {cron_name!r}: "), applied
    lines = crontab().splitlines()
    at = lines.index(f"# remediations: {cron_name} (managed by inv install-cron; do not edit)")
    entry = lines[at + 1]
    assert (
        entry.startswith(f"0 4 * * 0 cd {labkit.ROOT} ")  # the project folder, where tasks.py is
        and f"--name {cron_name} --lock /run/lock/remediations-cron-{cron_name}.lock -- " in entry
    )
    assert f"restore-test --inventory {labkit.LAB_INVENTORY}" in entry and f">> {log} 2>&1" in entry
    assert Path(log).parent.is_dir()
    bad = run(
        "install-cron",
        "--task",
        "restore-test",
        "--schedule",
        "every sunday",
        "--name",
        cron_name,
        audit=audit,
    )
    assert bad.code == 2 and "not a cron expression" in bad.stderr
    remove = run("install-cron", "--task", "restore-test", "--name", cron_name, "--remove", audit=audit)
    assert remove.host("localhost")["status"] == "changed"
    assert cron_name not in crontab() and crontab() == before
    # Removing the only entry leaves no crontab (as before it was added), not an empty one.
    assert crontab_code() == (code_before if before else 1)
    again = run("install-cron", "--task", "restore-test", "--name", cron_name, "--remove", audit=audit)
    assert again.host("localhost")["status"] == "ok"


# ------------------------------------------------------------------ install-cron on a lab host
# Each lab host has its own /var/spool/cron, so these run the task against db1's crontab over SSH.

CRON_HOST = "db1"
# A crontab someone keeps by hand: none of it may change, byte for byte.
USER_CRONTAB = 'MAILTO=""\n# nightly report, by hand\n17 3 * * *\t/bin/true  # keep\n\n30 2 * * 1 echo x\n'


def on_host(
    argv: list[str], input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """`argv` on db1, as root (the fixtures' `lab` argument hides the module)."""
    return lab.exec_on(CRON_HOST, argv, input=input, check=check)


def host_crontab() -> tuple[int, bytes]:
    """`crontab -l` on db1: exit code and the exact bytes."""
    done = on_host(["crontab", "-l"], check=False)
    return done.returncode, done.stdout


@pytest.fixture
def db1_crontab(lab: Any) -> Iterator[bytes]:
    """db1's root crontab set to USER_CRONTAB for the test, and put back as it was after it."""
    private = on_host(["mountpoint", "-q", "/var/spool/cron"], check=False).returncode == 0
    assert private, "db1 shares the controller's /var/spool/cron: the lab fixture's `up` should have fixed it"
    code, saved = host_crontab()
    on_host(["crontab", "-"], input=USER_CRONTAB.encode())
    yield USER_CRONTAB.encode()
    if code == 0:
        on_host(["crontab", "-"], input=saved)
    else:
        on_host(["crontab", "-r"], check=False)


@pytest.fixture
def host_inventory(lab: Any, tmp_path: Path) -> Iterator[Path]:
    """The lab inventory with the project and an inv db1 can run (the controller's venv Python is
    under its /root, which db1 does not see; install-cron's preflight on db1 would refuse it)."""
    with labkit.host_venv("rmtest-pg-venv") as venv:
        cron_vars = {"cron_project_dir": str(labkit.ROOT), "cron_inv": str(venv / "inv")}
        yield labkit.write_inventory(tmp_path / "cron-hosts.yml", all_vars=cron_vars)


@pytest.fixture
def planted(lab: Any) -> Iterator[Path]:
    """Where the hostile payloads' planted cron line would write (/var/tmp is the controller's too)."""
    path = Path(f"/var/tmp/rmtest-planted-{os.getpid()}")
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def hostile_payloads(planted: Path) -> list[list[str]]:
    plant = f"\n* * * * * touch {planted} #"
    return [
        ["--schedule", "0 4 * * 0", "--log", f"/var/log/x.log{plant}"],
        ["--schedule", "0 4 * * 0", "--log", f"/var/log/x.log\r{plant}"],
        ["--schedule", "0 4 * * 0", "--log", "/var/log/../../var/tmp/x.log"],
        ["--schedule", "0 4 * * 0", "--log", "/var/log/%H.log"],
        ["--schedule", "0 4 * * 0", "--args", f"--host 'db1{plant}'"],
        ["--schedule", "0 4 * * 0", "--args", f"--host db1 %{plant.strip()}"],
        ["--schedule", f"0 4 * * 0{plant}"],
        ["--schedule", "0\t4 * * 0"],
        ["--schedule", "0 4 * * 0", "--name", "health\n"],
        ["--schedule", "0 4 * * 0", "--user", "root\n"],
    ]


def test_install_cron_refuses_hostile_values_and_changes_nothing(
    db1_crontab: bytes, planted: Path, audit: Path, tmp_path: Path
) -> None:
    controller_before = crontab()
    for payload in hostile_payloads(planted):
        ran = run("install-cron", "--task", "health", "--host", CRON_HOST, *payload, audit=audit)
        assert ran.code == 2, (payload, ran.code, ran.stdout, ran.stderr)
        assert ran.stderr.startswith("error: ") and ran.stderr.count("\n") == 1, (payload, ran.stderr)
        assert "Traceback" not in ran.stderr
        assert host_crontab() == (0, db1_crontab), payload
    # A bad path in the inventory is bad input too, found before connecting.
    bad_vars = labkit.write_inventory(
        tmp_path / "bad.yml", host_vars={CRON_HOST: {"cron_project_dir": f"/srv\n* * * * * touch {planted}"}}
    )
    ran = run("install-cron", "--task", "health", "--host", CRON_HOST, "--schedule", "@daily",
              "--args", f"--host {CRON_HOST}", audit=audit, inventory=bad_vars)  # fmt: skip
    assert ran.code == 2 and "cron_project_dir" in ran.stderr, ran.stderr
    assert host_crontab() == (0, db1_crontab)
    assert crontab() == controller_before
    assert not planted.exists()


def test_install_cron_refuses_a_restore_pitr_switch(db1_crontab: bytes, audit: Path) -> None:
    """A restore-pitr entry without --drill would refuse on every run (a switch needs a person):
    refused at install, one line, exit 2, db1's crontab as it was."""
    args = ("install-cron", "--task", "restore-pitr", "--host", CRON_HOST, "--schedule", "0 5 * * 0")
    ran = run(*args, "--args", f"--host {CRON_HOST} --to '2024-01-15 14:30:00+03' --yes", audit=audit)
    assert ran.code == 2, (ran.code, ran.stdout, ran.stderr)
    assert ran.stderr.startswith("error: ") and ran.stderr.count("\n") == 1, ran.stderr
    assert "inv restore-pitr would refuse it on every run" in ran.stderr and "--drill" in ran.stderr
    assert host_crontab() == (0, db1_crontab)

def test_install_cron_on_a_host_keeps_every_other_line(
    db1_crontab: bytes, audit: Path, host_inventory: Path
) -> None:
    args = ("install-cron", "--task", "health", "--host", CRON_HOST, "--schedule", "0 4 * * 0",
            "--args", "--host 'db1' --lock-wait \"1 m\"")  # a value that needs quoting (and is valid)
    controller_before = crontab()
    apply = run(*args, audit=audit, inventory=host_inventory)
    assert apply.host(CRON_HOST)["status"] == "changed", apply.stdout + apply.stderr
    code, text = host_crontab()
    assert code == 0 and text.startswith(db1_crontab)
    added = text[len(db1_crontab) :].decode().splitlines()
    assert added[0] == "# remediations: health (managed by inv install-cron; do not edit)"
    assert added[1].endswith("--host db1 --lock-wait '1 m' >> /var/log/remediations/cron.log 2>&1")
    assert len(added) == 2
    assert steps(apply, CRON_HOST)["verify"]["message"] == "crontab -l is exactly the crontab written"
    assert run(*args, audit=audit, inventory=host_inventory).host(CRON_HOST)["status"] == "ok"
    assert crontab() == controller_before, "the controller's crontab changed"
    removed = run("install-cron", "--task", "health", "--host", CRON_HOST, "--remove", audit=audit)
    assert removed.host(CRON_HOST)["status"] == "changed"
    assert host_crontab() == (0, db1_crontab)


# The fault: the first `crontab FILE` on the host installs a line nobody wrote (as a concurrent edit,
# or a crontab that is not what it seems, would). Only db1's mount namespace sees the wrapper.
MANGLING_CRONTAB = """#!/bin/sh
if [ "$1" != -l ] && [ "$1" != -r ] && [ ! -e /run/rmtest-crontab-mangled ]; then
  : > /run/rmtest-crontab-mangled
  { cat "$1"; echo "* * * * * touch PLANTED"; } | /run/rmtest-crontab-real -
  exit
fi
exec /run/rmtest-crontab-real "$@"
"""


@pytest.fixture
def mangling_crontab(lab: Any, planted: Path) -> Iterator[None]:
    wrapper = MANGLING_CRONTAB.replace("PLANTED", str(planted))
    setup = (
        "set -e; touch /run/rmtest-crontab-real; mount --bind /usr/bin/crontab /run/rmtest-crontab-real; "
        "cat > /run/rmtest-crontab-wrapper; chmod 0755 /run/rmtest-crontab-wrapper; "
        "mount --bind /run/rmtest-crontab-wrapper /usr/bin/crontab"
    )
    on_host(["sh", "-c", setup], input=wrapper.encode())
    try:
        yield
    finally:
        cleanup = (
            "umount /usr/bin/crontab; umount /run/rmtest-crontab-real; "
            "rm -f /run/rmtest-crontab-real /run/rmtest-crontab-wrapper /run/rmtest-crontab-mangled"
        )
        on_host(["sh", "-c", cleanup], check=False)


def test_install_cron_restores_the_crontab_when_it_reads_back_otherwise(
    db1_crontab: bytes, planted: Path, mangling_crontab: None, audit: Path, host_inventory: Path
) -> None:
    ran = run("install-cron", "--task", "health", "--host", CRON_HOST, "--schedule", "0 4 * * 0",
              "--args", f"--host {CRON_HOST}", audit=audit, inventory=host_inventory)  # fmt: skip
    assert ran.code == 1, ran.stdout + ran.stderr
    message = ran.host(CRON_HOST)["message"]
    assert "did not show exactly the crontab written; the previous crontab is restored" in message, message
    assert host_crontab() == (0, db1_crontab)
    injected = on_host(["test", "-e", "/run/rmtest-crontab-mangled"], check=False)
    assert injected.returncode == 0, "the fault was not injected"
    assert not planted.exists()


@pytest.mark.slow_faults
def test_a_real_cron_daemon_runs_the_entry(
    db1_crontab: bytes, planted: Path, audit: Path, tmp_path: Path, host_inventory: Path
) -> None:
    """The oracle: Debian's cron, on db1 with db1's own spool, parses the installed entry and runs
    it (the task's JSON lands in --log); hostile payloads tried while it runs plant nothing."""
    cron_audit = tmp_path / "cron-audit.jsonl"
    data = yaml.safe_load(host_inventory.read_text())
    data["all"]["vars"]["audit_log"] = str(cron_audit)
    inventory = tmp_path / "cron.yml"
    inventory.write_text(yaml.safe_dump(data))
    log = f"/var/log/rmtest-cron-{os.getpid()}/health.log"
    args = ("install-cron", "--task", "health", "--host", CRON_HOST, "--name", "rmtest-oracle",
            "--schedule", "* * * * *", "--args", "--host db1 --json", "--log", log)  # fmt: skip
    with lab.cron_daemon(CRON_HOST):
        for payload in hostile_payloads(planted):
            refused = run("install-cron", "--task", "health", "--host", CRON_HOST, *payload, audit=audit)
            assert refused.code == 2, (payload, refused.stderr)
        ran = run(*args, audit=audit, inventory=inventory)
        assert ran.host(CRON_HOST)["status"] == "changed", ran.stdout + ran.stderr
        try:
            result = wait_for_json(CRON_HOST, log, timeout=130)
        finally:
            remove = ("install-cron", "--task", "health", "--host", CRON_HOST, "--name", "rmtest-oracle")
            run(*remove, "--remove", audit=audit, inventory=inventory)
            on_host(["rm", "-rf", str(Path(log).parent)])
    assert result["task"] == "health" and [h["host"] for h in result["hosts"]] == [CRON_HOST], result
    records = labkit.audit_lines(cron_audit)
    assert any(r.get("task") == "health" for r in records), f"no audit record of the cron run: {records}"
    assert host_crontab() == (0, db1_crontab)
    assert not planted.exists()


def wait_for_json(host: str, path: str, timeout: float) -> dict[str, Any]:
    """The first whole JSON document cron's run appended to `path` on the host (the task's output
    lines, each after the runner's "TIME NAME | ")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = lab.exec_on(host, ["cat", path], check=False)
        if done.returncode == 0:
            output = [line.split(" | ", 1)[1] for line in done.stdout.decode().splitlines() if " | " in line]
            with contextlib.suppress(ValueError):
                return json.JSONDecoder().raw_decode("\n".join(output).lstrip())[0]  # type: ignore[no-any-return]
        time.sleep(2)
    tail = lab.exec_on(host, ["sh", "-c", f"tail -c 2000 {shlex.quote(path)}"], check=False).stdout.decode()
    raise AssertionError(f"cron did not run the entry within {timeout:.0f}s; {path}: {tail!r}")
