#!/usr/bin/env python3
"""Benchmark: a no-op ensure over the lab's sshd-only fleet (1,000 hosts, --parallel 100), side by side
in one run with pyinfra and plain OpenSSH at the same parallelism; rounds interleaved, medians.

Sides (every host already blocked, so each side changes nothing):
  OpenSSH   `xargs -P P ssh HOST 'grep -q ... /etc/ufw/user.rules || ufw prepend deny ...'`
  pyinfra   `pyinfra --parallel P` running the same guarded ufw deny (server.shell)
  block-ip  `inv block-ip --ip 203.0.113.77 --parallel P --json` (the re-run: "already blocked")
  list-blocks `inv list-blocks --parallel P --json` (read-only; `restart-api --check` needs Docker,
            which fleet hosts do not run: the script shows what it says on one host)
With --change, two more sides start from every host active but not blocked (the state is put back
before each of them): pyinfra's guarded deny and `inv block-ip`, each making the change on every host.
With --baseline DIR, the inv sides run a second time from another checkout (a copy of DIR's HEAD),
before/after in the same run.

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
        [--change] [--baseline /work/main]
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
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import hosts as lab  # noqa: E402
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
        try:  # ours: the hosts that failed, and why
            hosts = json.loads(output)["hosts"]
            output = "\n".join(f"{h['host']}: {h['status']}: {h['message']}" for h in hosts
                               if h["status"] not in (status, "ok"))[-3000:]  # fmt: skip
        except (ValueError, KeyError, TypeError):
            output = output[-2000:]
        sys.exit(f"failed ({proc.returncode}): {shlex.join(argv)[:300]}\n{output}\n{err[-1500:]!r}")
    if expect:
        sample.rss_mb = usage.ru_maxrss / 1024
        results = {h["host"]: h for h in json.loads(output)["hosts"]}
        missing = sorted(set(expect) - results.keys())
        bad = [f"{n}: {h['status']} {h['message']}" for n, h in results.items() if h["status"] != status]
        if missing or bad or len(results) != len(expect):
            sys.exit(f"results lost or not {status}: {len(missing)} missing {missing[:5]}, {bad[:5]}")
        sample.hosts_ok = len(results)
    return sample


@dataclass
class Template:
    """One host's firewall state, to copy to every other host: ufw's files, block-ip's state file
    (None: no state file) and the loaded iptables / ip6tables rules."""

    ufw: Path
    default_ufw: Path
    state: Path | None
    rules: dict[str, bytes]


def capture(name: str, into: Path) -> Template:
    d = lab.LAB_ROOT / "hosts" / name
    into.mkdir(parents=True)
    shutil.copytree(d / "ufw", into / "ufw", symlinks=True)
    shutil.copy2(d / "default-ufw", into / "default-ufw")
    state = d / "remediations" / fwfacts.STATE_FILE_NAME
    kept = None
    if state.exists():
        kept = into / fwfacts.STATE_FILE_NAME
        shutil.copy2(state, kept)
    rules = {tool: lab.exec_on(name, [f"{tool}-save"]).stdout for tool in ("iptables", "ip6tables")}
    return Template(into / "ufw", into / "default-ufw", kept, rules)


def put_back(names: list[str], template: Template) -> None:
    """Every host in `names` gets the template's state (16 at a time; not timed)."""

    def copy(name: str) -> None:
        d = lab.LAB_ROOT / "hosts" / name
        shutil.copytree(template.ufw, d / "ufw", symlinks=True, dirs_exist_ok=True)
        shutil.copy2(template.default_ufw, d / "default-ufw")
        state = d / "remediations" / fwfacts.STATE_FILE_NAME
        if template.state is None:
            state.unlink(missing_ok=True)
        else:
            shutil.copy2(template.state, state)
        for tool, dump in template.rules.items():
            lab.exec_on(name, [f"{tool}-restore"], input=dump, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(copy, names))


