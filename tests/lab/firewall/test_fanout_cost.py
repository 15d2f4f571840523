"""What one host costs in a block-ip run, counted on a real lab host: the channels the controller
opens, the processes the host starts for the session (sshd's own included, traced from the host's
sshd), and the time the host's worker is held after its result is known.

These are the per-host costs that add up at 200 hosts: every process the host starts is about a
millisecond of CPU on the machine that also runs the controller, and every channel is a round trip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediations.core import connection, inventory
from remediations.core.engine import Engine
from remediations.core.inventory import Host
from remediations.core.options import RunOptions
from remediations.core.results import Status
from remediations.firewall.block_ip import BlockIp
from remediations.firewall.params import parse_network
from tests import labkit
from tests.lab.firewall.test_firewall import api1, saved_firewall  # noqa: F401 (fixtures)

pytestmark = pytest.mark.lab

BLOCKED = "203.0.113.61"


class CountingRemote(connection.SSHRemote):
    """An SSH connection that counts the channels it opens (the commands it starts on the host)."""

    opened: list[str]

    def _channel(self, command: str) -> Any:
        self.opened.append(command)
        return super()._channel(command)


def run_block_ip(channels: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Status:
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))

    def connect(host: Host, timeout: float) -> CountingRemote:
        remote = CountingRemote(host, timeout)
        remote.opened = channels
        remote.open()
        return remote

    inv = inventory.load(labkit.LAB_INVENTORY)
    engine = Engine(inv, RunOptions(), connect=connect)
    run = engine.run(BlockIp(ip=parse_network(BLOCKED)), [inv.hosts["api1"]])
    return run.hosts[0].status


def sshd_listener(host: str) -> int:
    """The pid of the lab host's own sshd: the listener (sshd names itself so in its title)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"sshd: ") and f"/hosts/{host}/".encode() in title and b"[listener]" in title:
            return int(entry)
    raise AssertionError(f"no sshd found for {host}")


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Path]:
    """Everything api1's sshd starts while the test runs (strace follows its forks)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace),
                               "-p", str(sshd_listener("api1"))])  # fmt: skip
    time.sleep(1)  # attached
    try:
        yield trace
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)


def programs(trace: Path, since: int = 0) -> list[str]:
    text = trace.read_bytes()[since:].decode(errors="replace")
    started = [line for line in text.splitlines() if "execve(" in line and "= 0" in line]
    return sorted(line.split('"')[1].rsplit("/", 1)[-1] for line in started)


@pytest.mark.usefixtures("api1")
def test_a_no_op_block_ip_is_one_channel_and_seven_processes_on_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, traced: Path
) -> None:
    """The change is two channels (the lock with the facts; the apply with its verification); the
    re-run is one, and the host starts only sshd, the login shell (bash, exec'ing sh), flock, awk
    (the files, and the source's flows counted in /proc/net/nf_conntrack: the conntrack tool where
    that file is not readable), iptables and the heartbeat's reader (bash, whose `read` times out by
    itself; timeout and dd, two processes per heartbeat, where the host has no bash). The old
    command started 31 (a cat per ufw file and app profile, date, dirname, mkdir, four iptables,
    wc, a second sh), and then conntrack, about ten times the CPU of that awk."""
    changed: list[str] = []
    assert run_block_ip(changed, monkeypatch, tmp_path) == Status.CHANGED
    assert len(changed) == 2
    time.sleep(0.5)
    since = traced.stat().st_size  # count the re-run only
    again: list[str] = []
    assert run_block_ip(again, monkeypatch, tmp_path) == Status.OK
    assert len(again) == 1
    time.sleep(0.5)
    started = programs(traced, since)
    assert "ufw" not in started and "cat" not in started
    # the flows: counted by the facts' one awk where the kernel's table is readable (one kernel)
    counter = [] if os.access("/proc/net/nf_conntrack", os.R_OK) else ["conntrack"]
    lease = ["bash"] if shutil.which("bash") else ["timeout", "dd"]  # bash's timed read (one process)
    expected = ["sshd", "bash", "sh", "flock", "awk", "iptables", *counter, *lease]
    assert started == sorted(expected), started


@pytest.mark.usefixtures("api1")
def test_a_block_ip_change_runs_ufw_once_and_the_state_write_starts_no_helpers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, traced: Path
) -> None:
    """The change: the lock with the facts, then one channel with `ufw prepend`, the DOCKER-USER
    rule, the checked state write and the facts again. ufw is the only Python started; the state
    write starts head, sha256sum, stat (none for a new file), sync, mv and sync, not the dirname,
    mkdir, rm, wc, tr, cut, a second stat and chmod it started before (every process about a
    millisecond of the host's CPU), and the lease no timeout or dd per heartbeat."""
    changed: list[str] = []
    assert run_block_ip(changed, monkeypatch, tmp_path) == Status.CHANGED
    assert len(changed) == 2
    time.sleep(0.5)
    started = programs(traced)
    assert started.count("ufw") == 1, started
    assert started.count("awk") == 2 and started.count("sha256sum") == 1, started  # facts twice, one write
    helpers = {"dirname", "wc", "tr", "cut", "chmod", "chown", "rm"}  # mkdir: where the folder is missing
    if shutil.which("bash"):
        helpers |= {"timeout", "dd"}
    assert not helpers & set(started), sorted(helpers & set(started))
