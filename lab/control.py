"""Bring the lab up, tear it down, report its status; the bench inventory."""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from lab import systemd as _systemd
from lab.base import (
    _BENCH_RE,
    _MNT_DIR,
    _RUN_ROOT,
    _STATE_FILE,
    _UTS_DIR,
    API_SERVICE,
    BENCH_INVENTORY,
    BRIDGE,
    COMPOSE_DIR,
    COMPOSE_PROJECT,
    KNOWN_HOSTS,
    LAB_ROOT,
    PG_PORT,
    ROLE_DOCKER,
    ROLE_POSTGRES,
    SSH_KEY,
    HostSpec,
    HostStatus,
    LabStatus,
    _is_ns_handle,
    _parallel,
    _run,
    _tcp_open,
    _write_if_changed,
    lab_hosts,
    log,
)
from lab.clients import _remove_clients
from lab.docker import _build_busybox_image, _docker_answers, _ensure_dockerd, _ensure_image, _ensure_shop
from lab.fleet import fleet as _fleet
from lab.fleet import fleet_status as fleet_status
from lab.fleet import remove_all as _remove_fleet
from lab.fleet import saved_fleet
from lab.mounts import (
    _ensure_mnt_dir,
    _ensure_mntns,
    _ensure_state_mount,
    _ensure_utsns,
    _mountinfo_has,
    _prepare_host_dirs,
    _remove_mntns,
    _remove_utsns,
)
from lab.net import _ensure_bridge, _ensure_host_net, _link_exists, _remove_bridge, _remove_host_net
from lab.postgres import _ensure_postgres
from lab.procs import (
    _host_procs,
    _Proc,
    _protected_pids,
    _scan,
    _stop_host_processes,
    _stop_pids,
    _with_descendants,
)
from lab.s3 import _moto_answers, _moto_pid, _start_moto, _stop_moto, _wait_moto
from lab.ssh import _ensure_client_key, _ensure_sshd_files, _start_sshd, _write_known_hosts
from lab.state import _current_hosts, _discovered_hosts, _locked, _require_root, _save_hosts

# ---------------------------------------------------------------------------------------------
# Hosts: bring up, tear down
# ---------------------------------------------------------------------------------------------


def _ensure_host(host: HostSpec, image_id: str | None) -> None:
    t0 = time.monotonic()
    _prepare_host_dirs(host)
    _ensure_sshd_files(host)
    _ensure_host_net(host)
    _ensure_utsns(host)
    _ensure_mntns(host)
    _ensure_state_mount(host)
    _start_sshd(host)
    if host.has(ROLE_DOCKER):
        assert image_id is not None
        _ensure_dockerd(host)
        _ensure_image(host, image_id)
        _ensure_shop(host)
    if host.has(ROLE_POSTGRES):
        _ensure_postgres(host)
    log.debug("%s ready in %.1fs", host.name, time.monotonic() - t0)


def _remove_cgroups(name: str) -> None:
    """Remove the (empty) cgroups that the host's dockerd made for its containers."""
    root = Path("/sys/fs/cgroup")
    candidates = [root / name, *(p / name for p in root.iterdir() if p.is_dir())]
    for top in candidates:
        if not top.is_dir():
            continue
        for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _teardown_host(host: HostSpec) -> None:
    _stop_host_processes(host)
    _remove_mntns(host)
    _remove_utsns(host)
    _remove_host_net(host)
    with contextlib.suppress(OSError):
        _remove_cgroups(host.cgroup_parent)


def _sweep_marked_processes() -> None:
    """Kill any process the lab started that escaped its host (e.g. after a crash)."""
    procs = _scan(with_marker=True)
    seeds = {p.pid for p in procs if p.marker is not None or "/rmlab-" in p.cgroup}
    pids = _with_descendants(seeds, procs) - _protected_pids()
    if pids:
        log.warning("killing %d stray lab processes: %s", len(pids), sorted(pids))
        _stop_pids(pids, signal.SIGTERM, 3)


# ---------------------------------------------------------------------------------------------
# Inventories
# ---------------------------------------------------------------------------------------------


def inventory_vars() -> dict[str, Any]:
    """The ``all: vars:`` of the lab inventories (same as inventories/lab.yml)."""
    return {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(SSH_KEY),
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=yes"
        ),
        "compose_project_dir": COMPOSE_DIR,
        "compose_project_name": COMPOSE_PROJECT,
        "compose_files": ["compose.yaml"],
        "api_service": API_SERVICE,
        "api_health_url": "http://127.0.0.1:8080/health",
        "health_timeout": 30,
        "stop_timeout": 2,
    }


