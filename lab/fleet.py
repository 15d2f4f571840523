"""The fleet: up to MAX_FLEET sshd-only hosts for fan-out benchmarks (``python -m lab fleet N``).

Each fleet host is a network namespace and a private mount namespace, as the other lab hosts are,
running only its own sshd; ufw and iptables work in it (its own /etc/ufw, /etc/default/ufw,
/var/log, /var/lib/remediations, /root, cron spool and /run, so iptables' and ufw's locks are the
host's own). The hosts hang on their own bridge, ``rmfleet0`` (198.18.16.0/20, inside the lab's
198.18.0.0/15; no route beyond it), so a thousand of them leave the other lab hosts' bridge, and the
neighbour entries on it, alone. No UTS namespace: ``hostname`` on a fleet host is the machine's.

Built for speed at a thousand hosts: one /proc scan for the whole fleet (not one per host), one
shell script per host that makes its namespaces and starts its sshd, one ``ip -batch`` that deletes
every namespace, handles unmounted with umount(2) directly. Bring-up and teardown touch nothing of
the rest of the lab; ``up`` without ``fleet=`` leaves the fleet as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from lab.base import (
    _FLEET_STATE,
    _NETNS_DIR,
    CRON_SPOOL,
    FLEET_BRIDGE,
    FLEET_BRIDGE_ADDRESS,
    FLEET_INVENTORY,
    FLEET_PREFIX_LEN,
    MAX_FLEET,
    STATE_DIR,
    HostSpec,
    LabError,
    _env,
    _is_ns_handle,
    _ns_id,
    _run,
    _tcp_open,
    _write_if_changed,
    fleet_host,
    log,
)
from lab.mounts import _ensure_mnt_dir
from lab.net import _link_exists, _set_sysctl
from lab.procs import _protected_pids, _scan, _stop_pids, _with_descendants
from lab.ssh import _ensure_client_key, _ensure_sshd_files, _sshd_config_path

_WORKERS = 16  # bring-up shell scripts at once: enough to keep two cores busy with fork/exec
_MNT_DETACH = 2

# Runs on the controller for one host: its namespaces, its link, its mounts, its sshd.
# "$1".."$5": name, address, veth, mount namespace handle, sshd config; then the mount sources.
_BRING_UP = rf"""
set -eu
name=$1 addr=$2 veth=$3 mnt=$4 cfg=$5 log=$6
shift 6
ip netns add "$name"
ip link add "$veth" type veth peer name eth0 netns "$name"
echo 1 > "/proc/sys/net/ipv6/conf/$veth/disable_ipv6"
# no IPv6 in the host either: a thousand hosts' router solicitations would flood the bridge
nsenter --net="/run/netns/$name" -- sh -c 'for f in all default eth0; do
    echo 1 > "/proc/sys/net/ipv6/conf/$f/disable_ipv6"; done'
ip link set "$veth" master {FLEET_BRIDGE} up
printf '%s\n' "addr replace $addr/{FLEET_PREFIX_LEN} dev eth0" "link set lo up" "link set eth0 up" \
    "route replace default via {FLEET_BRIDGE_ADDRESS} dev eth0" | ip -n "$name" -batch -
