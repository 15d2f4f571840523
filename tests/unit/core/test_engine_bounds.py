"""The engine's bounds at scale: threads bounded by --parallel (never one per host), nothing left
open per host after it is done (a failed SSH connect included), every host's result kept.

The SSH side is a real SSH server on loopback (paramiko's server mode, whose host key the client
does not know), reached by the engine's real `connection.connect`: the refused host key is the
failure a fleet with a stale known_hosts file shows on every host.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import paramiko
import pytest

from remediations.core import inventory
from remediations.core.context import HostContext
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from tests import labkit

SLACK = 8  # the main thread, pytest's, a cancelled watchdog timer still exiting, the test server's


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


class CountThreads(Remediation):
    """Read-only: records the process's thread count on every host, then has nothing to do."""

    task: ClassVar[str] = "count-threads"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False
    seen: ClassVar[list[int]] = []

    def gather(self, ctx: HostContext) -> None:
        with ctx.step("facts") as step:
            ctx.remote.run("true")
            CountThreads.seen.append(threading.active_count())
            step.done(Status.OK, "counted")

    def decide(self, ctx: HostContext, facts: Any) -> Plan:
        return Plan.nothing("nothing to do")


def _client_transports() -> list[paramiko.Transport]:
    return [t for t in threading.enumerate() if isinstance(t, paramiko.Transport) and not t.server_mode]


def test_threads_are_bounded_by_parallel_over_many_local_hosts(tmp_path: Path) -> None:
    hosts = {f"h{i:03d}": {} for i in range(1, 301)}
    inv = inventory.load(labkit.write_local_inventory(tmp_path, hosts))
    CountThreads.seen.clear()
    before = threading.active_count()
    run = Engine(inv, RunOptions(parallel=10)).run(CountThreads(), inv.select("all"))
    assert sorted(h.host for h in run.hosts) == sorted(hosts)  # every host's result, none twice
    assert {h.status for h in run.hosts} == {Status.OK}
    assert len(CountThreads.seen) == 300
    assert max(CountThreads.seen) <= before + 10 + SLACK
    assert threading.active_count() <= before + 1  # the pool is gone when the run returns


@pytest.fixture
def unknown_key_server() -> Iterator[tuple[int, list[paramiko.Transport]]]:
    """An SSH server on 127.0.0.1 whose host key no known_hosts file holds."""
    key = paramiko.RSAKey.generate(2048)
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[paramiko.Transport] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(key)
            served.append(transport)
            try:
                transport.start_server(server=paramiko.ServerInterface())
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], served
    finally:
        stop.set()
        listener.close()
        for transport in served:
            transport.close()
        thread.join(timeout=5)


def test_a_refused_host_key_leaves_no_connection_open(
    tmp_path: Path, unknown_key_server: tuple[int, list[paramiko.Transport]]
) -> None:
    port, served = unknown_key_server
    known = tmp_path / "known_hosts"
    known.write_text("")
    common = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
    hosts = {f"n{i:02d}": {"ansible_host": "127.0.0.1", "ansible_port": port} for i in range(1, 41)}
    path = tmp_path / "inventory.yml"
    path.write_text(
        inventory_yaml(hosts, {"ansible_user": "root", "ansible_ssh_common_args": common})
    )
    inv = inventory.load(path)
    fds_before = len(os.listdir("/proc/self/fd"))
    run = Engine(inv, RunOptions(parallel=5, connect_timeout=10)).run(CountThreads(), inv.select("all"))
    assert sorted(h.host for h in run.hosts) == sorted(hosts)
    assert all(h.status == Status.FAILED and "is not in" in h.message for h in run.hosts), [
        h.message for h in run.hosts[:3]
    ]
    assert len(served) == 40
    # Every failed connect closed its transport: no thread and no socket per host stays behind (a
    # closed transport's thread ends on its own a moment later).
    deadline = time.monotonic() + 5
    while _client_transports() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _client_transports() == []
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


def inventory_yaml(hosts: dict[str, dict[str, Any]], all_vars: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump({"all": {"vars": all_vars, "hosts": hosts}})


def test_a_known_hosts_file_is_parsed_once_per_run_not_once_per_host(
    tmp_path: Path, unknown_key_server: tuple[int, list[paramiko.Transport]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet's known_hosts has a line per host: parsing it for every connection is quadratic
    (at 1,000 hosts, minutes of one core under the GIL before the first command)."""
    port, _ = unknown_key_server
    other = paramiko.RSAKey.generate(1024).get_base64()
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"198.18.20.{i} ssh-rsa {other}\n" for i in range(1, 201)))
    loads: list[str] = []
    original = paramiko.HostKeys.load

    def counting(self: paramiko.HostKeys, filename: str) -> None:
        loads.append(filename)
        original(self, filename)

    monkeypatch.setattr(paramiko.HostKeys, "load", counting)
    common = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
    hosts = {f"k{i:02d}": {"ansible_host": "127.0.0.1", "ansible_port": port} for i in range(1, 31)}
    path = tmp_path / "inventory.yml"
    path.write_text(inventory_yaml(hosts, {"ansible_user": "root", "ansible_ssh_common_args": common}))
    inv = inventory.load(path)
    run = Engine(inv, RunOptions(parallel=5, connect_timeout=10)).run(CountThreads(), inv.select("all"))
    assert len(run.hosts) == 30 and all("is not in" in h.message for h in run.hosts)
    assert loads == [str(known)]