def prepare(names: list[str], inventory: str, env: dict[str, str], work: Path) -> tuple[Template, Template]:
    """Every host blocked: ufw enabled and block-ip run on the first, its state copied to the rest.
    Returns the two states: active and not blocked, blocked."""
    first = names[0]
    lab.exec_on(first, ["sh", "-c", "ufw --force reset >/dev/null; ufw allow 22/tcp >/dev/null; "
                        f"ufw --force enable >/dev/null; rm -f {fwfacts.DEFAULT_STATE_DIR}/"
                        f"{fwfacts.STATE_FILE_NAME}"])  # fmt: skip
    unblocked = capture(first, work / "unblocked")
    run([sys.executable, "-m", "invoke", "block-ip", "--host", first, "--ip", BLOCKED,
         "--json", "--inventory", inventory], env, ROOT, expect=[first], status="changed")  # fmt: skip
    blocked = capture(first, work / "blocked")
    put_back(names[1:], blocked)
    return unblocked, blocked


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


Side = tuple[str, Callable[[], None] | None, Callable[[], Sample]]  # name, untimed setup, the timed run


def baseline_copy(checkout: Path, work: Path) -> Path:
    """A copy of `checkout`'s HEAD (git archive): the checkout may change while the benchmark runs."""
    into = work / f"baseline-{checkout.name}"
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def sides_of(args: argparse.Namespace, names: list[str], work: Path, env: dict[str, str],
             states: tuple[Template, Template] | None) -> list[Side]:  # fmt: skip
    p, inventory = args.parallel, str(lab.FLEET_INVENTORY)
    selection = "fleet" if args.fleet in (0, args.hosts) else ",".join(names)
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root"]  # fmt: skip
    openssh = ["sh", "-c", f"xargs -P {p} -I{{}} {shlex.join(ssh)} {{}} {shlex.quote(GUARDED)} "
               f"<{shlex.quote(str(work / 'addresses'))} >/dev/null"]  # fmt: skip
    pyinfra = [str(ensure_pyinfra() / "pyinfra"), "-y", "--parallel", str(p), str(work / "inventory.py"),
               str(work / "deploy.py")]  # fmt: skip
    flags = ["--host", selection, "--json", "--parallel", str(p), "--inventory", inventory]
    block = [sys.executable, "-m", "invoke", "block-ip", "--ip", BLOCKED, *flags]
    listing = [sys.executable, "-m", "invoke", "list-blocks", *flags]
    checkouts = [("", ROOT)]
    if args.baseline:
        checkouts.append((f" ({args.baseline.name})", baseline_copy(args.baseline, work)))
    unblock = blocked = None
    if states is not None:
        unblock, blocked = (lambda t=t: put_back(names, t) for t in states)
    sides: list[Side] = [
        (f"OpenSSH xargs -P {p}", blocked, lambda: run(openssh)),
        (f"pyinfra --parallel {p}", blocked if args.no_openssh else None, lambda: run(pyinfra, None, work)),
    ]
    if args.no_openssh:
        del sides[0]
    for label, tree in checkouts:
        tree_env = {**env, "PYTHONPATH": str(tree)}
        sides.append((f"inv block-ip (re-run){label}", None, partial(run, block, tree_env, tree, names)))
    sides.append(("inv list-blocks", None, lambda: run(listing, env, ROOT, expect=names)))
    if args.change:
        sides.append((f"pyinfra --parallel {p} (change)", unblock, lambda: run(pyinfra, None, work)))
        for label, tree in checkouts:
            tree_env = {**env, "PYTHONPATH": str(tree)}
            change = partial(run, block, tree_env, tree, names, "changed")
            sides.append((f"inv block-ip (change){label}", unblock, change))
    return sides


