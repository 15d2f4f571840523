"""restore-pitr on the lab: a throwaway PostgreSQL cluster on db1 (its own port, archive directory
and base backups; db1's main cluster is not touched), real pg_basebackup, real WAL archiving, a real
recovery to a point in time and a real switch of the data directory."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import hosts as labhosts
from tests import labkit, pglab

pytestmark = pytest.mark.lab

PORT = 5440
ROOT = "/var/lib/postgresql/pitr-test"
DATA = f"{ROOT}/data"
ARCHIVE = f"{ROOT}/archive"
BASE = f"{ROOT}/base"
S3_PREFIX = "pitr-test-wal/"
S3_BASE = "pitr-test-base/"  # base-backup's uploads (not the lab's basebackups/, backup-check's)
PART = 8 * 1024 * 1024  # small parts: a backup of this cluster is uploaded in several
CREDENTIALS = f"{ROOT}/s3-credentials"
# --onto: the restore host has PostgreSQL, none of db1's folders, its own credentials file.
ONTO = "dbrestore"
ONTO_ROOT = "/var/lib/postgresql/pitr-test-onto"
ONTO_CREDENTIALS = f"{ONTO_ROOT}/s3-credentials"
ONTO_DIR = f"{ONTO_ROOT}/restore"
# The lab's archive_command (local copy, then one PUT to S3), with this cluster's folder and prefix.
ARCHIVE_COMMAND = shlex.join(
    [
        str(labhosts.ASSETS / "pg_archive_wal"),
        "%p",
        "%f",
        ARCHIVE,
        labhosts.S3_ENDPOINT,
        labhosts.S3_BACKUP_BUCKET,
        S3_PREFIX,
    ]
)
HERE = labhosts.LAB_ROOT / "hosts" / "db1" / "postgresql" / "pitr-test"  # the same folder, seen from here


def as_postgres(*argv: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    done = labhosts.exec_on(
        "db1",
        ["runuser", "-u", "postgres", "--", *argv],
        input=input.encode() if input is not None else None,
        check=check,
        timeout=timeout,
    )
    return done.stdout.decode().strip()


def sql(text: str, db: str = "postgres", check: bool = True) -> str:
    return as_postgres(
        f"{pglab.BIN}/psql",
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/run/postgresql",
        "-p",
        str(PORT),
        "-d",
        db,
        "-f",
        "-",
        input=text,
        check=check,
    )


def pg_ctl(data: str, *args: str, check: bool = True) -> str:
    return as_postgres(f"{pglab.BIN}/pg_ctl", "-D", data, *args, check=check, timeout=120)


def archived() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (HERE / "archive").iterdir() if p.is_file()}


def switch_wal() -> None:
    """A new segment, and wait until the one before it is archived."""
    current = sql("select pg_walfile_name(pg_current_wal_lsn()); select pg_switch_wal();").splitlines()[0]
    deadline = time.monotonic() + 60
    while current not in archived():
        assert time.monotonic() < deadline, f"{current} was not archived"
        time.sleep(0.2)


def base_backup() -> str:
    """pg_basebackup -Ft -X none into BASE/STAMP (base.tar and backup_manifest); waits until its
    history file is in the archive. Returns the folder's name."""
    before = {n for n in archived() if n.endswith(".backup")}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    as_postgres(
        f"{pglab.BIN}/pg_basebackup",
        "-h",
        "/run/postgresql",
        "-p",
        str(PORT),
        "-D",
        f"{BASE}/{stamp}",
        "-Ft",
        "-X",
        "none",
        "-c",
        "fast",
        "-l",
        stamp,
        timeout=180,
    )
    deadline = time.monotonic() + 60
    while not {n for n in archived() if n.endswith(".backup")} - before:
        assert time.monotonic() < deadline, "no new .backup history file in the archive"
        switch_wal()
    time.sleep(1.2)  # STOP TIME has whole seconds: a target noted now is after the backup ended
    return stamp


