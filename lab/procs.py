"""Processes: find and stop what the lab started (daemons included)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.base import _MARKER_ENV, HostSpec, LabError, _is_ns_handle, _ns_id

# ---------------------------------------------------------------------------------------------
# Processes: find and stop what the lab started
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    comm: str
    state: str
    netns: tuple[int, int] | None
    mntns: tuple[int, int] | None
    cgroup: str
    marker: str | None



def _read_marker(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{_MARKER_ENV}=".encode()
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def _scan(with_marker: bool = False) -> list[_Proc]:
    procs: list[_Proc] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs.append(
            _Proc(
                pid=pid,
                ppid=int(fields[1]),
                comm=comm,
                state=fields[0],
                netns=_ns_id(f"/proc/{pid}/ns/net"),
                mntns=_ns_id(f"/proc/{pid}/ns/mnt"),
                cgroup=cgroup,
                marker=_read_marker(pid) if with_marker else None,
            )
        )
    return procs


def _protected_pids() -> set[int]:
    """This process and its ancestors: never killed, whatever they look like."""
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def _with_descendants(seeds: set[int], procs: Iterable[_Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    result, todo = set(seeds), list(seeds)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in result:
                result.add(child)
                todo.append(child)
    return result


def _host_procs(host: HostSpec, procs: list[_Proc], net_only: bool = False) -> list[_Proc]:
    """Processes inside the host's namespaces (``net_only``: its network namespace only)."""
    netns = _ns_id(host.netns) if _is_ns_handle(host.netns) else None
    mntns = _ns_id(host.mntns) if _is_ns_handle(host.mntns) else None
    if net_only:
        return [p for p in procs if netns is not None and p.netns == netns]
    cg = f"/{host.cgroup_parent}/"
    seeds = {
        p.pid
        for p in procs
        if (netns is not None and p.netns == netns)
        or (mntns is not None and p.mntns == mntns)
        or cg in p.cgroup
        or p.marker == host.name
    }
    pids = _with_descendants(seeds, procs) - _protected_pids()
    return [p for p in procs if p.pid in pids]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_pids(pids: set[int], sig: signal.Signals, grace: float) -> set[int]:
    """Send ``sig``, wait up to ``grace`` seconds; SIGKILL what is left. Returns survivors."""
    _signal(pids, sig)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {p for p in pids if _alive(p)}
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
    return {p for p in left if _alive(p)}


# Stopping a host's daemons, then the rest of its processes: here rather than in lab.docker and
# lab.postgres, which import this module, because lab.mounts stops a half-made host too.


def _stop_dockerd(host: HostSpec, timeout: float = 30) -> None:
    """SIGTERM dockerd and wait: it stops its containers (and containerd) before exiting."""
    pids = {p.pid for p in _host_procs(host, _scan(), net_only=True) if p.comm == "dockerd"}
    if pids:
        _stop_pids(pids, signal.SIGTERM, timeout)


def _stop_postgres(host: HostSpec, timeout: float = 20) -> None:
    """Fast shutdown (SIGINT to the postmaster), then wait for every backend to exit."""
    procs = _host_procs(host, _scan(), net_only=True)
    pg = {p.pid: p for p in procs if p.comm == "postgres"}
    postmasters = {pid for pid, p in pg.items() if p.ppid not in pg}
    if postmasters:
        _stop_pids(postmasters, signal.SIGINT, timeout)


def _stop_host_processes(host: HostSpec) -> None:
    _stop_dockerd(host)
    _stop_postgres(host)
    procs = _host_procs(host, _scan(with_marker=True))
    survivors = _stop_pids({p.pid for p in procs}, signal.SIGTERM, 3)
    if survivors:
        raise LabError(f"{host.name}: processes survive SIGKILL: {sorted(survivors)}")
