"""What tests do to running hosts: run commands in them, stop or cut them."""

from __future__ import annotations

import signal
import subprocess
from typing import IO

from lab.base import BRIDGE, LabError, _env, _in_host, _is_ns_handle, _ns_argv, _run, _tcp_open, _wait_for
from lab.procs import _scan, _signal, _stop_pids
from lab.ssh import _sshd_listener, _sshd_pids, _start_sshd
from lab.state import _host, _require_root


def exec_on(
    host: str,
    argv: list[str],
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` inside ``host``'s network and mount namespaces, as root, from ``/``.

    Raises ``LabCommandError`` (a ``CalledProcessError``) on a non-zero exit when ``check``,
    ``LabTimeoutError`` (a ``TimeoutExpired``) after ``timeout`` seconds.
    """
    _require_root()
    spec = _host(host)
    if not (_is_ns_handle(spec.netns) and _is_ns_handle(spec.mntns)):
        raise LabError(f"lab host {host} is not up (python -m lab up)")
    return _in_host(spec, argv, input=input, check=check, timeout=timeout)


def popen_on(host: str, argv: list[str], stdout: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``host``'s namespaces (as ``exec_on`` runs it) and return at once: a
    long-running process of a test's own (a Prometheus on the host). Its environment carries the
    lab's marker, so ``python -m lab down`` stops it if the test could not; stderr goes with stdout."""
    _require_root()
    spec = _host(host)
    if not (_is_ns_handle(spec.netns) and _is_ns_handle(spec.mntns)):
        raise LabError(f"lab host {host} is not up (python -m lab up)")
    return subprocess.Popen(_ns_argv(spec, argv), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT, env=_env(host), cwd="/")  # fmt: skip


def stop_sshd(host: str) -> None:
    """Stop the host's sshd, its open sessions included: new SSH connections are refused."""
    _require_root()
    spec = _host(host)
    pids = set(_sshd_pids(spec))
    if pids:
        _stop_pids(pids, signal.SIGTERM, 5)
    _wait_for(f"{host}:22 to close", lambda: not _tcp_open(spec.address, 22, 0.3), 10)


def kill_ssh_sessions(host: str) -> int:
    """SIGKILL every SSH session on the host (its sshd keeps listening): the connections drop as if
    the link had reset. Returns how many session processes were killed."""
    _require_root()
    spec = _host(host)
    procs = _scan()
    listener = _sshd_listener(spec, procs)
    sessions = {pid for pid in _sshd_pids(spec, procs) if pid != listener}
    _signal(sessions, signal.SIGKILL)
    return len(sessions)


def cut_link(host: str) -> None:
    """Partition the host: its link to the bridge goes down, packets both ways are lost (no reset,
    no ICMP), as when a provider's network fails."""
    _require_root()
    _run(["ip", "link", "set", _host(host).veth, "down"])


def heal_link(host: str) -> None:
    """End a partition made by `cut_link`."""
    _require_root()
    spec = _host(host)
    _run(["ip", "link", "set", spec.veth, "master", BRIDGE, "up"])
    _wait_for(f"{host}:22 after the partition", lambda: _tcp_open(spec.address, 22, 0.5), 30)


def start_sshd(host: str) -> None:
    """Start the host's sshd again (no-op when it runs)."""
    _require_root()
    spec = _host(host)
    if not (_is_ns_handle(spec.netns) and _is_ns_handle(spec.mntns)):
        raise LabError(f"lab host {host} is not up (python -m lab up)")
    _start_sshd(spec)