WRITER = "api1:worker"


def running(label: str) -> bool:
    host, service = label.split(":")
    ids = labhosts.exec_on(host, [*labkit.COMPOSE, "ps", "-q", "--status", "running", service]).stdout
    return bool(ids.split())


def stamp(epoch: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=3))).isoformat(" ")
    )


def dirs() -> list[str]:
    return sorted(p.name for p in HERE.iterdir())


def empty_s3_archive() -> None:
    """No WAL or history file of an earlier run under S3_PREFIX: PostgreSQL picks a new timeline
    past every history file it can fetch, so leftovers would move the restore to another one. No
    base backup of an earlier run under S3_BASE either."""
    s3 = pglab.s3()
    for prefix in (S3_PREFIX, S3_BASE):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=pglab.BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=pglab.BUCKET, Key=item["Key"])


def s3_objects(prefix: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in pglab.s3().get_paginator("list_objects_v2").paginate(Bucket=pglab.BUCKET, Prefix=prefix):
        found.update({item["Key"]: item for item in page.get("Contents", [])})
    return found


def on_onto(*argv: str, check: bool = True) -> str:
    done = labhosts.exec_on(ONTO, list(argv), check=check, timeout=120)
    return done.stdout.decode().strip()


def onto_cleanup() -> None:
    """Whatever a failed --onto run left on the restore host: stopped and removed."""
    on_onto(
        "sh",
        "-c",
        f'for d in {ONTO_DIR}/*/; do [ -d "$d" ] && runuser -u postgres -- {pglab.BIN}/pg_ctl '
        f'-D "$d" -m immediate stop >/dev/null 2>&1; done; rm -rf {ONTO_ROOT}',
        check=False,
    )


@pytest.fixture(scope="module")
def cluster(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The throwaway cluster (port 5440, archiving to its own folder), with the database shop, and
    an inventory whose db1 points restore-pitr at it. Removed afterwards, whatever the tests left."""
    labhosts.exec_on(
        "db1", ["sh", "-c", f"rm -rf {ROOT} && mkdir -p {ROOT} && chown postgres:postgres {ROOT}"]
    )
    as_postgres("mkdir", "-p", ARCHIVE, BASE)
    pglab.s3()  # the bucket exists (moto keeps it in memory)
    empty_s3_archive()
    # The S3 copy's credentials for the restore_command, in a curl config file only postgres reads
    # (moto takes any key; the lab's is no secret).
    as_postgres("sh", "-c", f"umask 077 && cat > {CREDENTIALS}", input='user = "rmlab:rmlab-lab-only"\n')
    onto_cleanup()
    on_onto("sh", "-c", f"mkdir -p {ONTO_ROOT} && chown postgres:postgres {ONTO_ROOT}")
    labhosts.exec_on(
        ONTO,
        ["runuser", "-u", "postgres", "--", "sh", "-c", f"umask 077 && cat > {ONTO_CREDENTIALS}"],
        input=b'user = "rmlab:rmlab-lab-only"\n',
    )
    as_postgres(
        f"{pglab.BIN}/initdb",
        "-D",
        DATA,
        "-U",
        "postgres",
        "--auth-local=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
        timeout=120,
    )
    conf = (
        f"\nport = {PORT}\nlisten_addresses = ''\nunix_socket_directories = '/run/postgresql'\n"
        f"archive_mode = on\narchive_command = '{ARCHIVE_COMMAND}'\n"
        "shared_buffers = 16MB\nmax_connections = 20\n"
    )
    as_postgres("sh", "-c", 'cat >> "$1"', "sh", f"{DATA}/postgresql.conf", input=conf)
    pg_ctl(DATA, "-l", f"{ROOT}/server.log", "-w", "start")
    sql("create database shop")
    inventory = labkit.write_inventory(
        tmp_path_factory.mktemp("pitr") / "inventory.yml",
        host_vars={
            "db1": {
                "postgres_port": PORT,
                "postgres_socket_dir": "/run/postgresql",
                "wal_archive_dir": ARCHIVE,
                "basebackup_local_dir": BASE,
                "pitr_spare_port": PORT + 1,
                "postgres_log_file": f"{ROOT}/server.log",
                "pitr_check_database": "shop",
                "pitr_check_tables": {"items": 100},
                "pitr_s3_credentials_file": CREDENTIALS,
                "wal_s3_prefix": S3_PREFIX,
                "basebackup_s3_prefix": S3_BASE,
                "basebackup_s3_part_size": PART,
                "restore_db_writers": {},  # the lab's writers write to db1's own cluster (see --stop)
                "restore_pitr_json": str(tmp_path_factory.getbasetemp() / "pitr.json"),
                "restore_pitr_metrics": str(tmp_path_factory.getbasetemp() / "pitr.prom"),
            },
            ONTO: {"pitr_s3_credentials_file": ONTO_CREDENTIALS, "pitr_restore_dir": ONTO_DIR},
        },
    )
    try:
        yield inventory
    finally:
        capture = os.environ.get("RMLAB_PITR_CAPTURE")  # real files for the unit tests' fixtures
        if capture:
            for path in [
                *(HERE / "archive").glob("*.*"),
                *(HERE / "base").glob("*/backup_manifest"),
                *HERE.glob("*/pitr-recovery.log"),
            ]:
                shutil.copy(path, Path(capture) / f"{path.parent.name}-{path.name}")
        for name in dirs():
            if name.startswith("data"):
                pg_ctl(f"{ROOT}/{name}", "-m", "immediate", "stop", check=False)
        labhosts.exec_on("db1", ["rm", "-rf", ROOT])
        onto_cleanup()
        empty_s3_archive()


def run(inventory: Path, audit: Path, *args: str) -> labkit.Ran:
    return labkit.inv(
        "restore-pitr",
        "--host",
        "db1",
        *args,
        "--json",
        audit=audit,
        inventory=inventory,
        timeout=300,
        stdin="",
        env=pglab.AWS_ENV,
    )


def steps(ran: labkit.Ran) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host("db1")["steps"]}


def state() -> tuple[list[str], str, str]:
    """What must not change when a run refuses: the folders, the rows, the timeline."""
    rows = sql("select count(*), coalesce(max(id), 0) from items", db="shop")
    timeline = sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
    return dirs(), rows, timeline


def test_refusals_and_check_mode_change_nothing(cluster: Path, audit: Path) -> None:
    sql(
        "create table items (id int primary key, note text); "
        "insert into items select g, 'before' from generate_series(1, 100) g",
        db="shop",
    )
    too_early = time.time() - 5
    backup = base_backup()
    sql("insert into items select g, 'after' from generate_series(101, 120) g", db="shop")
    time.sleep(1.1)
    reachable = time.time()  # the insert above is before it, the switch's commit after it
    time.sleep(1.1)
    switch_wal()
    before = state()

    ran = run(cluster, audit, "--to", stamp(too_early), "--yes")
    assert ran.code == 1, ran.stdout + ran.stderr
    message = ran.host("db1")["message"]
    assert "no base backup ended before the target" in message and backup in message, message
    assert "nothing changed" in message
    assert state() == before

    time.sleep(1.5)  # past the newest archived segment: WAL not yet archived cannot be replayed
    ran = run(cluster, audit, "--to", stamp(time.time()), "--yes")
    assert ran.code == 1, ran.stdout + ran.stderr
    assert "past the archive's end" in ran.host("db1")["message"], ran.host("db1")["message"]
    assert state() == before

    ran = run(cluster, audit, "--to", "2024-01-15 14:30:00", "--yes")
    assert ran.code == 2 and "no UTC offset" in ran.stderr

    ran = run(cluster, audit, "--to", stamp(reachable), "--check")
    assert ran.code == 0, ran.stdout + ran.stderr
    facts = steps(ran)["facts"]
    assert facts["data"]["backup"] == backup and facts["data"]["new_timeline"] == 2, facts
    decided = [s for s in ran.host("db1")["steps"] if s["step"] == "decide"]
    assert any("would restore" in s["message"] for s in decided)
    assert any("would then switch" in s["message"] and f"{DATA}.pre-pitr-" in s["message"] for s in decided)
    assert state() == before

    ran = run(cluster, audit, "--to", stamp(reachable))  # no --yes, no terminal: refused
    assert ran.code == 1 and "needs --yes" in ran.host("db1")["message"], ran.stdout
    assert state() == before


def test_drill_restores_and_removes_it(cluster: Path, audit: Path, tmp_path: Path) -> None:
    before = state()
    ran = run(cluster, audit, "--drill")
    assert ran.code == 0, ran.stdout + ran.stderr
    done = steps(ran)
    assert "promoted on timeline 2" in done["recover"]["message"], done["recover"]
    assert done["checks"]["data"]["rows"] == {"items": 120}
    assert state() == before, "a drill does not touch the cluster"
    metrics = (cluster.parent.parent / "pitr.prom").read_text()
    assert 'restore_pitr_success{restore_host="db1",mode="drill"} 1' in metrics
    assert not any(n.startswith("00000002") for n in archived()), "the drill archived nothing"


def test_base_backup_makes_one_restore_pitr_uses(cluster: Path, audit: Path) -> None:
    ran = labkit.inv(
        "base-backup", "--host", "db1", "--json", audit=audit, inventory=cluster, env=pglab.AWS_ENV
    )
    assert ran.code == 0, ran.stdout + ran.stderr
    made = {s["step"]: s for s in ran.host("db1")["steps"]}
    assert made["verify"]["status"] == "ok", made
    newest = sorted(p for p in (HERE / "base").iterdir())[-1]
    assert sorted(p.name for p in newest.iterdir()) == ["backup_manifest", "base.tar"]
    assert not [p for p in (HERE / "base").iterdir() if p.name.startswith(".")], "no partial folder left"
    # The host uploaded it: the tar in parts (each one PUT), the manifest, the marker last.
    assert made["upload"]["status"] == "changed", made
    uploaded = s3_objects(f"{S3_BASE}{newest.name}/")
    tar = (newest / "base.tar").read_bytes()
    parts = sorted(k for k in uploaded if "/base.tar." in k)
    assert len(parts) == -(-len(tar) // PART) > 1, (len(tar), parts)
    joined = b"".join(pglab.s3().get_object(Bucket=pglab.BUCKET, Key=k)["Body"].read() for k in parts)
    assert joined == tar, "the parts are the tar, byte for byte"
    marker = uploaded[f"{S3_BASE}{newest.name}/backup.json"]
    assert all(marker["LastModified"] >= item["LastModified"] for item in uploaded.values())
    assert f"{S3_BASE}{newest.name}/backup_manifest" in uploaded
    assert not [p for p in (HERE / "base").iterdir() if p.name.startswith(".upload")], "no part left staged"
    switch_wal()
    ran = run(cluster, audit, "--drill")
    assert ran.code == 0, ran.stdout + ran.stderr
    assert steps(ran)["facts"]["data"]["backup"] == newest.name


def test_a_drill_onto_the_restore_host_reads_s3_only(cluster: Path, audit: Path) -> None:
    """--drill --onto dbrestore: the restore host has neither db1's archive nor its backup folders;
    it fetches the uploaded base backup's parts and the WAL from S3 with its own credentials file,
    recovers, is verified, and removed. An upload without its marker (a newer, unfinished one) is
    never chosen. db1's cluster is not touched and nothing is archived."""
    for path in (ARCHIVE, BASE):
        assert labhosts.exec_on(ONTO, ["test", "-e", path], check=False).returncode == 1, path
    uploaded = sorted({k[len(S3_BASE) :].split("/")[0] for k in s3_objects(S3_BASE)})
    unfinished = f"{S3_BASE}29991231T000000Z/base.tar.00000"
    pglab.s3().put_object(Bucket=pglab.BUCKET, Key=unfinished, Body=b"half a backup")
    before, archived_before = state(), set(archived())
    try:
        ran = run(cluster, audit, "--drill", "--onto", ONTO)
    finally:
        pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=unfinished)
    assert ran.code == 0, ran.stdout + ran.stderr
    done = steps(ran)
    facts = done["facts"]["data"]
    assert facts["onto"] == ONTO and facts["in_s3"] and facts["backup"] == uploaded[-1], facts
    assert facts["new_dir"].startswith(f"{ONTO_DIR}/db1.pitr-"), facts
    assert "promoted on timeline 2" in done["recover"]["message"], done["recover"]
    assert done["checks"]["data"]["rows"] == {"items": 120}
    assert f"on {ONTO}" in done["cleanup"]["message"], done["cleanup"]
    assert on_onto("ls", "-A", ONTO_DIR, check=False) == "", "the restore is removed from the restore host"
    assert state() == before, "db1's cluster is not touched"
    assert set(archived()) == archived_before, "the drill archived nothing"
    report = json.loads((cluster.parent.parent / "pitr.json").read_text())
    assert report["success"] and report["onto"] == ONTO and report["backup_in_s3"]


def test_a_segment_only_in_s3_is_fetched_from_there(cluster: Path, audit: Path) -> None:
    """A segment the local archive lost (e.g. to wal-cleanup) but S3 holds: the restore_command
    fetches it with curl (credentials from the 0600 file). Missing from both: refused."""
    sql("insert into items select g, 'for s3' from generate_series(121, 125) g", db="shop")
    time.sleep(1.1)
    noted = time.time()
    time.sleep(1.1)
    sql("insert into items values (126, 'after')", db="shop")
    switch_wal()
    newest_backup = sorted((HERE / "base").iterdir())[-1].name
    history = sorted(n for n in archived() if n.endswith(".backup"))[-1]
    start = history[:24]
    local = HERE / "archive" / start
    body = local.read_bytes()
    local.unlink()
    try:
        ran = run(cluster, audit, "--drill", "--to", stamp(noted))
        assert ran.code == 0, ran.stdout + ran.stderr
        assert steps(ran)["checks"]["data"]["rows"] == {"items": 125}, "rows up to the target, none after"
        assert not local.exists(), "the drill fetched into its own pg_wal/, not into the archive"
        assert steps(ran)["facts"]["data"]["backup"] == newest_backup
        s3 = pglab.s3()
        s3.delete_object(Bucket=pglab.BUCKET, Key=S3_PREFIX + start)
        before = state()
        ran = run(cluster, audit, "--drill", "--to", stamp(noted))
        assert ran.code == 1 and f"WAL segment {start} is missing" in ran.host("db1")["message"], ran.stdout
        assert state() == before
    finally:
        local.write_bytes(body)
        pglab.s3().put_object(Bucket=pglab.BUCKET, Key=S3_PREFIX + start, Body=body)


def test_a_stray_history_file_in_s3_refuses_before_the_restore(cluster: Path, audit: Path) -> None:
    """PostgreSQL's restore_command also fetches timeline history files from S3: one the local
    archive lacks (another cluster's, an earlier run's) would move the promotion to another timeline
    than planned. Refused in the facts step, before anything is unpacked."""
    key = S3_PREFIX + "00000002.history"
    pglab.s3().put_object(Bucket=pglab.BUCKET, Key=key, Body=b"1\t0/9000000\tno recovery target specified\n")
    try:
        before = state()
        ran = run(cluster, audit, "--drill")
        assert ran.code == 1, ran.stdout + ran.stderr
        message = ran.host("db1")["message"]
        assert "00000002.history only in s3://" in message and "nothing changed" in message, message
        assert "restore" not in steps(ran), "refused before the restore"
        assert state() == before
    finally:
        pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)


