#!/usr/bin/env python3
"""Benchmark: the RTO of `inv restore-db` (start to the writers healthy) next to a raw `pg_restore` of
the same dump, in one run.

The dump is bench_restore_drill's (pg_dump -Fc -Z 0 of a generated shop of four tables with their
keys and indexes, at least --gib GiB, kept on dbrestore as a file and in the lab's S3 in one PUT;
made when missing, never removed here: bench_restore_drill.py --clean-only removes it). On
dbrestore (no WAL archive: the restore's WAL costs no S3 upload) a database `rmbench_prod` plays
production, with api1's `api` and `worker` as its writers. Rounds interleave the sides:

    raw         createdb, then `pg_restore --exit-on-error --no-owner --no-acl -d DB FILE` on the host
                (timed: pg_restore alone), then dropdb
    restore-db  `inv restore-db --host dbrestore --dump KEY --yes` (timed: the whole process: facts,
                the full read of the dump, stopping the writers, create, the streamed restore in one
                transaction, the checks, the swap, starting the writers and waiting until healthy)

Between rounds production is put back (the restored copy and the kept old one dropped, the record
removed, the writers up). Each round reads the dump twice (the preflight reads it to its end before
anything stops; the database host fetches it both times), so the RTO is about one read more than a
restore. Each round prints restore-db's steps and their wall times (from --json).

Usage (root; the lab up; under the lab's lock):
    .venv/bin/python scripts/bench_restore_db.py [--gib 1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_restore_drill as drill  # noqa: E402

from lab import hosts as lab  # noqa: E402

PROD = "rmbench_prod"
STATE = f"/var/lib/remediations/restore-db-{PROD}.json"
COMPOSE = ["docker", "compose", "-p", "shop", "-f", "/srv/shop/compose.yaml"]


def inventory(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "inventories" / "lab.yml").read_text())
    body = data["all"]["children"]["restore"]["hosts"][drill.HOST]
    body.update({"dump_s3_prefix": "bench-restore/", "restore_check_tables": drill.TABLES,
                 "restore_freshness_column": drill.FRESHNESS, "restore_db_database": PROD,
                 "restore_db_writers": {"api1": ["api", "worker"]}})  # fmt: skip
    path = folder / "bench.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def reset() -> None:
    """Production as a fresh, small database; no restored copy, no kept old one, no record."""
    names = drill.sql("select datname from pg_database").split()
    for name in names:
        if name == PROD or name.startswith((f"{PROD}_old_", f"{PROD}_restore_")):
            drill.sql(f'drop database "{name}" with (force)')
    drill.sql(f"create database {PROD}")
    drill.sql("create table customers (id bigint primary key, email text not null); "
              "insert into customers values (1, 'before@example.com')", db=PROD)  # fmt: skip
    lab.exec_on(drill.HOST, ["rm", "-f", STATE])
    lab.exec_on("api1", [*COMPOSE, "up", "-d", "--wait"], timeout=120)


def restore_db_round(inv: Path) -> float:
    env = {**os.environ, **drill.AWS_ENV, "PYTHONPATH": str(ROOT), "NO_COLOR": "1",
           "REMEDIATIONS_AUDIT_LOG": str(inv.parent / "audit.jsonl")}  # fmt: skip
    argv = [sys.executable, "-m", "invoke", "restore-db", "--host", drill.HOST, "--dump", drill.KEY, "--yes",
            "--inventory", str(inv), "--json"]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    took = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"restore-db failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    steps = json.loads(done.stdout)["hosts"][0]["steps"]
    print("    steps: " + ", ".join(f"{s['step']} {s['duration']:.2f}" for s in steps), flush=True)
    for step in steps:
        if step["step"] in ("dump", "restore"):
            print(f"    {step['step']}: {step['message'][:300]}", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--gib", type=float, default=1.0, help="the dump's size, GiB (default 1)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    size = drill.prepare(args.gib)
    print(f"dump: {size / 1024**3:.2f} GiB ({size} bytes)", flush=True)
    raw, ours = [], []
    with tempfile.TemporaryDirectory(prefix="rmbench-db-") as folder:
        inv = inventory(Path(folder))
        try:
            for n in range(args.rounds):
                if n % 2:  # A B, then B A: a load that rises or falls favours neither side
                    reset()
                    ours.append(restore_db_round(inv))
                raw.append(drill.raw_round())
                if not n % 2:
                    reset()
                    ours.append(restore_db_round(inv))
                print(f"round {n + 1}: raw pg_restore {raw[-1]:.1f} s, inv restore-db (RTO) "
                      f"{ours[-1]:.1f} s; load average {drill.load()}", flush=True)  # fmt: skip
        finally:
            reset()
            drill.sql(f"drop database if exists {PROD} with (force)")
    gib = size / 1024**3
    print(f"\nrestore of a {gib:.2f} GiB dump on {drill.HOST}, {args.rounds} interleaved round(s), medians")
    print(f"raw pg_restore (file on the host)        {statistics.median(raw):8.1f} s")
    print(f"inv restore-db, start to writers healthy {statistics.median(ours):8.1f} s")
    print(f"ratio restore-db/raw: {statistics.median(ours) / statistics.median(raw):.2f}")


if __name__ == "__main__":
    main()
