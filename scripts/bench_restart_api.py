#!/usr/bin/env python3
"""Benchmark: `restart-api` on one lab host next to a raw `docker compose restart` and a health poll.

Sides, rounds interleaved (raw, inv, engine, raw, …) so that machine noise hits each alike, medians:
- raw: one OpenSSH connection running `docker compose -p shop restart api`, then polling the
  container's Docker health and the api's health URL on the host every 50 ms until both say healthy
  (the floor: the same checks restart-api makes, no bookkeeping, no lock);
- inv: `inv restart-api --host HOST` end to end (interpreter start and imports included);
- engine: the engine run alone, in this process (no interpreter start), with its round trips counted
  (SSH exec requests: the lock, commands, polls).
Reported: the overhead of each over raw, in seconds (issue 14's target: at most 0.5 s), the CPU
time of the `inv` process, and the load average at the start and the end. The inv side runs with the
tree's bytecode compiled first, as an installed copy runs (PYTHONDONTWRITEBYTECODE, which test
runners set, would otherwise make every round compile the package from source).

Usage (root; starts the lab if needed):
    .venv/bin/python scripts/bench_restart_api.py [--host api1] [--rounds 5] [--tree DIR]
--tree runs the inv and engine sides with the remediations package of another checkout (e.g. the
code before a change), for a before/after figure in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AUDIT = "/tmp/remediations-bench-audit.jsonl"


def raw_command(host: Any) -> str:
    """`compose restart`, then a 50 ms poll of Docker health and the URL, run on the host."""
    q = shlex.quote
    directory, project = str(host.get("compose_project_dir")), str(host.get("compose_project_name"))
    service, url = str(host.get("api_service")), str(host.get("api_health_url"))
    container = f"{project}-{service}-1"
    return (
        f"cd {q(directory)} && docker compose -p {q(project)} restart {q(service)} >/dev/null 2>&1 && "
        f"while :; do s=$(docker inspect -f '{{{{.State.Health.Status}}}}' {q(container)}); "
        f'if [ "$s" = healthy ] && curl -fsS -m 2 {q(url)} >/dev/null 2>&1; then break; fi; sleep 0.05; done'
    )


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one run that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # one child at a time: the difference is its
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, check=False, timeout=300)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(argv)[:200]}\n{done.stderr.decode()[-2000:]}"
                 f"{done.stdout.decode()[-2000:]}")  # fmt: skip
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def engine_run(inventory_path: Path, host_name: str) -> tuple[float, int]:
    """(wall seconds, SSH exec requests) of one engine run in this process."""
    from remediations.core import connection, inventory
    from remediations.core.engine import Engine
    from remediations.core.options import RunOptions
    from remediations.docker.restart_api import RestartApi

    counted = {"execs": 0}

    def connect(host: Any, timeout: float) -> Any:
        remote = connection.connect(host, timeout)
        transport = remote.transport  # count every exec request on this connection's channels
        original = transport.open_session

        def open_session(*args: Any, **kwargs: Any) -> Any:
            counted["execs"] += 1
            return original(*args, **kwargs)

        transport.open_session = open_session
        return remote

    inv = inventory.load(inventory_path)
    engine = Engine(inv, RunOptions(check=False), connect=connect)
    t0 = time.monotonic()
    run = engine.run(RestartApi(), inv.select(host_name))
    wall = time.monotonic() - t0
    if run.failed:
        sys.exit(f"engine run failed: {run.failed[0].message}")
    return wall, counted["execs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--host", default="api1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose remediations package runs")
    args = parser.parse_args()
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(ROOT))
    os.environ["REMEDIATIONS_AUDIT_LOG"] = AUDIT

    from lab import hosts as lab
    from remediations.core import inventory

    lab.up()
    inventory_path = ROOT / "inventories" / "lab.yml"
    host = inventory.load(inventory_path).hosts[args.host]
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root", host.address]
    raw_argv = [*ssh, raw_command(host)]
    sources = [str(tree / "remediations"), str(tree / "tasks.py")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], capture_output=True, check=True)
    unset = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, "PYTHONPATH": str(tree)}
    inv_argv = [sys.executable, "-m", "invoke", "restart-api", "--host", args.host, "--json",
                "--inventory", str(inventory_path)]  # fmt: skip

    timed(raw_argv)  # warm caches on every side once
    timed(inv_argv, env, tree)
    engine_run(inventory_path, args.host)
    raw, ours, engine, execs, cpu = [], [], [], [], []
    load_at_start = os.getloadavg()[0]
    for _ in range(args.rounds):
        raw.append(timed(raw_argv)[0])
        wall, used = timed(inv_argv, env, tree)
        ours.append(wall)
        cpu.append(used)
        wall, count = engine_run(inventory_path, args.host)
        engine.append(wall)
        execs.append(count)

    floor = statistics.median(raw)
    print(f"restart-api on {args.host} ({tree}), {args.rounds} interleaved rounds, medians; "
          f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print(f"{'side':44} {'wall s':>8} {'over raw s':>11}")
    for name, values in (("raw: ssh compose restart + 50 ms health poll", raw),
                         ("inv restart-api (interpreter start included)", ours),
                         ("engine run only (in process)", engine)):  # fmt: skip
        median = statistics.median(values)
        print(f"{name:44} {median:8.2f} {median - floor:11.2f}")
    rounds = ", ".join(f"{c:.3f}" for c in cpu)
    print(f"CPU of the inv process: {statistics.median(cpu):.3f} s (rounds: {rounds})")
    print(f"SSH exec requests per engine run: {statistics.median(execs):.0f} (rounds: {execs})")
    print("target: inv - raw <= 0.5 s")


if __name__ == "__main__":
    main()
