#!/usr/bin/env python3
"""Benchmark: `inv restore-test` end to end next to a raw `pg_restore` of the same dump, in one run.

The dump (pg_dump -Fc of a generated shop: customers, orders, order_items, events, each with its
primary key, foreign keys and secondary indexes; at least --gib GiB) is made on the lab's restore
host (dbrestore: no WAL archive, so the generation costs no S3 upload) and kept there as a file,
the raw side's input; the same bytes are uploaded to the lab's S3 (moto) in one PUT under
bench-restore/ (boto3 sends its CRC32, which S3 keeps; its ETag is its MD5). Rounds interleave
the sides so machine noise hits both alike:

    raw     createdb, then `pg_restore --exit-on-error --no-owner --no-acl -d DB FILE` on dbrestore
            (timed: pg_restore alone), then dropdb
    raw-jN  the same with `pg_restore -j N FILE`
    piped   the same with `cat FILE | pg_restore …`: what pg_restore costs reading a pipe
    curl    the same with `curl URL | pg_restore …` on the host (a presigned URL on curl's stdin):
            the floor of a host-side fetch
    file-jN option (b): `curl URL -o FILE; pg_restore -j N FILE` on the host (timed: both)
    host    `inv restore-test --dump KEY` (timed: the whole process: start, facts, listing, create,
            the restore, the checks, the drop), restore_fetch: host (the host fetches the dump)
    host-jN the same with restore_jobs: N (the host downloads the dump to a file, checks it, then
            pg_restore -j N)
    ctl     the same with restore_fetch: controller (S3 → controller → SSH stdin → pg_restore)
    old     (with --old DIR, e.g. a `git archive` of main) the same `inv restore-test` from DIR

Each drill round also prints its steps' wall times (from --json) and the CPU seconds spent by the
controller (the inv process), moto, and the restore host (every process in its network namespace,
its exited children included).

The dump is written uncompressed (-Z 0): nothing on the path compresses (SSH is not compressed),
so the bytes carried are the dump's size; the table's rows are md5 text.

Target (issue 14, item 2): drill <= 1.2 x raw. Be kind to the disk: the script checks `df /` first
(it needs about 5 x the dump), and --clean removes everything it made (a later run without --clean
reuses the dump if it is still there, so that each run under the lab's lock stays short).

Usage (root; the lab up):
    .venv/bin/python scripts/bench_restore_drill.py [--gib 1] [--rounds 2] [--sides raw,host,ctl]
        [--old /tmp/main] [--clean]
"""

from __future__ import annotations

import argparse
import json
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
KEY = "bench-restore/rmbench-shop.dump"
DUMP_ON_HOST = "/var/lib/postgresql/rmbench-shop.dump"
DUMP_HERE = lab.LAB_ROOT / "hosts" / HOST / "postgresql" / "rmbench-shop.dump"
OLD_DUMPS = ("rmbench.dump",)  # an earlier version's single-table dump: removed when this one is made
BIN = f"/usr/lib/postgresql/{lab.PG_VERSION}/bin"
# rows per GiB of dump (about 1.05 GB of COPY text per GiB asked), measured
ROWS_PER_GIB = {"customers": 1_100_000, "orders": 4_400_000, "order_items": 11_000_000, "events": 1_550_000}
TABLES = {name: 1 for name in ROWS_PER_GIB}  # the drill's restore_check_tables
FRESHNESS = "events.at"
FILL_SQL = """
create table customers (id bigint primary key, email text not null, name text not null,
  created_at timestamptz not null);
insert into customers select g, 'c' || g || '@example.com', md5(g::text),
  now() - (g % 1000000) * interval '1 minute' from generate_series(1, {customers}) g;
create unique index customers_email on customers (email);
create table orders (id bigint primary key, customer_id bigint not null, created_at timestamptz not null,
  status text not null, total numeric(12, 2) not null);
insert into orders select g, 1 + g % {customers}, now() - (g % 500000) * interval '1 minute',
  (array['new', 'paid', 'shipped', 'done'])[1 + g % 4], (g % 100000) / 100.0
  from generate_series(1, {orders}) g;
alter table orders add foreign key (customer_id) references customers;
create index orders_customer on orders (customer_id);
create index orders_created on orders (created_at);
create table order_items (id bigint primary key, order_id bigint not null, sku text not null,
  qty int not null, price numeric(10, 2) not null);
insert into order_items select g, 1 + g % {orders}, 'SKU-' || (g % 50000), 1 + g % 5, (g % 10000) / 100.0
  from generate_series(1, {order_items}) g;
alter table order_items add foreign key (order_id) references orders;
create index order_items_order on order_items (order_id);
create table events (id bigint primary key, at timestamptz not null, kind text not null,
  payload text not null);
insert into events select g, now() - (g % 86400) * interval '1 second', 'k' || (g % 20),
  md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) || md5((g + 3)::text) || md5((g + 4)::text)
  || md5((g + 5)::text) from generate_series(1, {events}) g;
create index events_at on events (at);
"""
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIDLABTEST", "AWS_SECRET_ACCESS_KEY": "lab-test-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def is_drill(side: str) -> bool:
    return side in ("host", "ctl") or side.startswith("host-j")


