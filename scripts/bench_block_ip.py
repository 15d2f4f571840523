#!/usr/bin/env python3
"""Benchmark: `block-ip` and its no-op re-run over N lab hosts, side by side in one run, with the same
rule applied by pyinfra, by plain OpenSSH in parallel, and (with --ansible) by Ansible
(community.general.ufw + ansible.builtin.iptables, pipelining on), all at the same parallelism.

The rule on every host: a ufw deny from 203.0.113.77 at the top of the rules, and a DROP for it in
DOCKER-USER. pyinfra and OpenSSH run the same guarded shell: `grep` of ufw's rules file before
`ufw prepend`, `iptables -C` before `iptables -I` (so their re-run, like block-ip's, runs no ufw).
Before each side the hosts are reset to the same start (ufw active with one allow rule, no block);
each side then runs twice: the change, then the re-run that should change nothing. The sides take
turns round after round (A B C A B C ...); reported are medians of the wall time, the ratios
block-ip / pyinfra and block-ip / OpenSSH, and the controller's CPU time (user + sys of the whole
process, interpreter start included), peak RSS and peak thread count for block-ip and pyinfra.

Ansible and pyinfra are installed into their own venv (default /var/lib/remediations-lab/bench-venv),
never into the project's dependencies.

Usage (root; brings the lab up with N bench hosts, at most 99):
    .venv/bin/python scripts/bench_block_ip.py [--hosts 99] [--parallel 50] [--rounds 3] [--ansible]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import hosts as lab  # noqa: E402
from remediations.core import inventory  # noqa: E402
from remediations.facts import firewall as fwfacts  # noqa: E402
from remediations.facts import ufw  # noqa: E402
from remediations.firewall import params as fwargs  # noqa: E402

BLOCKED = "203.0.113.77"
BENCH_VENV = lab.LAB_ROOT / "bench-venv"
UFW_DENY = ["ufw", "prepend", "deny", "from", BLOCKED, "comment", ufw.UFW_COMMENT]
DOCKER_SPEC = fwfacts.docker_rule_spec(fwargs.parse_network(BLOCKED)[0], None, None)
# the tuple `ufw deny from BLOCKED` writes into user.rules: the guard before running ufw
UFW_TUPLE = f"### tuple ### deny any any 0.0.0.0/0 any {BLOCKED} in"
UFW_GUARDED = f"grep -qF -- {shlex.quote(UFW_TUPLE)} /etc/ufw/user.rules || {shlex.join(UFW_DENY)} >/dev/null"
DOCKER_GUARDED = (
    f"iptables -w 10 -C DOCKER-USER {shlex.join(DOCKER_SPEC)} 2>/dev/null || "
    f"iptables -w 10 -I DOCKER-USER 1 {shlex.join(DOCKER_SPEC)}"
)
OPENSSH_COMMAND = f"{{ {UFW_GUARDED}; }} && {{ {DOCKER_GUARDED}; }}"
SSH_TUPLE = "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in"
LEAVE_SCRIPT = "ufw --force disable >/dev/null; ufw --force delete allow 22/tcp >/dev/null; true"
RESET_SCRIPT = f"""
grep -qF -- {shlex.quote(UFW_TUPLE)} /etc/ufw/user.rules && ufw delete deny from {BLOCKED} >/dev/null
while iptables -w 10 -D DOCKER-USER {shlex.join(DOCKER_SPEC)} 2>/dev/null; do :; done
rm -f {shlex.quote(fwfacts.DEFAULT_STATE_DIR)}/{fwfacts.STATE_FILE_NAME}
grep -qF -- {shlex.quote(SSH_TUPLE)} /etc/ufw/user.rules || ufw allow 22/tcp >/dev/null
iptables -w 10 -n -L ufw-user-input >/dev/null 2>&1 || ufw --force enable >/dev/null
true
"""

PLAYBOOK = f"""
- hosts: bench
  gather_facts: false
  tasks:
    - name: deny the source above the allow rules
      community.general.ufw:
        rule: deny
        from_ip: {BLOCKED}
        insert: 1
        comment: {ufw.UFW_COMMENT}
    - name: and in DOCKER-USER (published ports bypass ufw)
      ansible.builtin.iptables:
        chain: DOCKER-USER
        source: {BLOCKED}
        jump: DROP
        action: insert
        rule_num: "1"
        comment: {fwfacts.DOCKER_COMMENT}
