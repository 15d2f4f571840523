#!/usr/bin/env python3
"""Benchmark: `restart-api --check` over N lab hosts next to plain OpenSSH in parallel, in one run.

Both sides run the same remote command (restart-api's one-round-trip facts script) on the same hosts,
rounds interleaved so machine noise hits both alike. Reported: median wall time and controller CPU
(user+sys of the controller's processes: for OpenSSH the ssh clients and xargs; for remediations
the whole `inv` process, interpreter start and imports included, and separately the engine run alone).

Targets (issue 2): wall time ≤ 1.2× OpenSSH's; controller CPU ≤ 30 ms per host.

Usage (root; starts the lab with N bench hosts if needed):
    .venv/bin/python scripts/bench_restart_check.py [--hosts 20] [--rounds 5]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import hosts as lab  # noqa: E402
from remediations.core import inventory  # noqa: E402
from remediations.facts.compose import Project, facts_command  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child and its descendants) of one command."""
    cpu0, t0 = children_cpu(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if done.returncode != 0:
        sys.exit(f"benchmark command failed ({done.returncode}): {shlex.join(argv)[:200]}\n"
                 f"{done.stderr.decode()[-2000:]}")
    return wall, cpu


def openssh_side(hosts: list[inventory.Host], command: str) -> list[str]:
    """xargs -P N running one ssh per host, strict host keys, the lab's key."""
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root"]
    addresses = " ".join(shlex.quote(h.address) for h in hosts)
    script = (f"printf '%s\\n' {addresses} | xargs -P {len(hosts)} -I{{}} "
              f"{shlex.join(ssh)} {{}} {shlex.quote(command)} >/dev/null")
    return ["sh", "-c", script]


def engine_cpu(inventory_path: Path, pattern: str, parallel: int) -> tuple[float, float]:
    """The engine run alone, in this process: (wall, CPU) without interpreter start or imports."""
    from remediations.core.engine import Engine
    from remediations.core.options import RunOptions
    from remediations.docker.restart_api import RestartApi

    inv = inventory.load(inventory_path)
    engine = Engine(inv, RunOptions(check=True, parallel=parallel))
    os.environ.setdefault("REMEDIATIONS_AUDIT_LOG", "/tmp/remediations-bench-audit.jsonl")
    c0, t0 = time.process_time(), time.monotonic()
    run = engine.run(RestartApi(), inv.select(pattern))
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    if run.failed:
        sys.exit(f"engine run failed on {[h.host for h in run.failed]}: {run.failed[0].message}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    lab.up(extra_api_hosts=args.hosts)
    inv = inventory.load(lab.BENCH_INVENTORY)
    hosts = inv.select("bench")[: args.hosts]
    pattern = ",".join(h.name for h in hosts)
    sample = hosts[0]
    command = facts_command(Project.from_host(sample), str(sample.get("api_service")),
                            sample.get("api_health_url"), 10)
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": "/tmp/remediations-bench-audit.jsonl"}
    ours_argv = [sys.executable, "-m", "invoke", "restart-api", "--check", "--json", "--host", pattern,
                 "--parallel", str(len(hosts)), "--inventory", str(lab.BENCH_INVENTORY)]
    ssh_argv = openssh_side(hosts, command)

    measure(ssh_argv)  # warm caches on both sides once
    measure(ours_argv, env)
    ours, ssh, engine = [], [], []
    for _ in range(args.rounds):
        ssh.append(measure(ssh_argv))
        ours.append(measure(ours_argv, env))
        engine.append(engine_cpu(lab.BENCH_INVENTORY, pattern, len(hosts)))

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    n = len(hosts)
    print(f"restart-api --check over {n} lab hosts, {args.rounds} interleaved rounds, medians")
    print(f"{'side':34} {'wall s':>8} {'CPU s':>8} {'CPU ms/host':>12}")
    for name, values in (("OpenSSH xargs -P (ssh x N)", ssh), ("inv restart-api --check", ours),
                         ("engine run only (in process)", engine)):
        print(f"{name:34} {med(values, 0):8.2f} {med(values, 1):8.2f} {med(values, 1) * 1000 / n:12.1f}")
    print(f"wall ratio inv/OpenSSH: {med(ours, 0) / med(ssh, 0):.2f} (target <= 1.2)")
    print(f"wall ratio engine/OpenSSH: {med(engine, 0) / med(ssh, 0):.2f}")


if __name__ == "__main__":
    main()