LABELS = {"raw": "raw pg_restore (file on the host)", "raw-j2": "raw pg_restore -j 2 (file on the host)",
          "file-j2": "curl -o FILE; pg_restore -j 2 FILE (host)",
          "host-j2": "inv restore-test, restore_jobs 2", "piped": "cat FILE | pg_restore (on the host)",
          "curl": "curl URL | pg_restore (on the host)", "host": "inv restore-test (the host fetches)",
          "ctl": "inv restore-test (streamed by the controller)"}  # fmt: skip


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
    if DUMP_HERE.exists() and DUMP_HERE.stat().st_size >= gib * 0.9e9:  # made by an earlier run
        size = DUMP_HERE.stat().st_size
        if s3_size(client) != size:
            upload(client)
        return size
    free = shutil.disk_usage("/").free
    need = 5 * gib * 1024**3
    print(f"df /: {free / 1024**3:.1f} GiB free, need about {need / 1024**3:.1f} GiB", flush=True)
    if free < need:
        sys.exit("not enough free disk for the benchmark")
    for old in OLD_DUMPS:
        (DUMP_HERE.parent / old).unlink(missing_ok=True)
    rows = {name: int(gib * count) for name, count in ROWS_PER_GIB.items()}
    t0 = time.monotonic()
    sql(f"drop database if exists {SOURCE_DB}")
    sql(f"create database {SOURCE_DB}")
    sql(FILL_SQL.format(**rows), db=SOURCE_DB, timeout=1800)
    print(f"generated {sum(rows.values())} rows ({rows}) in {time.monotonic() - t0:.0f} s", flush=True)
    dump = as_postgres(f"{BIN}/pg_dump", "-Fc", "-Z", "0", "-d", SOURCE_DB, "-f", DUMP_ON_HOST)
    lab.exec_on(HOST, dump, timeout=1800)
    sql(f"drop database {SOURCE_DB}")  # the dump is what both sides restore
    upload(client)
    return DUMP_HERE.stat().st_size


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def upload(client: object) -> None:
    from boto3.s3.transfer import TransferConfig

    t0 = time.monotonic()
    one_put = TransferConfig(multipart_threshold=8 * 1024**3)
    try:
        client.head_bucket(Bucket=lab.S3_BACKUP_BUCKET)  # type: ignore[attr-defined]
    except Exception:
        client.create_bucket(Bucket=lab.S3_BACKUP_BUCKET)  # type: ignore[attr-defined]
    client.upload_file(str(DUMP_HERE), lab.S3_BACKUP_BUCKET, KEY, Config=one_put)  # type: ignore[attr-defined]
    for old in OLD_DUMPS:
        client.delete_object(Bucket=lab.S3_BACKUP_BUCKET, Key=f"bench-restore/{old}")  # type: ignore[attr-defined]
    head = client.head_object(Bucket=lab.S3_BACKUP_BUCKET, Key=KEY, ChecksumMode="ENABLED")  # type: ignore[attr-defined]
    print(f"  ETag {head['ETag']}, CRC32 {head.get('ChecksumCRC32')}", flush=True)
    print(f"uploaded to s3://{lab.S3_BACKUP_BUCKET}/{KEY} in {time.monotonic() - t0:.0f} s", flush=True)