"""


def ensure_bench_venv() -> Path:
    """ansible and pyinfra in their own venv (created once, reused)."""
    python = BENCH_VENV / "bin" / "python"
    if (
        not (BENCH_VENV / "bin" / "ansible-playbook").exists()
        or not (BENCH_VENV / "bin" / "pyinfra").exists()
    ):
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "ansible", "pyinfra"], check=True)
    return BENCH_VENV / "bin"


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # user + sys seconds of the process (and the children it waited for)
    rss_mb: float  # peak resident set
    threads: int  # peak thread count of the process (0: not sampled)
    host_cpu: float = 0.0  # user + sys seconds the hosts spent on the run's SSH sessions


def sshd_listeners(hosts: list[inventory.Host]) -> list[int]:
    """The pid of each bench host's sshd listener (sshd names itself so in its process title)."""
    wanted = {f"/hosts/{h.name}/".encode() for h in hosts}
    found = []
    for entry in os.listdir("/proc"):
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if title.startswith(b"sshd: ") and b"[listener]" in title and any(w in title for w in wanted):
            found.append(int(entry))
    return found


def sessions_cpu(listeners: list[int]) -> float:
    """CPU seconds of every SSH session the listeners' hosts ran and ended so far: a session's sshd
    reaps what it started (the shell, its commands), the listener reaps the session, and the kernel
    adds each reaped child's time to its parent's cutime/cstime."""
    total = 0
    for pid in listeners:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16 and 17 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def timed(
    argv: list[str], env: dict[str, str] | None, cwd: Path | None, listeners: list[int]
) -> Sample:
    """Run `argv` to its end; its wall time, CPU time, peak RSS and peak thread count (os.wait4:
    the usage of that process and the children it waited for, nothing else)."""
    host_before = sessions_cpu(listeners)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        threads = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                text = Path(f"/proc/{proc.pid}/status").read_text()
                threads = max(threads, int(text.split("Threads:")[1].split()[0]))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        output = stdout.decode()
        try:  # our own --json: name the hosts that failed and why, not the tail of the JSON
            failed = [f"{h['host']}: {h['message']}" for h in json.loads(output)["hosts"]
                      if h["status"] == "failed"]  # fmt: skip
            output = "\n".join(failed) or output[-1500:]
        except (ValueError, KeyError, TypeError):
            output = output[-1500:]
        sys.exit(
            f"benchmark command failed ({proc.returncode}): {shlex.join(argv)[:300]}\n"
            f"{output}\n{stderr.decode()[-1500:]}"
        )
    time.sleep(0.2)  # the last sessions end on the hosts just after the client closed them
    host = sessions_cpu(listeners) - host_before
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, threads, host)


def reset(hosts: list[inventory.Host]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda h: lab.exec_on(h.name, ["sh", "-c", RESET_SCRIPT]), hosts))