def probe_restart_check(name: str, inventory: str, env: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-m", "invoke", "restart-api", "--check", "--host", name,
                            "--json", "--inventory", inventory], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=False)  # fmt: skip
    try:
        why = json.loads(probe.stdout)["hosts"][0]["message"]
    except (ValueError, KeyError, IndexError):
        why = (probe.stdout + probe.stderr).strip()[-300:]
    print(f"restart-api --check on {name} (sshd only): exit {probe.returncode}: {why}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=0, help="fleet size to run (default: --hosts)")
    parser.add_argument("--down", action="store_true", help="remove the fleet at the end")
    parser.add_argument("--no-prepare", action="store_true", help="hosts are blocked already")
    parser.add_argument("--change", action="store_true", help="also the change: block-ip and pyinfra")
    parser.add_argument("--baseline", type=Path, help="also the inv sides of this checkout's HEAD")
    parser.add_argument("--no-openssh", action="store_true", help="leave the (slow) OpenSSH side out")
    args = parser.parse_args()
    if args.change and args.no_prepare:
        parser.error("--change needs the setup (it puts the hosts' state back before each change)")
    n, p = args.hosts, args.parallel

    ensure_pyinfra()
    t0 = time.monotonic()
    specs = lab.fleet(max(args.fleet, n))[:n]
    print(f"fleet of {max(args.fleet, n)} up in {time.monotonic() - t0:.1f}s", flush=True)
    names = [h.name for h in specs]
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(work / "audit.jsonl")}
    states = None
    if not args.no_prepare:
        t0 = time.monotonic()
        states = prepare(names, str(lab.FLEET_INVENTORY), env, work)
        print(f"{n} hosts blocked in {time.monotonic() - t0:.1f}s", flush=True)
    write_pyinfra(work, [h.address for h in specs])
    (work / "addresses").write_text("".join(f"{h.address}\n" for h in specs))
    probe_restart_check(names[0], str(lab.FLEET_INVENTORY), env)
    sides = sides_of(args, names, work, env, states)
    results: dict[str, list[Sample]] = {name: [] for name, _, _ in sides}
    for r in range(args.rounds):
        for name, setup, side in sides:
            if setup is not None:
                setup()
            sample = side()
            results[name].append(sample)
            detail = (f", CPU {sample.cpu:.1f}s, all cores {sample.machine_cpu:.1f}s" +
                      (f", RSS {sample.rss_mb:.0f} MB, threads {sample.threads}, fds {sample.fds}, "
                       f"results {sample.hosts_ok}" if sample.hosts_ok else ""))  # fmt: skip
            print(f"round {r + 1} {name}: {sample.wall:.2f}s{detail}", flush=True)
    openssh = f"OpenSSH xargs -P {p}"
    report(results, n, p, openssh if openssh in results else None, f"pyinfra --parallel {p}")
    if args.down:
        lab.fleet(0)


def report(results: dict[str, list[Sample]], n: int, p: int, openssh: str | None, pyinfra: str) -> None:
    def med(name: str) -> float:
        return statistics.median(s.wall for s in results[name])

    load = os.getloadavg()[0]
    print(f"\nno-op over {n} fleet hosts, --parallel {p}, {len(results[pyinfra])} round(s) interleaved, "
          f"load {load:.1f}; wall seconds (median)")  # fmt: skip
    print(f"{'side':34} {'wall':>7} {'/pyinfra':>9} {'/OpenSSH':>9} {'CPU ms/host':>12} "
          f"{'all CPU ms/host':>16} {'RSS MB':>7} {'threads':>8} {'fds':>5} {'results':>8}")  # fmt: skip
    for name, samples in results.items():
        wall = med(name)
        cpu = statistics.median(s.cpu for s in samples) * 1000 / n
        machine = statistics.median(s.machine_cpu for s in samples) * 1000 / n
        extra = f"{cpu:12.1f} {machine:16.1f} "
        if samples[0].hosts_ok:
            extra += (f"{max(s.rss_mb for s in samples):7.0f} {max(s.threads for s in samples):8d} "
                     f"{max(s.fds for s in samples):5d} {min(s.hosts_ok for s in samples):8d}")  # fmt: skip
        anchor = f"{pyinfra} (change)" if "(change)" in name else pyinfra
        to_openssh = f"{wall / med(openssh):9.2f}" if openssh else f"{'':9}"
        print(f"{name:34} {wall:7.2f} {wall / med(anchor):9.2f} {to_openssh} {extra}")
    loads = " ".join(f"{v:.1f}" for v in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"a change side's /pyinfra is to pyinfra's change; load average now {loads}, {when}")
    print("targets: block-ip <= 1.0x pyinfra, <= 0.5x OpenSSH; RSS <= 300 MB; threads bounded by "
          f"--parallel {p}; results = {n}")


if __name__ == "__main__":
    main()