def clean() -> None:
    sql(f"drop database if exists {SOURCE_DB}")
    sql(f"drop database if exists {RAW_DB}")
    DUMP_HERE.unlink(missing_ok=True)
    for old in OLD_DUMPS:
        (DUMP_HERE.parent / old).unlink(missing_ok=True)
    try:
        s3().delete_object(Bucket=lab.S3_BACKUP_BUCKET, Key=KEY)  # type: ignore[attr-defined]
    except Exception as exc:
        print(f"could not delete s3://{lab.S3_BACKUP_BUCKET}/{KEY}: {exc}")
    print("cleaned up: the dump file, the S3 object, the benchmark databases")


def presigned() -> str:
    return s3().generate_presigned_url(  # type: ignore[attr-defined,no-any-return]
        "get_object", Params={"Bucket": lab.S3_BACKUP_BUCKET, "Key": KEY}, ExpiresIn=600
    )


def raw_round(how: str = "raw") -> float:
    """pg_restore of the file on the host (raw; raw-jN with -j N); of the same file through a pipe
    (piped: `cat FILE | pg_restore`, what a streamed restore reads from); from curl on the host
    (curl); or curl to a file on the host, then `pg_restore -j N` (file-jN)."""
    sql(f"drop database if exists {RAW_DB}")
    sql(f"create database {RAW_DB}")
    count = how.removeprefix("file-j").removeprefix("raw-j")
    jobs = ["-j", count] if how.startswith(("file-j", "raw-j")) else []
    on_file = how == "raw" or how.startswith("raw-j")
    restore = as_postgres(f"{BIN}/pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-d", RAW_DB,
                          *jobs, *([DUMP_ON_HOST] if on_file else []))  # fmt: skip
    config = b""
    if how == "piped":
        restore = ["sh", "-c", f"cat {DUMP_ON_HOST} | {shlex.join(restore)}"]
    elif how == "curl":
        config = f'url = "{presigned()}"\n'.encode()
        restore = ["sh", "-c", f"curl -sS --fail -K - | {shlex.join(restore)}"]
    elif jobs and not on_file:
        config = f'url = "{presigned()}"\n'.encode()
        copy = "/var/lib/postgresql/rmbench.fetched"
        restore = ["sh", "-c", f"curl -sS --fail -K - -o {copy} && chown postgres {copy} && "
                   f"{shlex.join(restore)} {copy}; s=$?; rm -f {copy}; exit $s"]  # fmt: skip
    before_host, before_here = host_cpu(), children_cpu()
    t0 = time.monotonic()
    lab.exec_on(HOST, restore, input=config or None, timeout=3600)
    took = time.monotonic() - t0
    after = host_cpu()
    host = sum(v - before_host.get(pid, 0.0) for pid, v in after.items()) + children_cpu() - before_here
    print(f"  {how}: cpu s: host {host:.1f} (pg_restore and the tools it reads from, the server)", flush=True)
    sql(f"drop database {RAW_DB}")
    return took


def host_cpu() -> dict[int, float]:
    """CPU seconds (self and reaped children) of every process in the restore host's netns."""
    tick = os.sysconf("SC_CLK_TCK")
    netns = os.stat(f"/run/netns/{HOST}").st_ino
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != netns:
                continue
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick
    return found


