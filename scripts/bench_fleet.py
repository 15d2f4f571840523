#!/usr/bin/env python3
"""Benchmark: a no-op ensure over the lab's sshd-only fleet (1,000 hosts, --parallel 100), side by side
in one run with pyinfra and plain OpenSSH at the same parallelism; rounds interleaved, medians.

Sides (every host already blocked, so each side changes nothing):
  OpenSSH   `xargs -P P ssh HOST 'grep -q ... /etc/ufw/user.rules || ufw prepend deny ...'`
  pyinfra   `pyinfra --parallel P` running the same guarded ufw deny (server.shell)
  block-ip  `inv block-ip --ip 203.0.113.77 --parallel P --json` (the re-run: "already blocked")
  list-blocks `inv list-blocks --parallel P --json` (read-only; `restart-api --check` needs Docker,
            which fleet hosts do not run: the script shows what it says on one host)

For our two sides it also reports the controller's peak RSS (wait4's ru_maxrss), the most threads and
open file descriptors seen (sampling /proc/PID/status and /proc/PID/fd every 20 ms), and checks that
the --json output has every selected host's result, each "ok". Targets (issue 14): block-ip <= 1.0x
pyinfra and <= 0.5x OpenSSH, RSS <= 300 MB, threads bounded by the parallelism, no host lost.

Setup, not timed: the fleet is brought up (`lab.fleet`), fleet0001 is blocked by our own block-ip
(--enable), and its ufw files, state file and loaded iptables/ip6tables rules are copied to every
other host (iptables-restore in its namespace): the state block-ip leaves, without running ufw's
Python a thousand times. pyinfra is installed into its own venv (as scripts/bench_block_ip.py does).

Usage (root):
    .venv/bin/python scripts/bench_fleet.py [--hosts 1000] [--parallel 100] [--rounds 3] [--down]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import hosts as lab  # noqa: E402
from lab.base import fleet_host  # noqa: E402
from remediations.facts import firewall as fwfacts  # noqa: E402
from remediations.facts import ufw  # noqa: E402

BLOCKED = "203.0.113.77"
BENCH_VENV = lab.LAB_ROOT / "bench-venv"
UFW_DENY = ["ufw", "prepend", "deny", "from", BLOCKED, "comment", ufw.UFW_COMMENT]
GUARDED = f"grep -qF {shlex.quote(BLOCKED)} /etc/ufw/user.rules || {shlex.join(UFW_DENY)} >/dev/null"


@dataclass
class Sample:
    wall: float
    rss_mb: float = 0.0
    threads: int = 0
    fds: int = 0
    hosts_ok: int = 0
    cpu: float = 0.0  # the side's own CPU seconds (wait4: the process and the children it waited for)
    machine_cpu: float = 0.0  # every core's busy seconds meanwhile: the hosts' sshd too (and any load)


def busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ensure_pyinfra() -> Path:
    python = BENCH_VENV / "bin" / "python"
    if not (BENCH_VENV / "bin" / "pyinfra").exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pyinfra"], check=True)
    return BENCH_VENV / "bin"


def _sampler(pid: int, into: Sample, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            threads = int(status.split("Threads:", 1)[1].split()[0])
            into.threads = max(into.threads, threads)
            into.fds = max(into.fds, len(os.listdir(f"/proc/{pid}/fd")))
        except (OSError, IndexError, ValueError):
            pass
        stop.wait(0.02)


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        expect: list[str] | None = None, status: str = "ok") -> Sample:  # fmt: skip
    """Run `argv`; with `expect` (host names) it is ours: sample it and check its --json."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read after the child ends
    t0, busy0 = time.monotonic(), busy_seconds()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE if expect else out,
                            env=env, cwd=cwd)  # fmt: skip
    sample, stop = Sample(0.0), threading.Event()
    watcher = threading.Thread(target=_sampler, args=(proc.pid, sample, stop), daemon=True)
    if expect:
        watcher.start()
    err = proc.stderr.read() if proc.stderr else b""
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    sample.wall = time.monotonic() - t0
    sample.machine_cpu = busy_seconds() - busy0
    sample.cpu = usage.ru_utime + usage.ru_stime
    stop.set()
    out.seek(0)
    output = out.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(argv)[:300]}\n{output[-2000:]}\n{err[-1500:]!r}")
    if expect:
        sample.rss_mb = usage.ru_maxrss / 1024
        results = {h["host"]: h for h in json.loads(output)["hosts"]}
        missing = sorted(set(expect) - results.keys())
        bad = [f"{n}: {h['status']} {h['message']}" for n, h in results.items() if h["status"] != status]
        if missing or bad or len(results) != len(expect):
            sys.exit(f"results lost or not {status}: {len(missing)} missing {missing[:5]}, {bad[:5]}")
        sample.hosts_ok = len(results)
    return sample


