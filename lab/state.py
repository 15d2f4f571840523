"""State: which hosts the lab has, the lab lock, root."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lab.base import (
    _BENCH_RE,
    _FLEET_RE,
    _LOCK_FILE,
    _MNT_DIR,
    _NETNS_DIR,
    _STATE_FILE,
    _UTS_DIR,
    DEFAULT_HOSTS,
    LAB_ROOT,
    SYSTEMD_HOST,
    HostSpec,
    LabError,
    _write_if_changed,
    bench_host,
    fleet_host,
)

# ---------------------------------------------------------------------------------------------
# State: which hosts the lab has
# ---------------------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bridges, sshd, dockerd); use sudo")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    with _LOCK_FILE.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _spec_from_dict(data: dict[str, Any]) -> HostSpec:
    return HostSpec(str(data["name"]), str(data["address"]), tuple(data["roles"]))


def _saved_hosts() -> list[HostSpec]:
    try:
        data = json.loads(_STATE_FILE.read_text())
        return [_spec_from_dict(h) for h in data["hosts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _save_hosts(hosts: Sequence[HostSpec]) -> None:
    data = {"hosts": [dataclasses.asdict(h) for h in hosts]}
    _write_if_changed(_STATE_FILE, json.dumps(data, indent=2).encode())


def _current_hosts() -> list[HostSpec]:
    """The hosts of the lab as last built (the default hosts if never built)."""
    return _saved_hosts() or list(DEFAULT_HOSTS)


def _host(name: str) -> HostSpec:
    for spec in (*_current_hosts(), *DEFAULT_HOSTS):
        if spec.name == name:
            return spec
    match = _BENCH_RE.match(name)
    if match:
        return bench_host(int(match.group(1)))
    match = _FLEET_RE.match(name)
    if match and int(match.group(1)) >= 1:
        return fleet_host(int(match.group(1)))
    raise LabError(f"unknown lab host {name!r}")


def _discovered_hosts() -> list[HostSpec]:
    """Hosts that may exist from a crashed run: saved, default, or found by their handles. Fleet
    hosts are not among them: lab.fleet keeps those (an ``up`` never removes the fleet), nor is the
    systemd host (lab.systemd)."""
    names: dict[str, HostSpec] = {h.name: h for h in (*_saved_hosts(), *DEFAULT_HOSTS)}
    found: set[str] = set()
    for folder in (_NETNS_DIR, _MNT_DIR, _UTS_DIR):
        with contextlib.suppress(OSError):
            found.update(p.name for p in folder.iterdir())
    with contextlib.suppress(OSError):
        found.update(p.name[4:] for p in Path("/sys/class/net").iterdir() if p.name[:4] == "rmv-")
    for name in sorted(found - names.keys()):
        if _FLEET_RE.match(name) or name == SYSTEMD_HOST.name:
            continue  # lab.fleet and lab.systemd keep their own hosts
        match = _BENCH_RE.match(name)
        if match:
            names[name] = bench_host(int(match.group(1)))
        elif (_MNT_DIR / name).exists() or Path(f"/sys/class/net/rmv-{name}").exists():
            names[name] = HostSpec(name, "0.0.0.0", ())  # noqa: S104 - unknown leftover
    return list(names.values())
