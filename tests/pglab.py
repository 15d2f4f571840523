"""Helpers for the PostgreSQL lab tests: SQL on a lab host, base backups, dumps, the lab's S3."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from lab import hosts as lab

BIN = f"/usr/lib/postgresql/{lab.PG_VERSION}/bin"
ARCHIVE = Path(lab.PG_WAL_ARCHIVE)
BUCKET = lab.S3_BACKUP_BUCKET
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDLABTEST",
    "AWS_SECRET_ACCESS_KEY": "lab-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def sql(host: str, text: str, db: str = "postgres", check: bool = True) -> str:
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        f"{BIN}/psql",
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        db,
        "-f",
        "-",
    ]
    done = lab.exec_on(host, argv, input=text.encode(), check=check, timeout=120)
    return done.stdout.decode().strip()


def archive_dir(host: str = "db1") -> Path:
    """The controller-side path of a host's WAL archive."""
    return lab.LAB_ROOT / "hosts" / host / "postgresql" / ARCHIVE.name


def archived(host: str = "db1") -> dict[str, int]:
    """The archive's finished files, by name and size.

    pg_archive_wal copies to NAME.tmp.PID and renames it, so a snapshot taken while the archiver runs
    may catch a temporary file that is gone a moment later; it is not an archived file.
    """
    return {
        p.name: p.stat().st_size for p in archive_dir(host).iterdir() if ".tmp." not in p.name and p.is_file()
    }


def wait_archived(host: str = "db1", timeout: float = 60) -> None:
    """Until the archiver has caught up with the last switched segment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sql(
            host,
            "select coalesce(last_archived_wal, '') || ' ' || "
            "pg_walfile_name(pg_current_wal_lsn()) from pg_stat_archiver",
        )
        last, current = [*state.split(), "", ""][:2]
        if last and last[8:] >= format(int(current[8:], 16) - 1, "016X") and last in archived(host):
            return
        time.sleep(0.2)
    raise AssertionError(f"{host}: the archiver did not catch up: {state}")


def switch_wal(host: str = "db1", count: int = 1) -> None:
    for _ in range(count):
        sql(
            host,
            "create table if not exists walfiller(x int); insert into walfiller values (1); "
            "select pg_switch_wal();",
        )
    wait_archived(host)


def base_backup(host: str = "db1", upload: bool = False) -> str:
    """A real pg_basebackup (tar, compressed, no WAL); its .backup history file lands in the archive.

    Returns the history file's name. With `upload`, the backup is put under basebackups/STAMP/.
    """
    before = {n for n in archived(host) if n.endswith(".backup")}
    target = f"/tmp/rmlab-basebackup-{host}-{os.getpid()}"
    lab.exec_on(host, ["rm", "-rf", target])
    lab.exec_on(
        host,
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{BIN}/pg_basebackup",
            "-D",
            target,
            "-Ft",
            "-z",
            "-X",
            "none",
            "-c",
            "fast",
            "-l",
            "rmlab test",
        ],
        timeout=180,
    )
    try:
        if upload:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            s3().upload_file(f"{target}/base.tar.gz", BUCKET, f"basebackups/{stamp}/base.tar.gz")
    finally:
        lab.exec_on(host, ["rm", "-rf", target])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = {n for n in archived(host) if n.endswith(".backup")} - before
        if new:
            return sorted(new)[-1]
        switch_wal(host)
    raise AssertionError("no new .backup history file in the archive")


def sync_archive_to_s3(host: str = "db1") -> int:
    """Upload every archived file that S3 lacks (or holds at another size, or as a multipart upload),
    as the archive_command does: one PUT, so the object's ETag is its MD5. Returns how many.

    The lab's S3 (moto) keeps objects in memory, so a lab restart loses the uploads of files that the
    host's archive directory (on disk) still holds: the state no real archive_command leaves behind.
    """
    client = s3()
    have: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="wal/"):
        have.update({o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])})
    sent = 0
    for name, size in archived(host).items():
        got_size, etag = have.get(f"wal/{name}", (-1, ""))
        if got_size != size or "-" in etag:
            put_object(f"wal/{name}", (archive_dir(host) / name).read_bytes())
            sent += 1
    return sent


def put_object(key: str, body: bytes, *, multipart: bool = False, checksum: bool = True) -> str:
    """Store `body` under `key`: one PUT (the ETag is its MD5), or a multipart upload of 8 MiB parts
    (an `…-N` ETag, as `aws s3 cp` makes for a 16 MiB segment). boto3 sends the body's CRC32, which
    S3 keeps; without `checksum` it sends none (as older tools upload). Returns the ETag."""
    import io

    from boto3.s3.transfer import TransferConfig

    client = s3(checksum)
    if multipart:
        parts = TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=8 * 1024**2)
        client.upload_fileobj(io.BytesIO(body), BUCKET, key, Config=parts)
    else:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return str(client.head_object(Bucket=BUCKET, Key=key)["ETag"]).strip('"')


def s3(checksum: bool = True) -> Any:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=lab.S3_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(request_checksum_calculation="when_supported" if checksum else "when_required"),
    )
    try:
        client.head_bucket(Bucket=BUCKET)
    except Exception:
        client.create_bucket(Bucket=BUCKET)
    return client


SHOP_SQL = """
create table if not exists customers (id serial primary key, name text not null);
create table if not exists orders (id serial primary key, customer_id int references customers,
                                   created_at timestamptz not null default now(), note text);
insert into customers (name) select 'customer ' || g from generate_series(1, 20) g
  where (select count(*) from customers) < 20;
insert into orders (customer_id, created_at, note)
  select 1 + g % 20, now() - make_interval(secs => g), repeat('order ' || g, 5)
  from generate_series(1, {rows}) g;
"""


def make_shop(rows: int = 300, host: str = "db1") -> None:
    if sql(host, "select 1 from pg_database where datname = 'shop'") != "1":
        sql(host, "create database shop")
    sql(host, SHOP_SQL.format(rows=rows), db="shop")


def dump_shop(host: str = "db1", *, truncate_to: int | None = None, name: str | None = None) -> str:
    """pg_dump -Fc of shop on the host, uploaded under dumps/; returns the key."""
    data = lab.exec_on(
        host, ["runuser", "-u", "postgres", "--", f"{BIN}/pg_dump", "-Fc", "-d", "shop"], timeout=120
    ).stdout
    if truncate_to is not None:
        data = data[:truncate_to]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"dumps/{name or 'shop-' + stamp + '.dump'}"
    s3().put_object(Bucket=BUCKET, Key=key, Body=data)
    return key