def exec_all(names: list[str], argv: list[str], workers: int = 16) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda n: lab.exec_on(n, argv, timeout=120), names))


def prepare(names: list[str], inventory: str, env: dict[str, str]) -> None:
    """Every host blocked: block-ip on the first, its state copied to the rest."""
    first = names[0]
    lab.exec_on(first, ["sh", "-c", "ufw --force reset >/dev/null; ufw allow 22/tcp >/dev/null"])
    run([sys.executable, "-m", "invoke", "block-ip", "--host", first, "--ip", BLOCKED, "--enable",
         "--json", "--inventory", inventory], env, ROOT, expect=[first], status="changed")  # fmt: skip
    template = fleet_host(1).dir
    rules = {
        tool: lab.exec_on(first, [f"{tool}-save"]).stdout for tool in ("iptables", "ip6tables")
    }
    state = template / "remediations" / fwfacts.STATE_FILE_NAME

    def clone(name: str) -> None:
        d = lab.LAB_ROOT / "hosts" / name
        shutil.copytree(template / "ufw", d / "ufw", symlinks=True, dirs_exist_ok=True)
        shutil.copy2(template / "default-ufw", d / "default-ufw")
        shutil.copy2(state, d / "remediations" / fwfacts.STATE_FILE_NAME)
        for tool, dump in rules.items():
            lab.exec_on(name, [f"{tool}-restore"], input=dump, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(clone, names[1:]))