def test_a_restore_that_fails_its_checks_leaves_the_cluster_alone(cluster: Path, audit: Path) -> None:
    data = yaml.safe_load(cluster.read_text())
    data["all"]["children"]["db"]["hosts"]["db1"]["pitr_check_tables"] = {"items": 100000}
    strict = cluster.with_name("strict.yml")
    strict.write_text(yaml.safe_dump(data))
    time.sleep(1.1)
    noted = time.time()
    time.sleep(1.1)
    sql("select 1 from items limit 0; create table walmark (x int); drop table walmark", db="shop")
    switch_wal()
    before = state()
    ran = run(strict, audit, "--to", stamp(noted), "--yes")
    assert ran.code == 1, ran.stdout + ran.stderr
    done = steps(ran)
    assert "fewer than the minimum 100000" in done["checks"]["message"], done["checks"]
    assert done["cleanup"]["status"] == "ok" and "switch" not in done
    assert state() == before, "the restore is removed and the cluster not touched"
    metrics = (cluster.parent.parent / "pitr.prom").read_text()
    assert 'restore_pitr_success{restore_host="db1",mode="switch"} 0' in metrics


def test_damage_then_restore_to_the_noted_time(cluster: Path, audit: Path) -> None:
    sql(
        "create table keepme (x int); insert into keepme values (42); "
        "insert into items select g, 'later' from generate_series(127, 150) g",
        db="shop",
    )
    time.sleep(1.1)
    noted = time.time()
    time.sleep(1.1)
    sql(
        "delete from items where id <= 30; drop table keepme; insert into items values (999, 'damage')",
        db="shop",
    )
    switch_wal()
    assert sql("select count(*) from items", db="shop") == "121"

    assert running(WRITER)
    ran = run(cluster, audit, "--to", stamp(noted), "--yes", "--stop", WRITER)
    assert ran.code == 0, ran.stdout + ran.stderr
    done = steps(ran)
    assert done["switch"]["status"] == "changed" and done["verify"]["status"] == "ok", done
    order = [s["step"] for s in ran.host("db1")["steps"]]
    assert order.index(f"stop {WRITER}") < order.index("switch"), order
    assert done[f"stop {WRITER}"]["status"] == "changed"
    assert running(WRITER), "the writer is started again after the switch"
    assert sql("select count(*), max(id) from items", db="shop") == "150|150"
    assert sql("select x from keepme", db="shop") == "42"
    assert sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") == "00000002"
    kept = [n for n in dirs() if n.startswith("data.pre-pitr-")]
    assert len(kept) == 1 and (HERE / kept[0] / "PG_VERSION").exists(), dirs()
    report = json.loads((cluster.parent.parent / "pitr.json").read_text())
    assert report["success"] and report["replayed_at"] <= noted < report["stopped_before"]
    switch_wal()  # the new cluster archives: its timeline's history file reaches the archive
    assert "00000002.history" in archived()


def test_a_second_restore_follows_the_new_timeline(cluster: Path, audit: Path) -> None:
    """After the first restore the cluster is on timeline 2, branched off timeline 1 (whose later
    segments, the damage, are still archived): a second restore from the same base backup must
    follow 00000002.history, not timeline 1's segments, and make timeline 3."""
    sql("insert into items select g, 'on timeline 2' from generate_series(151, 160) g", db="shop")
    time.sleep(1.1)
    noted = time.time()
    time.sleep(1.1)
    sql("truncate items", db="shop")
    switch_wal()
    ran = run(cluster, audit, "--to", stamp(noted), "--yes")
    assert ran.code == 0, ran.stdout + ran.stderr
    facts = steps(ran)["facts"]["data"]
    assert facts["timeline"] == 2 and facts["new_timeline"] == 3, facts
    assert sql("select count(*), max(id) from items", db="shop") == "160|160"
    assert sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") == "00000003"