def moto_cpu() -> float:
    try:
        pid = int((lab.LAB_ROOT / "moto.pid").read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, ValueError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def drill_inventory(folder: Path, side: str) -> Path:
    """An inventory for the drill side `side` (host, host-jN, ctl)."""
    data = yaml.safe_load((ROOT / "inventories" / "lab.yml").read_text())
    body = data["all"]["children"]["restore"]["hosts"][HOST]
    fetch = "controller" if side == "ctl" else "host"
    jobs = int(side.removeprefix("host-j")) if side.startswith("host-j") else 1
    body.update({"dump_s3_prefix": "bench-restore/", "restore_check_tables": TABLES,
                 "restore_fetch": fetch, "restore_jobs": jobs,
                 "restore_freshness_column": FRESHNESS, "restore_test_json": str(folder / "r.json"),
                 "restore_test_metrics": str(folder / "r.prom")})  # fmt: skip
    path = folder / f"bench-{side}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def children_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def drill_round(code_root: Path, inventory: Path, old: bool = False) -> float:
    """One `inv restore-test`; prints its steps and the CPU it took on each side."""
    env = {**os.environ, **AWS_ENV, "PYTHONPATH": str(code_root), "NO_COLOR": "1",
           "REMEDIATIONS_AUDIT_LOG": str(inventory.parent / "audit.jsonl")}  # fmt: skip
    argv = [sys.executable, "-m", "invoke", "restore-test", "--dump", KEY, "--inventory", str(inventory),
            *([] if old else ["--json"])]  # fmt: skip
    before_host, before_moto, before_here = host_cpu(), moto_cpu(), children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=code_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    out, err = proc.communicate()
    took = time.monotonic() - t0
    controller = children_cpu() - before_here
    after = host_cpu()
    host = sum(v - before_host.get(pid, 0.0) for pid, v in after.items())
    if proc.returncode != 0:
        sys.exit(f"restore-test from {code_root} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    if not old:
        steps = json.loads(out)["hosts"][0]["steps"]
        print("    steps: " + ", ".join(f"{s['step']} {s['duration']:.2f}" for s in steps), flush=True)
    moto = moto_cpu() - before_moto
    print(f"    cpu s: controller (inv) {controller:.1f}, moto {moto:.1f}, host {host:.1f}", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--gib", type=float, default=1.0, help="the dump's size, GiB (default 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sides", default="raw,host,ctl,piped,curl",
                        help="what to time, in this order each round (first: the base of the ratios): "
                             "raw, raw-jN, piped, curl, file-jN, host, host-jN, ctl")  # fmt: skip
    parser.add_argument("--old", type=Path, help="also time the restore-test of this tree (e.g. main)")
    parser.add_argument("--clean", action="store_true", help="remove the dump, object and databases")
    parser.add_argument("--clean-only", action="store_true", help="only clean up")
    parser.add_argument("--prepare-only", action="store_true", help="only make the dump (file and S3)")
    args = parser.parse_args()
    if args.clean_only:
        clean()
        return
    size = prepare(args.gib)
    print(f"dump: {size / 1024**3:.2f} GiB ({size} bytes)", flush=True)
    if args.prepare_only:
        return
    sides = args.sides.split(",")
    times: dict[str, list[float]] = {side: [] for side in sides}
    old: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rmbench-") as folder:
        inventories = {
            side: drill_inventory(Path(folder), side) for side in {*sides, "ctl"} if is_drill(side)
        }
        for n in range(args.rounds):
            # A B C, then C B A: a load that rises or falls through a round favours no side
            for side in sides if n % 2 == 0 else sides[::-1]:
                if is_drill(side):
                    print(f"  {side}:", flush=True)
                    times[side].append(drill_round(ROOT, inventories[side]))
                else:
                    times[side].append(raw_round(side))
            print(
                f"round {n + 1}: "
                + ", ".join(f"{side} {times[side][-1]:.1f} s" for side in sides)
                + f"; load average {load()}",
                flush=True,
            )
        if args.old:
            old.append(drill_round(args.old, inventories["ctl"], old=True))
            print(f"old code ({args.old}): inv restore-test {old[-1]:.1f} s", flush=True)
    print(f"\nrestore of a {size / 1024**3:.2f} GiB dump on {HOST}, {args.rounds} interleaved round(s), "
          "medians")  # fmt: skip
    base = statistics.median(times[sides[0]])
    for side in sides:
        median = statistics.median(times[side])
        print(f"{LABELS.get(side, side):44} {median:8.1f} s   {median / base:5.2f} x {sides[0]}")
    if old:
        print(f"{'old inv restore-test':44} {old[0]:8.1f} s   {old[0] / base:5.2f} x {sides[0]}")
    print(f"largest child process RSS (the inv runs, or pg tools via nsenter): {children_rss_mib():.0f} MiB")
    if args.clean:
        clean()


if __name__ == "__main__":
    main()
