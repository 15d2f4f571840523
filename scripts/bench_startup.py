#!/usr/bin/env python3
"""Benchmark: the start-up of `inv`, this checkout next to another (the code before a change), in one run.

Both sides are copies of each checkout's committed HEAD (git archive) in a temporary folder, so that
neither checkout is written to. Each case runs Invoke's own `inv` program in a fresh interpreter,
rounds interleaved (A B A B …) so that the machine's noise hits both sides alike; reported: each
side's median wall time and the ratio this/other. Cases, on copies whose bytecode is compiled:
  help          `inv restart-api --help`
  list          `inv --list` (imports every remediation on both sides)
  connect       `inv restart-api --check --host api1 -i inventories/lab.yml`, stopped at its first
                socket connect(): the whole start-up before the SSH handshake, no packet sent
  check         (with --lab) the same check run to its end against the lab's api1
and on copies with no bytecode at all (a checkout that only `inv` runs; Invoke turns writing off):
  help-cold, connect-cold   the same, medians of the runs after each side's first
then, for this side, the start-up step by step (cumulative medians).

Usage (check needs the lab up: python -m lab up; hold /tmp/rmlab.lock while it runs):
    .venv/bin/python scripts/bench_startup.py --other /work/main [--rounds 15] [--lab]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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

CHECK = ["restart-api", "--check", "--host", "api1", "-i", "inventories/lab.yml"]
CASES = {"help": ["restart-api", "--help"], "list": ["--list"], "connect": CHECK, "check": CHECK}
BREAKDOWN = {  # cumulative steps of this checkout's start-up, each a fresh interpreter
    "interpreter": ["-c", "pass"],
    "+ import invoke's program": ["-c", "import invoke.main"],
    "+ import tasks (the collection)": ["-c", "import invoke.main, tasks"],
    "+ parse and print --help": ["-c", PROGRAM, *CASES["help"]],
    "+ run to the first connect": ["-c", PROGRAM, *CASES["connect"]],
}


def copy_of(checkout: Path, dest: Path, compiled: bool) -> Path:
    """The committed HEAD of `checkout` in `dest`, its bytecode compiled or absent."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    if compiled:
        sources = [str(dest / "remediations"), str(dest / "tasks.py")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], capture_output=True, check=True)
    return dest


def run_once(tree: Path, args: list[str], stop_at_connect: bool = False) -> float:
    unset = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATIONS_") and k not in unset}
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
    argv = ["-c", PROGRAM, *CASES[case.removesuffix("-cold")]]
    times: dict[str, list[float]] = {side: [] for side in trees}
    for _ in range(rounds + case.endswith("-cold")):
        for side, tree in trees.items():
            times[side].append(run_once(tree, argv, stop_at_connect=case.startswith("connect")))
    skip = 1 if case.endswith("-cold") else 0  # the first cold run writes the bytecode, where it is written
    return {side: statistics.median(values[skip:]) for side, values in times.items()}


def breakdown(tree: Path, rounds: int) -> None:
    samples: dict[str, list[float]] = {step: [] for step in BREAKDOWN}
    for _ in range(rounds):
        for step, args in BREAKDOWN.items():
            samples[step].append(run_once(tree, args, stop_at_connect="connect" in step))
    previous = 0.0
    print(f"\nthis side's start-up, step by step ({rounds} rounds, cumulative medians)")
    for step, values in samples.items():
        median = statistics.median(values)
        print(f"  {step:34s} {median * 1000:7.1f} ms  (+{max(median - previous, 0) * 1000:6.1f} ms)")
        previous = median


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (e.g. /work/main)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--lab", action="store_true", help="also the whole check run against the lab's api1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        warm = {side: copy_of(tree, Path(tmp, side), compiled=True)
                for side, tree in (("this", ROOT), ("other", args.other.resolve()))}  # fmt: skip
        cold = {side: copy_of(tree, Path(tmp, side + "-cold"), compiled=False)
                for side, tree in (("this", ROOT), ("other", args.other.resolve()))}  # fmt: skip
        cases = ["help", "list", "connect", *(["check"] if args.lab else []), "help-cold", "connect-cold"]
        print(f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds each, sides interleaved")
        print(f"  {'case':13s} {'this':>10s} {'other':>10s} {'this/other':>11s}")
        for case in cases:
            medians = compare(case, cold if case.endswith("-cold") else warm, args.rounds)
            this, other = medians["this"], medians["other"]
            print(f"  {case:13s} {this * 1000:8.1f}ms {other * 1000:8.1f}ms {this / other:9.2f}x", flush=True)
        breakdown(warm["this"], args.rounds)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