def write_side_files(work: Path, hosts: list[inventory.Host], parallel: int) -> None:
    ssh_args = f"-o UserKnownHostsFile={lab.KNOWN_HOSTS} -o StrictHostKeyChecking=yes"
    lines = ["[bench]"] + [f"{h.name} ansible_host={h.address}" for h in hosts]
    lines += [
        "[bench:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={lab.SSH_KEY}",
        f"ansible_ssh_common_args='{ssh_args}'",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    (work / "hosts.ini").write_text("\n".join(lines) + "\n")
    (work / "ansible.cfg").write_text(
        f"[defaults]\nforks = {parallel}\nhost_key_checking = True\nstdout_callback = default\n"
        "[ssh_connection]\npipelining = True\n"
    )
    (work / "playbook.yml").write_text(PLAYBOOK)
    data = {
        "ssh_user": "root",
        "ssh_key": str(lab.SSH_KEY),
        "ssh_known_hosts_file": str(lab.KNOWN_HOSTS),
        "ssh_strict_host_key_checking": "yes",
    }
    (work / "pyinfra_inventory.py").write_text(
        f"bench = [(h, {data!r}) for h in {[h.address for h in hosts]!r}]\n"
    )
    (work / "pyinfra_deploy.py").write_text(
        "from pyinfra.operations import server\n\n"
        f"server.shell(name='deny the source above the allow rules', commands=[{UFW_GUARDED!r}])\n"
        f"server.shell(name='and in DOCKER-USER', commands=[{DOCKER_GUARDED!r}])\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=99, help="bench hosts (the lab makes at most 99)")
    parser.add_argument("--parallel", type=int, default=50, help="hosts at a time, the same for every side")
    parser.add_argument("--rounds", type=int, default=3, help="the sides take turns this many times; medians")
    parser.add_argument("--ansible", action="store_true", help="also Ansible (slow: about 10x the others)")
    parser.add_argument("--baseline", type=Path, help="also inv block-ip from this checkout (before/after)")
    args = parser.parse_args()

    venv = ensure_bench_venv()
    lab.up(extra_api_hosts=args.hosts)
    inv = inventory.load(lab.BENCH_INVENTORY)
    hosts = inv.select("bench")[: args.hosts]
    n, par = len(hosts), args.parallel
    pattern = ",".join(h.name for h in hosts)
    work = Path(tempfile.mkdtemp(prefix="bench-block-ip-"))
    write_side_files(work, hosts, par)
    # as an installed copy runs: with its bytecode cached (a test runner's PYTHONDONTWRITEBYTECODE
    # would make every run compile the package, about a quarter of a second of CPU)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = {**base_env, "REMEDIATIONS_AUDIT_LOG": str(work / "audit.jsonl")}
    tool_env = {**base_env, "ANSIBLE_CONFIG": str(work / "ansible.cfg"), "PATH": f"{venv}:{base_env['PATH']}"}

    ours = [sys.executable, "-m", "invoke", "block-ip", "--host", pattern, "--ip", BLOCKED, "--json",
            "--parallel", str(par), "--inventory", str(lab.BENCH_INVENTORY)]  # fmt: skip
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root"]  # fmt: skip
    addresses = " ".join(shlex.quote(h.address) for h in hosts)
    openssh = ["sh", "-c", f"printf '%s\\n' {addresses} | xargs -P {par} -I{{}} "
               f"{shlex.join(ssh)} {{}} {shlex.quote(OPENSSH_COMMAND)} >/dev/null"]  # fmt: skip
    ansible = [str(venv / "ansible-playbook"), "-i", str(work / "hosts.ini"), str(work / "playbook.yml")]
    pyinfra = [str(venv / "pyinfra"), "-y", "--parallel", str(par), str(work / "pyinfra_inventory.py"),
               str(work / "pyinfra_deploy.py")]  # fmt: skip

    me, anchor, base = "inv block-ip", "pyinfra", "OpenSSH xargs -P"
    listeners = sshd_listeners(hosts)
    assert len(listeners) == n, f"found {len(listeners)} sshd listeners for {n} bench hosts"
    sides: list[tuple[str, Callable[[], Sample]]] = [
        (me, lambda: timed(ours, env, ROOT, listeners)),
        (anchor, lambda: timed(pyinfra, tool_env, work, listeners)),
        (base, lambda: timed(openssh, None, None, listeners)),
    ]
    if args.baseline:
        old_env = {**env, "PYTHONPATH": str(args.baseline)}
        old_name = f"inv block-ip ({args.baseline.name})"
        sides.insert(1, (old_name, lambda: timed(ours, old_env, args.baseline, listeners)))
    if args.ansible:
        sides.append((f"ansible-playbook (forks {par})", lambda: timed(ansible, tool_env, work, listeners)))
    results: dict[str, tuple[list[Sample], list[Sample]]] = {name: ([], []) for name, _ in sides}
    started = time.monotonic()
    for done in range(1, args.rounds + 1):
        for name, run in sides:
            reset(hosts)
            results[name][0].append(run())
            results[name][1].append(run())
        if done < args.rounds:  # what is known so far, should the run be cut short
            report(results, n, par, done, time.monotonic() - started, me, anchor, base)
            print(flush=True)
    took = time.monotonic() - started
    reset(hosts)
    with ThreadPoolExecutor(max_workers=16) as pool:  # leave the bench hosts as the lab made them
        list(pool.map(lambda h: lab.exec_on(h.name, ["sh", "-c", LEAVE_SCRIPT]), hosts))
    report(results, n, par, args.rounds, took, me, anchor, base)


def report(results: dict[str, tuple[list[Sample], list[Sample]]], n: int, par: int, rounds: int,
           took: float, me: str, anchor: str, base: str) -> None:  # fmt: skip
    def med(name: str, i: int, what: str = "wall") -> float:
        return float(statistics.median(getattr(s, what) for s in results[name][i]))

    load = os.getloadavg()
    print(f"block-ip over {n} lab hosts, --parallel {par}, {rounds} interleaved round(s) in {took:.0f} s, "
          f"medians; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    print(f"{'side':26} {'change s':>9} {'re-run s':>9} {'controller CPU s':>17} {'hosts CPU s':>13} "
          f"{'RSS MiB':>8} {'threads':>8}")  # fmt: skip
    for name in results:
        cpu = f"{med(name, 0, 'cpu'):.2f} / {med(name, 1, 'cpu'):.2f}"
        host = f"{med(name, 0, 'host_cpu'):.2f} / {med(name, 1, 'host_cpu'):.2f}"
        rss = max(s.rss_mb for runs in results[name] for s in runs)
        threads = max(s.threads for runs in results[name] for s in runs)
        walls = f"{med(name, 0):9.2f} {med(name, 1):9.2f}"
        print(f"{name:26} {walls} {cpu:>17} {host:>13} {rss:8.0f} {threads:8d}")
    for i, label in ((0, "change"), (1, "re-run")):
        per_host = {name: (1000 * med(name, i, "cpu") / n, 1000 * med(name, i, "host_cpu") / n)
                    for name in (me, anchor)}  # fmt: skip
        print(f"{label}: block-ip/pyinfra {med(me, i) / med(anchor, i):.2f} (target <= 1.0), "
              f"block-ip/OpenSSH {med(me, i) / med(base, i):.2f}; CPU per host, controller + host: "
              f"block-ip {per_host[me][0]:.1f} + {per_host[me][1]:.1f} ms, "
              f"pyinfra {per_host[anchor][0]:.1f} + {per_host[anchor][1]:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