def _bench_inventory(hosts: Sequence[HostSpec]) -> str:
    def group(members: Iterable[HostSpec]) -> dict[str, Any]:
        return {"hosts": {h.name: {"ansible_host": h.address} for h in members}}

    api = [h for h in hosts if h.has(ROLE_DOCKER)]
    bench = [h for h in api if _BENCH_RE.match(h.name)]
    data = {
        "all": {
            "vars": inventory_vars(),
            "children": {"api": group(api), "bench": group(bench)},
        }
    }
    header = "# Generated by python -m lab up --extra-api-hosts: every api host of the lab.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def up(
    extra_api_hosts: int | None = None, fleet: int | None = None, systemd: bool | None = None
) -> LabStatus:
    """Build the lab, or repair it to its baseline; idempotent. Returns ``status()``.

    ``extra_api_hosts`` bench hosts are added (or removed down to that number); ``None`` keeps the
    bench hosts that run now, so a test session starting the lab does not pull them from under a
    benchmark. ``fleet``: run that many sshd-only fleet hosts (lab.fleet); ``None`` leaves the
    fleet as it is, untouched. ``systemd``: True boots the systemd host svc1 (lab.systemd; the tree is
    made by debootstrap the first time), False removes it, None leaves it as it is.
    """
    _require_root()
    with _locked():
        if extra_api_hosts is None:
            extra_api_hosts = sum(1 for h in _discovered_hosts() if _BENCH_RE.match(h.name))
        hosts = lab_hosts(extra_api_hosts)
        t0 = time.monotonic()
        wanted = {h.name for h in hosts}
        surplus = [h for h in _discovered_hosts() if h.name not in wanted]
        _parallel(_teardown_host, surplus, "removing surplus hosts")
        _save_hosts(hosts)
        _ensure_bridge()
        _ensure_mnt_dir()
        _ensure_client_key()
        _start_moto()
        image_id = _build_busybox_image() if any(h.has(ROLE_DOCKER) for h in hosts) else None
        _parallel(lambda h: _ensure_host(h, image_id), hosts, "bringing up hosts")
        if fleet is not None:
            _fleet(fleet)
        if systemd:
            _systemd.ensure()
        elif systemd is False:
            _systemd.remove()
        _write_known_hosts([*hosts, *saved_fleet(), *_systemd.wanted_hosts()])
        if extra_api_hosts:
            _write_if_changed(BENCH_INVENTORY, _bench_inventory(hosts).encode())
        else:
            BENCH_INVENTORY.unlink(missing_ok=True)
        _wait_moto()
        log.info("lab up: %d hosts in %.1fs", len(hosts), time.monotonic() - t0)
    return status()


def fleet(count: int) -> list[HostSpec]:
    """Run exactly ``count`` sshd-only fleet hosts (0 removes the fleet), leaving every other lab
    host alone; writes FLEET_INVENTORY and adds their keys to KNOWN_HOSTS. Returns the hosts."""
    _require_root()
    with _locked():
        hosts = _fleet(count)
        _write_known_hosts([*_current_hosts(), *hosts, *_systemd.wanted_hosts()])
    return hosts


def systemd_host() -> HostSpec:
    """The systemd host svc1 up (booted when it is not; lab.systemd), the rest of the lab left alone
    but for the bridge and the client key it needs; its key in KNOWN_HOSTS. Returns it."""
    _require_root()
    with _locked():
        _ensure_bridge()
        _ensure_client_key()
        host = _systemd.ensure()
        _write_known_hosts([*_current_hosts(), *saved_fleet(), host])
    return host


def down(purge: bool = False) -> None:
    """Stop and remove everything the lab runs or mounts; ``purge`` also deletes LAB_ROOT."""
    _require_root()
    with _locked():
        t0 = time.monotonic()
        if _remove_fleet() | _systemd.remove():
            _write_known_hosts(_current_hosts())
        hosts = _discovered_hosts()
        _parallel(_teardown_host, hosts, "tearing down hosts")
        _remove_clients()
        _stop_moto()
        _sweep_marked_processes()
        _remove_bridge()
        for folder in (_MNT_DIR, _UTS_DIR):
            with contextlib.suppress(OSError):
                for leftover in folder.iterdir():
                    _run(["umount", "-l", str(leftover)], check=False)
        if _mountinfo_has(_MNT_DIR):
            _run(["umount", str(_MNT_DIR)])
        shutil.rmtree(_RUN_ROOT, ignore_errors=True)
        _STATE_FILE.unlink(missing_ok=True)
        BENCH_INVENTORY.unlink(missing_ok=True)
        log.info("lab down: %d hosts in %.1fs", len(hosts), time.monotonic() - t0)
    if purge:
        shutil.rmtree(LAB_ROOT, ignore_errors=True)


def _host_status(host: HostSpec, procs: list[_Proc]) -> HostStatus:
    netns = _is_ns_handle(host.netns)
    mntns = _is_ns_handle(host.mntns)
    mine = _host_procs(host, procs, net_only=True) if netns else []
    comms = {p.comm for p in mine}
    return HostStatus(
        name=host.name,
        address=host.address,
        roles=host.roles,
        netns=netns,
        mountns=mntns,
        sshd="sshd" in comms and _tcp_open(host.address, 22, 0.3),
        dockerd=("dockerd" in comms and mntns and _docker_answers(host))
        if host.has(ROLE_DOCKER)
        else None,
        postgres=("postgres" in comms and _tcp_open(host.address, PG_PORT, 0.3))
        if host.has(ROLE_POSTGRES)
        else None,
    )


def status() -> LabStatus:
    """What is running now, per host; cheap enough to call often."""
    _require_root()
    procs = _scan()
    hosts = _current_hosts()
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(lambda h: _host_status(h, procs), hosts))
    return LabStatus(
        hosts={s.name: s for s in states},
        bridge=_link_exists(BRIDGE),
        moto=_moto_pid() is not None and _moto_answers(),
        systemd=_systemd.running(),
    )