: > "$mnt"
unshare --mount="$mnt" --propagation private true
nsenter --mount="$mnt" -- sh -c '
set -eu
# drop this copy of the namespace handles of the other hosts (they would keep those alive): one lazy
# umount detaches a whole subtree (umount -R, one call per mount, is quadratic at 1,000 hosts)
umount -l /run/netns /run/remediations-lab/mnt 2>/dev/null || true
for f in /run/remediations-lab/uts/*; do
    # another host built in parallel may have its handle made but not bound yet: not an error
    if [ -e "$f" ]; then umount -l /run/remediations-lab/uts/* 2>/dev/null || true; fi; break
done
mount -t tmpfs -o mode=0755,size=16m rmlab-run /run
mkdir -p /run/sshd /run/lock
chmod 1777 /run/lock
mount --bind "$1" /etc/ufw
mount --bind "$2" /etc/default/ufw
mount --bind "$3" /var/log
mount --bind "$4" {STATE_DIR}
mount --bind "$5" /root
mount --bind "$6" {CRON_SPOOL}
touch /run/.rmlab-ready
' sh "$@"
nsenter --net="/run/netns/$name" --mount="$mnt" -- /usr/sbin/sshd -f "$cfg" -E "$log"
"""


# ---------------------------------------------------------------------------------------------
# Which hosts the fleet has
# ---------------------------------------------------------------------------------------------


def fleet_hosts(count: int) -> list[HostSpec]:
    if not 0 <= count <= MAX_FLEET:
        raise LabError(f"the fleet has 0..{MAX_FLEET} hosts, not {count}")
    return [fleet_host(i) for i in range(1, count + 1)]


def saved_fleet() -> list[HostSpec]:
    """The fleet as last built (or being built): its hosts, from the fleet's state file."""
    try:
        return fleet_hosts(int(json.loads(_FLEET_STATE.read_text())["count"]))
    except (OSError, ValueError, KeyError, TypeError, LabError):
        return []


def _found_fleet() -> list[HostSpec]:
    """Fleet hosts with a namespace or a link, saved or not (a crashed run's leftovers)."""
    indexes = {int(h.name[5:]) for h in saved_fleet()}
    with contextlib.suppress(OSError):
        indexes.update(int(p.name[5:]) for p in _NETNS_DIR.iterdir()
                       if p.name.startswith("fleet") and p.name[5:].isdigit())  # fmt: skip
    with contextlib.suppress(OSError):
        indexes.update(int(p.name[9:]) for p in Path("/sys/class/net").iterdir()
                       if p.name.startswith("rmv-fleet") and p.name[9:].isdigit())  # fmt: skip
    return [fleet_host(i) for i in sorted(indexes) if 1 <= i <= MAX_FLEET]


# ---------------------------------------------------------------------------------------------
# Bring up
# ---------------------------------------------------------------------------------------------


def _fleet_dirs(host: HostSpec) -> list[Path]:
    d = host.dir
    return [d / "ufw", d / "default-ufw", d / "log", d / "remediations", d / "root", d / "spool-cron"]


def _prepare(host: HostSpec) -> None:
    """The host's files: a fresh host each time it starts (ufw as the machine ships it, inactive;
    no recorded blocks, no logs); its host key and sshd config are kept across ``down``."""
    ufw, default_ufw, logdir, state, home, spool = _fleet_dirs(host)
    for folder in (ufw, logdir, state):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree("/etc/ufw", ufw, symlinks=True)
    src = Path("/etc/default/ufw")
    default_ufw.write_bytes(src.read_bytes() if src.exists() else b"")
    for folder in (logdir, state):
        folder.mkdir(parents=True, exist_ok=True)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    crontabs = Path(CRON_SPOOL) / "crontabs"
    own = spool / "crontabs"
    own.mkdir(parents=True, exist_ok=True)
    if crontabs.is_dir():  # laid out as the controller's: crontab(1) checks owner and mode
        wanted = crontabs.stat()
        os.chown(own, wanted.st_uid, wanted.st_gid)
        own.chmod(stat.S_IMODE(wanted.st_mode))
    _ensure_sshd_files(host)


def _bring_up(host: HostSpec) -> None:
    _prepare(host)
    argv = ["sh", "-c", _BRING_UP, "sh", host.name, host.address, host.veth, str(host.mntns),
            str(_sshd_config_path(host)), str(host.dir / "sshd.log"),
            *(str(p) for p in _fleet_dirs(host))]  # fmt: skip
    _run(argv, env=_env(host.name), timeout=120)


def _ensure_bridge() -> None:
    if not _link_exists(FLEET_BRIDGE):
        _run(["ip", "link", "add", FLEET_BRIDGE, "type", "bridge", "forward_delay", "0"])
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{FLEET_BRIDGE}/disable_ipv6", "1")
    _set_sysctl(f"/proc/sys/net/ipv4/conf/{FLEET_BRIDGE}/forwarding", "0")  # nothing routed beyond
    _run(["ip", "addr", "replace", f"{FLEET_BRIDGE_ADDRESS}/{FLEET_PREFIX_LEN}", "dev", FLEET_BRIDGE])
    _run(["ip", "link", "set", FLEET_BRIDGE, "up"])


def _raise_limits(count: int) -> None:
    """Kernel limits a thousand hosts reach; only ever raised, never lowered.

    The neighbour table is one for all network namespaces: every fleet host holds an entry for the
    bridge and the controller one per host, so past about 500 hosts the default gc_thresh3 (1024)
    drops entries ("neighbour table overflow") and connections stall.
    """
    entries = 2 * count + 512
    for name, value in (("gc_thresh1", entries), ("gc_thresh2", 2 * entries), ("gc_thresh3", 4 * entries)):
        path = Path(f"/proc/sys/net/ipv4/neigh/default/{name}")
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) < value:
                path.write_text(str(value))


def _listening(hosts: Sequence[HostSpec]) -> set[str]:
    """Names of the hosts whose sshd accepts a TCP connection (checked in parallel)."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = pool.map(lambda h: _tcp_open(h.address, 22, 1.0), hosts)
        return {h.name for h, ok in zip(hosts, answers, strict=True) if ok}


def _healthy(hosts: Sequence[HostSpec]) -> set[str]:
    """Hosts fully up: both namespace handles, the mounts made, sshd listening."""
    candidates = [h for h in hosts if _is_ns_handle(h.netns) and _is_ns_handle(h.mntns)]
    return _listening(candidates)


def _start(hosts: Sequence[HostSpec]) -> None:
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(hosts)) or 1) as pool:
        for host, fut in [(h, pool.submit(_bring_up, h)) for h in hosts]:
            try:
                fut.result()
            except Exception as exc:
                errors.append(f"[{host.name}] {exc}")
    if errors:
        raise LabError(f"bringing up {len(errors)} fleet host(s) failed:\n" + "\n".join(errors[:10]))
    deadline = time.monotonic() + 30
    waiting = list(hosts)
    while waiting:
        answering = _listening(waiting)
        waiting = [h for h in waiting if h.name not in answering]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(h.name for h in waiting[:10])
            raise LabError(f"sshd did not listen on {len(waiting)} fleet host(s) within 30s: {names}")
        if waiting:
            time.sleep(0.2)


def _write_inventory(hosts: Sequence[HostSpec]) -> None:
    from lab.control import inventory_vars  # the same all: vars: as the other lab inventories

    data = {
        "all": {
            "vars": inventory_vars(),
            "children": {"fleet": {"hosts": {h.name: {"ansible_host": h.address} for h in hosts}}},
        }
    }
    header = "# Generated by python -m lab fleet N: the lab's sshd-only fleet hosts.\n"
    _write_if_changed(FLEET_INVENTORY, (header + yaml.safe_dump(data, sort_keys=False)).encode())


def fleet(count: int) -> list[HostSpec]:
    """Run exactly ``count`` fleet hosts (0: none), repairing broken ones; returns them.

    Needs the lab's lock held by the caller (lab.control.fleet); leaves every other lab host alone.
    """
    wanted = fleet_hosts(count)
    names = {h.name for h in wanted}
    t0 = time.monotonic()
    surplus = [h for h in _found_fleet() if h.name not in names]
    _write_if_changed(_FLEET_STATE, json.dumps({"count": count}).encode())
    if surplus:
        _teardown(surplus)
    if not wanted:
        _remove_bridge()
        FLEET_INVENTORY.unlink(missing_ok=True)
        _FLEET_STATE.unlink(missing_ok=True)
        return []
    _raise_limits(count)
    _ensure_bridge()
    _ensure_mnt_dir()
    _ensure_client_key()
    healthy = _healthy(wanted)
    broken = [h for h in wanted if h.name not in healthy]
    if broken:
        _teardown(broken)  # half-made hosts start over: quicker than repairing each part
        _start(broken)
    _write_inventory(wanted)
    log.info("fleet: %d hosts (%d started) in %.1fs", count, len(broken), time.monotonic() - t0)
    return wanted


# ---------------------------------------------------------------------------------------------
# Tear down
# ---------------------------------------------------------------------------------------------


def _umount(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0 and ctypes.get_errno() not in (22, 2):
        err = ctypes.get_errno()
        raise LabError(f"umount {path}: {os.strerror(err)}")  # EINVAL/ENOENT: not mounted


def _teardown(hosts: Sequence[HostSpec]) -> None:
    """Stop every process in the hosts' namespaces (one /proc scan), then remove the namespaces
    and links in one ``ip -batch``."""
    netns = {ident for h in hosts if _is_ns_handle(h.netns) and (ident := _ns_id(h.netns))}
    mntns = {ident for h in hosts if _is_ns_handle(h.mntns) and (ident := _ns_id(h.mntns))}
    names = {h.name for h in hosts}
    procs = _scan(with_marker=True)
    seeds = {p.pid for p in procs if p.netns in netns or p.mntns in mntns or p.marker in names}
    pids = _with_descendants(seeds, procs) - _protected_pids()
    if pids:
        survivors = _stop_pids(pids, signal.SIGTERM, 3)
        if survivors:
            raise LabError(f"fleet: processes survive SIGKILL: {sorted(survivors)[:20]}")
    for host in hosts:
        _umount(host.mntns)
        host.mntns.unlink(missing_ok=True)
    batch = "".join(f"link del {h.veth}\n" for h in hosts if _link_exists(h.veth))
    batch += "".join(f"netns del {h.name}\n" for h in hosts if h.netns.exists())
    if batch:
        _run(["ip", "-force", "-batch", "-"], input=batch.encode(), check=False, timeout=300)
    for host in hosts:  # a stale handle the batch could not delete
        if host.netns.exists():
            _umount(host.netns)
            host.netns.unlink(missing_ok=True)


def _remove_bridge() -> None:
    if _link_exists(FLEET_BRIDGE):
        _run(["ip", "link", "del", FLEET_BRIDGE])


def remove_all() -> int:
    """Tear the whole fleet down (``lab down``); returns how many hosts it had."""
    hosts = _found_fleet()
    if hosts:
        _teardown(hosts)
    _remove_bridge()
    FLEET_INVENTORY.unlink(missing_ok=True)
    _FLEET_STATE.unlink(missing_ok=True)
    return len(hosts)


def fleet_status() -> tuple[int, int]:
    """(hosts the fleet should have, hosts whose sshd answers)."""
    wanted = saved_fleet()
    return len(wanted), len(_healthy(wanted)) if wanted else 0