def write_pyinfra(work: Path, addresses: list[str]) -> None:
    data = {
        "ssh_user": "root",
        "ssh_key": str(lab.SSH_KEY),
        "ssh_known_hosts_file": str(lab.KNOWN_HOSTS),
        "ssh_strict_host_key_checking": "yes",
    }
    (work / "inventory.py").write_text(f"fleet = [(h, {data!r}) for h in {addresses!r}]\n")
    (work / "deploy.py").write_text(
        "from pyinfra.operations import server\n\n"
        f"server.shell(name='deny the source above the allow rules', commands=[{GUARDED!r}])\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=0, help="fleet size to run (default: --hosts)")
    parser.add_argument("--down", action="store_true", help="remove the fleet at the end")
    parser.add_argument("--no-prepare", action="store_true", help="hosts are blocked already")
    args = parser.parse_args()
    n, p = args.hosts, args.parallel

    venv = ensure_pyinfra()
    t0 = time.monotonic()
    specs = lab.fleet(max(args.fleet, n))[:n]
    print(f"fleet of {max(args.fleet, n)} up in {time.monotonic() - t0:.1f}s", flush=True)
    names = [h.name for h in specs]
    inventory = str(lab.FLEET_INVENTORY)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(work / "audit.jsonl")}
    if not args.no_prepare:
        t0 = time.monotonic()
        prepare(names, inventory, env)
        print(f"{n} hosts blocked in {time.monotonic() - t0:.1f}s", flush=True)
    write_pyinfra(work, [h.address for h in specs])
    selection = "fleet" if args.fleet in (0, n) else ",".join(names)

    probe = subprocess.run([sys.executable, "-m", "invoke", "restart-api", "--check", "--host", names[0],
                            "--json", "--inventory", inventory], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=False)  # fmt: skip
    try:
        why = json.loads(probe.stdout)["hosts"][0]["message"]
    except (ValueError, KeyError, IndexError):
        why = (probe.stdout + probe.stderr).strip()[-300:]
    print(f"restart-api --check on {names[0]} (sshd only): exit {probe.returncode}: {why}", flush=True)

    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root"]  # fmt: skip
    (work / "addresses").write_text("".join(f"{h.address}\n" for h in specs))
    openssh = ["sh", "-c", f"xargs -P {p} -I{{}} {shlex.join(ssh)} {{}} {shlex.quote(GUARDED)} "
               f"<{shlex.quote(str(work / 'addresses'))} >/dev/null"]  # fmt: skip
    pyinfra = [str(venv / "pyinfra"), "-y", "--parallel", str(p), str(work / "inventory.py"),
               str(work / "deploy.py")]  # fmt: skip
    invoke = [sys.executable, "-m", "invoke"]
    flags = ["--host", selection, "--json", "--parallel", str(p), "--inventory", inventory]
    block = [*invoke, "block-ip", "--ip", BLOCKED, *flags]
    listing = [*invoke, "list-blocks", *flags]
    sides: list[tuple[str, Callable[[], Sample]]] = [
        (f"OpenSSH xargs -P {p}", lambda: run(openssh)),
        (f"pyinfra --parallel {p}", lambda: run(pyinfra, None, work)),
        ("inv block-ip (re-run)", lambda: run(block, env, ROOT, expect=names)),
        ("inv list-blocks", lambda: run(listing, env, ROOT, expect=names)),
    ]
    results: dict[str, list[Sample]] = {name: [] for name, _ in sides}
    for r in range(args.rounds):
        for name, side in sides:
            sample = side()
            results[name].append(sample)
            detail = (f", CPU {sample.cpu:.1f}s, all cores {sample.machine_cpu:.1f}s" +
                      (f", RSS {sample.rss_mb:.0f} MB, threads {sample.threads}, fds {sample.fds}, "
                       f"results {sample.hosts_ok}" if sample.hosts_ok else ""))  # fmt: skip
            print(f"round {r + 1} {name}: {sample.wall:.2f}s{detail}", flush=True)
    report(results, n, p, sides[0][0], sides[1][0])
    if args.down:
        lab.fleet(0)


def report(results: dict[str, list[Sample]], n: int, p: int, openssh: str, pyinfra: str) -> None:
    def med(name: str) -> float:
        return statistics.median(s.wall for s in results[name])

    load = os.getloadavg()[0]
    print(f"\nno-op over {n} fleet hosts, --parallel {p}, {len(results[openssh])} round(s) interleaved, "
          f"load {load:.1f}; wall seconds (median)")  # fmt: skip
    print(f"{'side':26} {'wall':>7} {'/pyinfra':>9} {'/OpenSSH':>9} {'CPU ms/host':>12} "
          f"{'all CPU ms/host':>16} {'RSS MB':>7} {'threads':>8} {'fds':>5} {'results':>8}")  # fmt: skip
    for name, samples in results.items():
        wall = med(name)
        cpu = statistics.median(s.cpu for s in samples) * 1000 / n
        machine = statistics.median(s.machine_cpu for s in samples) * 1000 / n
        extra = f"{cpu:12.1f} {machine:16.1f} "
        if samples[0].hosts_ok:
            extra += (f"{max(s.rss_mb for s in samples):7.0f} {max(s.threads for s in samples):8d} "
                     f"{max(s.fds for s in samples):5d} {min(s.hosts_ok for s in samples):8d}")  # fmt: skip
        print(f"{name:26} {wall:7.2f} {wall / med(pyinfra):9.2f} {wall / med(openssh):9.2f} {extra}")
    print("targets: block-ip <= 1.0x pyinfra, <= 0.5x OpenSSH; RSS <= 300 MB; threads bounded by "
          f"--parallel {p}; results = {n}")


if __name__ == "__main__":
    main()
