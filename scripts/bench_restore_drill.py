#!/usr/bin/env python3
"""Benchmark: `inv restore-test` end to end next to a raw `pg_restore` of the same dump, in one run.

The dump (pg_dump -Fc of a generated table, at least --gib GiB) is made on the lab's restore host
(dbrestore: no WAL archive, so the generation costs no S3 upload) and kept there as a file, the
raw side's input; the same bytes are uploaded to the lab's S3 (moto) in one PUT (its ETag is its
MD5, so the drill checks it). Rounds interleave the sides so machine noise hits both alike:

    raw     createdb, then `pg_restore --exit-on-error --no-owner --no-acl -d DB FILE` on dbrestore
            (timed: pg_restore alone), then dropdb
    piped   the same with `cat FILE | pg_restore …`: what pg_restore costs reading a pipe
    drill   `inv restore-test --dump KEY` (timed: the whole process: start, facts, listing, create,
            the streamed restore, the checks, the drop)
    old     (with --old DIR, e.g. a `git archive` of main) the same `inv restore-test` from DIR

The dump is written uncompressed (-Z 0): nothing on the path compresses (SSH is not compressed),
so the bytes carried are the dump's size; the table's rows are md5 text.

Target (issue 14, item 2): drill <= 1.2 x raw. Be kind to the disk: the script checks `df /` first
(it needs about 5 x the dump), and --clean removes everything it made (a later run without --clean
reuses the dump if it is still there, so that each run under the lab's lock stays short).

Usage (root; the lab up):
    .venv/bin/python scripts/bench_restore_drill.py [--gib 1] [--rounds 2] [--old /tmp/main] [--clean]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import hosts as lab  # noqa: E402

HOST = "dbrestore"
SOURCE_DB = "rmbench_source"
RAW_DB = "rmbench_raw"
KEY = "bench-restore/rmbench.dump"
DUMP_ON_HOST = "/var/lib/postgresql/rmbench.dump"
DUMP_HERE = lab.LAB_ROOT / "hosts" / HOST / "postgresql" / "rmbench.dump"
BIN = f"/usr/lib/postgresql/{lab.PG_VERSION}/bin"
ROW_BYTES = 264  # bytes per row in the dump (8 md5s of text, the id, the COPY framing), measured
FILL_SQL = """create table bench_rows (id bigint primary key, payload text not null);
insert into bench_rows select g, PAYLOAD from generate_series(1, ROWS) g;
"""
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIDLABTEST", "AWS_SECRET_ACCESS_KEY": "lab-test-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def sql(text: str, db: str = "postgres", timeout: float = 600) -> str:
    argv = as_postgres(f"{BIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-")
    return lab.exec_on(HOST, argv, input=text.encode(), timeout=timeout).stdout.decode().strip()


def s3() -> object:
    import boto3

    return boto3.client("s3", endpoint_url=lab.S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def s3_size(client: object) -> int:
    try:
        return int(client.head_object(Bucket=lab.S3_BACKUP_BUCKET, Key=KEY)["ContentLength"])  # type: ignore[attr-defined]
    except Exception:  # absent (or moto restarted): make it again
        return -1


def prepare(gib: float) -> int:
    """The dump on dbrestore and in S3 (made when missing); returns its size."""
    client = s3()
    if DUMP_HERE.exists() and DUMP_HERE.stat().st_size >= gib * 1024**3 * 0.95:
        size = DUMP_HERE.stat().st_size
        if s3_size(client) != size:
            upload(client)
        return size
    free = shutil.disk_usage("/").free
    need = 5 * gib * 1024**3
    print(f"df /: {free / 1024**3:.1f} GiB free, need about {need / 1024**3:.1f} GiB", flush=True)
    if free < need:
        sys.exit("not enough free disk for the benchmark")
    rows = int(gib * 1024**3 / ROW_BYTES) + 1
    t0 = time.monotonic()
    sql(f"drop database if exists {SOURCE_DB}")
    sql(f"create database {SOURCE_DB}")
    payload = " || ".join(f"md5((g + {i})::text)" for i in range(8))
    sql(FILL_SQL.replace("PAYLOAD", payload).replace("ROWS", str(rows)), db=SOURCE_DB, timeout=1800)
    print(f"generated {rows} rows in {time.monotonic() - t0:.0f} s", flush=True)
    dump = as_postgres(f"{BIN}/pg_dump", "-Fc", "-Z", "0", "-d", SOURCE_DB, "-f", DUMP_ON_HOST)
    lab.exec_on(HOST, dump, timeout=1800)
    sql(f"drop database {SOURCE_DB}")  # the dump is what both sides restore
    upload(client)
    return DUMP_HERE.stat().st_size


def upload(client: object) -> None:
    from boto3.s3.transfer import TransferConfig

    t0 = time.monotonic()
    one_put = TransferConfig(multipart_threshold=8 * 1024**3)
    try:
        client.head_bucket(Bucket=lab.S3_BACKUP_BUCKET)  # type: ignore[attr-defined]
    except Exception:
        client.create_bucket(Bucket=lab.S3_BACKUP_BUCKET)  # type: ignore[attr-defined]
    client.upload_file(str(DUMP_HERE), lab.S3_BACKUP_BUCKET, KEY, Config=one_put)  # type: ignore[attr-defined]
    print(f"uploaded to s3://{lab.S3_BACKUP_BUCKET}/{KEY} in {time.monotonic() - t0:.0f} s", flush=True)


def clean() -> None:
    sql(f"drop database if exists {SOURCE_DB}")
    sql(f"drop database if exists {RAW_DB}")
    DUMP_HERE.unlink(missing_ok=True)
    try:
        s3().delete_object(Bucket=lab.S3_BACKUP_BUCKET, Key=KEY)  # type: ignore[attr-defined]
    except Exception as exc:
        print(f"could not delete s3://{lab.S3_BACKUP_BUCKET}/{KEY}: {exc}")
    print("cleaned up: the dump file, the S3 object, the benchmark databases")


def raw_round(pipe: bool = False) -> float:
    """pg_restore of the file on the host; with `pipe`, of the same file through a pipe
    (`cat FILE | pg_restore`: what a streamed restore reads from)."""
    sql(f"drop database if exists {RAW_DB}")
    sql(f"create database {RAW_DB}")
    restore = as_postgres(f"{BIN}/pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-d", RAW_DB,
                          *([] if pipe else [DUMP_ON_HOST]))  # fmt: skip
    if pipe:
        restore = ["sh", "-c", f"cat {DUMP_ON_HOST} | {shlex.join(restore)}"]
    t0 = time.monotonic()
    lab.exec_on(HOST, restore, timeout=3600)
    took = time.monotonic() - t0
    sql(f"drop database {RAW_DB}")
    return took


def drill_inventory(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "inventories" / "lab.yml").read_text())
    body = data["all"]["children"]["restore"]["hosts"][HOST]
    body.update({"dump_s3_prefix": "bench-restore/", "restore_check_tables": {"bench_rows": 1},
                 "restore_freshness_column": "", "restore_test_json": str(folder / "r.json"),
                 "restore_test_metrics": str(folder / "r.prom")})  # fmt: skip
    path = folder / "bench.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def children_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def drill_round(code_root: Path, inventory: Path) -> float:
    env = {**os.environ, **AWS_ENV, "PYTHONPATH": str(code_root), "NO_COLOR": "1",
           "REMEDIATIONS_AUDIT_LOG": str(inventory.parent / "audit.jsonl")}  # fmt: skip
    argv = [sys.executable, "-m", "invoke", "restore-test", "--dump", KEY, "--inventory", str(inventory)]
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=code_root, env=env, capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"restore-test from {code_root} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                 f"\n{done.stderr[-2000:]}")  # fmt: skip
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--gib", type=float, default=1.0, help="the dump's size, GiB (default 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old", type=Path, help="also time the restore-test of this tree (e.g. main)")
    parser.add_argument("--clean", action="store_true", help="remove the dump, object and databases")
    parser.add_argument("--clean-only", action="store_true", help="only clean up")
    args = parser.parse_args()
    if args.clean_only:
        clean()
        return
    size = prepare(args.gib)
    print(f"dump: {size / 1024**3:.2f} GiB ({size} bytes)", flush=True)
    raw, piped, ours, old = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="rmbench-") as folder:
        inventory = drill_inventory(Path(folder))
        for n in range(args.rounds):
            raw.append(raw_round())
            ours.append(drill_round(ROOT, inventory))
            piped.append(raw_round(pipe=True))
            print(f"round {n + 1}: raw pg_restore {raw[-1]:.1f} s, inv restore-test {ours[-1]:.1f} s, "
                  f"cat | pg_restore {piped[-1]:.1f} s", flush=True)  # fmt: skip
        if args.old:
            old.append(drill_round(args.old, inventory))
            print(f"old code ({args.old}): inv restore-test {old[-1]:.1f} s", flush=True)
    print(f"\nrestore of a {size / 1024**3:.2f} GiB dump on {HOST}, {args.rounds} interleaved round(s), "
          "medians")
    print(f"raw pg_restore (file on the host)   {statistics.median(raw):8.1f} s")
    print(f"inv restore-test (streamed)         {statistics.median(ours):8.1f} s")
    print(f"cat FILE | pg_restore (on the host) {statistics.median(piped):8.1f} s")
    print(f"ratio restore-test/raw: {statistics.median(ours) / statistics.median(raw):.2f} (target <= 1.2)")
    if old:
        print(f"old inv restore-test (download, SFTP) {old[0]:6.1f} s")
        print(f"old ratio restore-test/raw: {old[0] / statistics.median(raw):.2f}")
    print(f"largest child process RSS (the inv runs, or pg tools via nsenter): {children_rss_mib():.0f} MiB")
    if args.clean:
        clean()


if __name__ == "__main__":
    main()
