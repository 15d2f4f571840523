#!/usr/bin/env python3
"""Benchmark: the start-up of `inv`, this checkout next to another (the code before a change), in one run.

Each case runs Invoke's own `inv` program in a fresh interpreter, rounds interleaved (A B A B …) so
that the machine's noise hits both sides alike; reported: each side's median wall time and the ratio
this/other. Cases:
  help      `inv restart-api --help`
  list      `inv --list` (imports every remediation on both sides)
  connect   `inv restart-api --check --host api1 -i inventories/lab.yml`, stopped at its first
            socket connect(): the whole start-up before the first SSH handshake, no packet sent
  check     (with --lab) the same check run to its end against the lab's api1
and, for this checkout, a breakdown of the start-up into its steps (differences of medians).

Usage (check needs the lab up: python -m lab up; hold /tmp/rmlab.lock while it runs):
    .venv/bin/python scripts/bench_startup.py --other /work/main [--rounds 15] [--lab]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Invoke's own program, as the `inv` script runs it; with STOP_AT_CONNECT, the process ends at its
# first socket connect (before any byte is sent).
PROGRAM = """
import os, sys
if os.environ.get("STOP_AT_CONNECT"):
    import socket
    def stop(self, address):
        os._exit(0)
    socket.socket.connect = stop
from invoke.main import program
program.run(["inv", *sys.argv[1:]])
"""

CASES = {
    "help": ["restart-api", "--help"],
    "list": ["--list"],
    "connect": ["restart-api", "--check", "--host", "api1", "-i", "inventories/lab.yml"],
    "check": ["restart-api", "--check", "--host", "api1", "-i", "inventories/lab.yml"],
}
BREAKDOWN = {  # cumulative steps of this checkout's start-up, each a fresh interpreter
    "interpreter": ["-c", "pass"],
    "+ import invoke's program": ["-c", "import invoke.main"],
    "+ import tasks (the collection)": ["-c", "import invoke.main, tasks"],
    "+ parse and print --help": ["-c", PROGRAM, *CASES["help"]],
    "+ run to the first connect": ["-c", PROGRAM, *CASES["connect"]],
}


def run_once(tree: Path, args: list[str], stop_at_connect: bool = False) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATIONS_")}
    env |= {"PYTHONPATH": str(tree), "NO_COLOR": "1", "REMEDIATIONS_AUDIT_LOG": os.devnull}
    if stop_at_connect:
        env["STOP_AT_CONNECT"] = "1"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"{tree}: {' '.join(args[-6:])} exited {done.returncode}\n{done.stderr.decode()[-2000:]}")
    return elapsed


def compare(case: str, trees: dict[str, Path], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {side: [] for side in trees}
    for _ in range(rounds):
        for side, tree in trees.items():
            times[side].append(run_once(tree, ["-c", PROGRAM, *CASES[case]], stop_at_connect=case == "connect"))
    return {side: statistics.median(values) for side, values in times.items()}


def breakdown(rounds: int) -> None:
    medians: dict[str, float] = {}
    samples: dict[str, list[float]] = {step: [] for step in BREAKDOWN}
    for _ in range(rounds):
        for step, args in BREAKDOWN.items():
            samples[step].append(run_once(ROOT, args, stop_at_connect="connect" in step))
    previous = 0.0
    print(f"\nstart-up of this checkout, {rounds} rounds (medians; a step is the difference to the last)")
    for step, values in samples.items():
        medians[step] = statistics.median(values)
        print(f"  {step:34s} {medians[step] * 1000:7.1f} ms  (step {max(medians[step] - previous, 0) * 1000:6.1f} ms)")
        previous = medians[step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (e.g. /work/main)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--lab", action="store_true", help="also the whole check run against the lab's api1")
    args = parser.parse_args()
    trees = {"this": ROOT, "other": args.other.resolve()}
    cases = ["help", "list", "connect", *(["check"] if args.lab else [])]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds each, sides interleaved")
    print(f"  {'case':10s} {'this':>10s} {'other':>10s} {'this/other':>11s}")
    for case in cases:
        medians = compare(case, trees, args.rounds)
        ratio = medians["this"] / medians["other"]
        print(f"  {case:10s} {medians['this'] * 1000:8.1f}ms {medians['other'] * 1000:8.1f}ms {ratio:10.2f}×",
              flush=True)
    breakdown(args.rounds)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
