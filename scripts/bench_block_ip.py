#!/usr/bin/env python3
"""Benchmark: `block-ip` and its no-op re-run over N lab hosts, side by side in one run, with the same
rule applied by Ansible (community.general.ufw + ansible.builtin.iptables, forks N, pipelining on),
by pyinfra, and by plain OpenSSH in parallel.

The rule on every host: a ufw deny from 203.0.113.77 at the top of the rules, and a DROP for it in
DOCKER-USER. Before each side the hosts are reset to the same start (ufw active with one allow rule,
no block); each side then runs twice: the change, then the re-run that should change nothing.
Reported: wall time of each run, in seconds, and the ratios the issue sets as targets:
block-ip <= 1.2x OpenSSH, faster than pyinfra, <= 1/4 of Ansible.

Ansible and pyinfra are installed into their own venv (default /var/lib/remediations-lab/bench-venv),
never into the project's dependencies.

Usage (root; starts the lab with N bench hosts if needed):
    .venv/bin/python scripts/bench_block_ip.py [--hosts 20] [--rounds 1]
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
OPENSSH_COMMAND = (
    f"{shlex.join(UFW_DENY)} >/dev/null && "
    f"{{ iptables -w 10 -C DOCKER-USER {shlex.join(DOCKER_SPEC)} 2>/dev/null || "
    f"iptables -w 10 -I DOCKER-USER 1 {shlex.join(DOCKER_SPEC)}; }}"
)
RESET_SCRIPT = f"""
ufw delete deny from {BLOCKED} >/dev/null
while iptables -w 10 -D DOCKER-USER {shlex.join(DOCKER_SPEC)} 2>/dev/null; do :; done
rm -f {shlex.quote(fwfacts.DEFAULT_STATE_DIR)}/{fwfacts.STATE_FILE_NAME}
ufw allow 22/tcp >/dev/null
iptables -w 10 -n -L ufw-user-input >/dev/null 2>&1 || ufw --force enable >/dev/null
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


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, check=False)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        output = done.stdout.decode()
        try:  # our own --json: name the hosts that failed and why, not the tail of the JSON
            failed = [f"{h['host']}: {h['message']}" for h in json.loads(output)["hosts"]
                      if h["status"] == "failed"]  # fmt: skip
            output = "\n".join(failed) or output[-1500:]
        except (ValueError, KeyError, TypeError):
            output = output[-1500:]
        sys.exit(
            f"benchmark command failed ({done.returncode}): {shlex.join(argv)[:300]}\n"
            f"{output}\n{done.stderr.decode()[-1500:]}"
        )
    return wall


def reset(hosts: list[inventory.Host]) -> None:
    for host in hosts:
        lab.exec_on(host.name, ["sh", "-c", RESET_SCRIPT])


def write_side_files(work: Path, hosts: list[inventory.Host]) -> None:
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
        f"[defaults]\nforks = {len(hosts)}\nhost_key_checking = True\nstdout_callback = default\n"
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
    ufw = shlex.join(UFW_DENY)
    docker = OPENSSH_COMMAND.split(" && ", 1)[1]
    (work / "pyinfra_deploy.py").write_text(
        "from pyinfra.operations import server\n\n"
        f"server.shell(name='deny the source above the allow rules', commands=[{ufw!r}])\n"
        f"server.shell(name='and in DOCKER-USER', commands=[{docker!r}])\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every side this many times; medians")
    args = parser.parse_args()

    venv = ensure_bench_venv()
    lab.up(extra_api_hosts=args.hosts)
    inv = inventory.load(lab.BENCH_INVENTORY)
    hosts = inv.select("bench")[: args.hosts]
    n = len(hosts)
    pattern = ",".join(h.name for h in hosts)
    work = Path(tempfile.mkdtemp(prefix="bench-block-ip-"))
    write_side_files(work, hosts)
    env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(work / "audit.jsonl")}
    tool_env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "PATH": f"{venv}:{os.environ['PATH']}",
    }

    ours = [sys.executable, "-m", "invoke", "block-ip", "--host", pattern, "--ip", BLOCKED, "--json",
            "--parallel", str(n), "--inventory", str(lab.BENCH_INVENTORY)]  # fmt: skip
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={lab.KNOWN_HOSTS}", "-i", str(lab.SSH_KEY), "-l", "root"]  # fmt: skip
    addresses = " ".join(shlex.quote(h.address) for h in hosts)
    openssh = ["sh", "-c", f"printf '%s\\n' {addresses} | xargs -P {n} -I{{}} "
               f"{shlex.join(ssh)} {{}} {shlex.quote(OPENSSH_COMMAND)} >/dev/null"]  # fmt: skip
    ansible = [str(venv / "ansible-playbook"), "-i", str(work / "hosts.ini"), str(work / "playbook.yml")]
    pyinfra = [str(venv / "pyinfra"), "-y", "--parallel", str(n), str(work / "pyinfra_inventory.py"),
               str(work / "pyinfra_deploy.py")]  # fmt: skip

    sides: list[tuple[str, Callable[[], float]]] = [
        ("OpenSSH xargs -P", lambda: timed(openssh)),
        ("inv block-ip", lambda: timed(ours, env, ROOT)),
        ("pyinfra", lambda: timed(pyinfra, tool_env, work)),
        (f"ansible-playbook (forks {n}, pipelining)", lambda: timed(ansible, tool_env, work)),
    ]
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in sides}
    for _ in range(args.rounds):
        for name, run in sides:
            reset(hosts)
            results[name][0].append(run())
            results[name][1].append(run())
    reset(hosts)
    for host in hosts:  # leave the bench hosts as the lab made them
        lab.exec_on(
            host.name,
            ["sh", "-c", "ufw --force disable >/dev/null; ufw --force delete allow 22/tcp >/dev/null"],
        )

    def med(name: str, i: int) -> float:
        return statistics.median(results[name][i])

    print(f"block-ip over {n} lab hosts, {args.rounds} round(s), wall seconds (medians)")
    print(f"{'side':40} {'change':>8} {'re-run':>8}")
    for name, _ in sides:
        print(f"{name:40} {med(name, 0):8.2f} {med(name, 1):8.2f}")
    me, base = "inv block-ip", "OpenSSH xargs -P"
    for i, label in ((0, "change"), (1, "re-run")):
        print(
            f"{label}: block-ip/OpenSSH {med(me, i) / med(base, i):.2f} (target <= 1.2), "
            f"block-ip/pyinfra {med(me, i) / med('pyinfra', i):.2f} (target < 1), "
            f"block-ip/Ansible {med(me, i) / med(sides[3][0], i):.2f} (target <= 0.25)"
        )


if __name__ == "__main__":
    main()
