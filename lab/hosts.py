"""A lab of real hosts on one machine, for the remediations' tests and benchmarks.

Every lab host is a Linux network namespace plus a persistent private mount namespace, joined to
the controller by a veth pair on the bridge ``rmlab0`` (198.18.0.0/24, no NAT, no forwarding).
Inside its namespaces each host runs its own ``sshd`` and, by role, its own ``dockerd`` (with the
compose project ``shop`` in ``/srv/shop``) or a PostgreSQL cluster. A moto S3 server listens on
the controller side of the bridge.

Usage (as root)::

    python -m lab up [--extra-api-hosts N]
    python -m lab status [--json]
    python -m lab down [--purge]

Layout: persistent data (keys, per-host folders, image tarball) under ``LAB_ROOT``; namespace
handles under ``/run/remediations-lab`` and ``/run/netns``. ``down`` stops every process and
removes every namespace, link and mount but keeps the data, so the next ``up`` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import ipaddress
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

log = logging.getLogger("lab")

# ---------------------------------------------------------------------------------------------
# Constants (public ones first)
# ---------------------------------------------------------------------------------------------

LAB_ROOT = Path("/var/lib/remediations-lab")
SSH_KEY = LAB_ROOT / "ssh" / "id_ed25519"
KNOWN_HOSTS = LAB_ROOT / "ssh" / "known_hosts"
S3_ENDPOINT = "http://198.18.0.1:9000"
BENCH_INVENTORY = LAB_ROOT / "bench.yml"
PG_PASSWORD_FILE = LAB_ROOT / "pg_password"
PG_PASSFILE = LAB_ROOT / "pgpass"  # libpq's format, for the postgres_admin_passfile var
STATE_DIR = "/var/lib/remediations"  # private per host
CRON_SPOOL = "/var/spool/cron"  # private per host
CLIENT_ADDRESS = "198.18.0.200"

ROLE_DOCKER = "docker"
ROLE_UFW = "ufw"
ROLE_POSTGRES = "postgres"
ROLE_WAL_ARCHIVE = "wal-archive"  # archive_mode on: WAL to PG_WAL_ARCHIVE and to S3

BRIDGE = "rmlab0"
BRIDGE_ADDRESS = "198.18.0.1"
PREFIX_LEN = 24
SUBNET = "198.18.0.0/24"
S3_PORT = 9000
IMAGE = "local/busybox:1"
COMPOSE_PROJECT = "shop"
COMPOSE_DIR = "/srv/shop"
COMPOSE_FILE = f"{COMPOSE_DIR}/compose.yaml"
API_SERVICE = "api"
PG_PORT = 5432
PG_VERSION = "15"
PG_DATA = f"/var/lib/postgresql/{PG_VERSION}/lab"
PG_WAL_ARCHIVE = "/var/lib/postgresql/wal-archive"  # private per host
S3_BACKUP_BUCKET = "rmlab-backups"
S3_WAL_PREFIX = "wal/"
MAX_EXTRA_API_HOSTS = 99

ASSETS = Path(__file__).resolve().parent / "assets"  # copied to the hosts, or run from here
_AUTHORIZED_KEYS = LAB_ROOT / "ssh" / "authorized_keys"
_HOSTS_DIR = LAB_ROOT / "hosts"
_STATE_FILE = LAB_ROOT / "state.json"
_LOCK_FILE = LAB_ROOT / ".lock"
_BUSYBOX_TAR = LAB_ROOT / "busybox.tar"
_MOTO_PID = LAB_ROOT / "moto.pid"
_MOTO_LOG = LAB_ROOT / "moto.log"
_RUN_ROOT = Path("/run/remediations-lab")
_MNT_DIR = _RUN_ROOT / "mnt"
_UTS_DIR = _RUN_ROOT / "uts"
_NETNS_DIR = Path("/run/netns")
_MARKER_ENV = "RMLAB_HOST"  # set in the environment of every process the lab starts
_MOTO_MARKER = "_moto"
_DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BUSYBOX = Path("/bin/busybox")
_BUSYBOX_LINKS = ("sh", "httpd", "wget", "cp", "mkdir", "sleep", "cat", "rm", "echo", "ls")
_BENCH_RE = re.compile(r"^bench(\d{2})$")
_FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
_IMAGE_EPOCH = "2024-01-01T00:00:00Z"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors and data types
# ---------------------------------------------------------------------------------------------


class LabError(RuntimeError):
    """A lab step failed; the message says which step, the command, and its stderr tail."""


def _tail(data: bytes | str | None, lines: int = 15) -> str:
    if not data:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return "\n".join(text.strip().splitlines()[-lines:])


class LabCommandError(LabError, subprocess.CalledProcessError):
    """A command exited non-zero (also a ``subprocess.CalledProcessError``)."""

    def __init__(
        self, returncode: int, cmd: list[str], output: bytes | None, stderr: bytes | None
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)

    def __str__(self) -> str:
        detail = _tail(self.stderr) or _tail(self.output)
        msg = f"command failed (exit {self.returncode}): {shlex.join(self.cmd)}"
        return f"{msg}\n{detail}" if detail else msg


class LabTimeoutError(LabError, subprocess.TimeoutExpired):
    """A command ran too long (also a ``subprocess.TimeoutExpired``)."""

    def __init__(self, cmd: list[str], timeout: float, stderr: bytes | None) -> None:
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, None, stderr)

    def __str__(self) -> str:
        detail = _tail(self.stderr)
        msg = f"command timed out after {self.timeout:g}s: {shlex.join(self.cmd)}"
        return f"{msg}\n{detail}" if detail else msg


@dataclass(frozen=True)
class HostSpec:
    """What a lab host is: its name, address and roles."""

    name: str
    address: str
    roles: tuple[str, ...]

    @property
    def netns(self) -> Path:
        return _NETNS_DIR / self.name

    @property
    def mntns(self) -> Path:
        return _MNT_DIR / self.name

    @property
    def utsns(self) -> Path:
        return _UTS_DIR / self.name

    @property
    def veth(self) -> str:
        return f"rmv-{self.name}"

    @property
    def dir(self) -> Path:
        return _HOSTS_DIR / self.name

    @property
    def cgroup_parent(self) -> str:
        return f"rmlab-{self.name}"

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class HostStatus:
    """Observed state of one host; ``None`` means "not applicable to this host's roles"."""

    name: str
    address: str
    roles: tuple[str, ...]
    netns: bool
    mountns: bool
    sshd: bool
    dockerd: bool | None
    postgres: bool | None

    @property
    def up(self) -> bool:
        parts = (self.netns, self.mountns, self.sshd, self.dockerd, self.postgres)
        return all(p for p in parts if p is not None)


@dataclass(frozen=True)
class LabStatus:
    """Observed state of the whole lab."""

    hosts: dict[str, HostStatus]
    bridge: bool
    moto: bool
    s3_endpoint: str = S3_ENDPOINT

    @property
    def up(self) -> bool:
        return self.bridge and self.moto and all(h.up for h in self.hosts.values())

    @property
    def down(self) -> bool:
        return not self.bridge and not self.moto and not any(
            h.netns or h.mountns or h.sshd or h.dockerd or h.postgres for h in self.hosts.values()
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["up"] = self.up
        return data


DEFAULT_HOSTS: tuple[HostSpec, ...] = (
    HostSpec("api1", "198.18.0.11", (ROLE_DOCKER, ROLE_UFW)),
    HostSpec("api2", "198.18.0.12", (ROLE_DOCKER, ROLE_UFW)),
    HostSpec("db1", "198.18.0.21", (ROLE_POSTGRES, ROLE_UFW, ROLE_WAL_ARCHIVE)),
    HostSpec("dbrestore", "198.18.0.22", (ROLE_POSTGRES,)),
)


def bench_host(index: int) -> HostSpec:
    """The ``index``-th extra api host (1-based): bench01 at 198.18.0.101, ..."""
    return HostSpec(f"bench{index:02d}", f"198.18.0.{100 + index}", (ROLE_DOCKER,))


def lab_hosts(extra_api_hosts: int = 0) -> list[HostSpec]:
    if not 0 <= extra_api_hosts <= MAX_EXTRA_API_HOSTS:
        raise LabError(f"extra_api_hosts must be within 0..{MAX_EXTRA_API_HOSTS}")
    return [*DEFAULT_HOSTS, *(bench_host(i) for i in range(1, extra_api_hosts + 1))]


# ---------------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------------


def _env(marker: str | None = None) -> dict[str, str]:
    """A clean environment for lab processes (no venv or pyenv paths leak into the hosts)."""
    env = {"PATH": _DAEMON_PATH, "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if marker:
        env[_MARKER_ENV] = marker
    return env


def _run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    cmd = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            env=env if env is not None else _env(),
            cwd="/",
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {cmd[0]} (run scripts/bootstrap?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabTimeoutError(cmd, timeout, exc.stderr) from exc
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def _ns_argv(host: HostSpec, argv: Sequence[str]) -> list[str]:
    uts = [f"--uts={host.utsns}"] if _is_ns_handle(host.utsns) else []
    return ["nsenter", f"--net={host.netns}", f"--mount={host.mntns}", *uts, "--", *argv]


def _in_host(
    host: HostSpec,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    return _run(
        _ns_argv(host, argv), input=input, check=check, timeout=timeout, env=_env(host.name)
    )


def _wait_for(what: str, probe: Callable[[], bool], timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def _tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Atomically write ``data`` unless already there; returns True when the file changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            return False
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def _file_tail(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_bytes()[-8192:], lines)
    except OSError:
        return ""


def _parallel(fn: Callable[[HostSpec], T], hosts: Sequence[HostSpec], what: str) -> list[T]:
    """Run ``fn`` for every host in threads; raise one LabError naming every failed host."""
    if not hosts:
        return []
    results: list[T] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
        futures = [(h, pool.submit(fn, h)) for h in hosts]
        for host, fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:
                errors.append(f"[{host.name}] {exc}")
    if errors:
        raise LabError(f"{what} failed:\n" + "\n".join(errors))
    return results


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


def _ns_id(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _is_ns_handle(path: Path) -> bool:
    """True when ``path`` is a live namespace bind mount (not a stale plain file)."""
    ident = _ns_id(path)
    return ident is not None and ident[0] == _nsfs_dev()


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
    raise LabError(f"unknown lab host {name!r}")


def _discovered_hosts() -> list[HostSpec]:
    """Hosts that may exist from a crashed run: saved, default, or found by their handles."""
    names: dict[str, HostSpec] = {h.name: h for h in (*_saved_hosts(), *DEFAULT_HOSTS)}
    found: set[str] = set()
    for folder in (_NETNS_DIR, _MNT_DIR, _UTS_DIR):
        with contextlib.suppress(OSError):
            found.update(p.name for p in folder.iterdir())
    with contextlib.suppress(OSError):
        found.update(p.name[4:] for p in Path("/sys/class/net").iterdir() if p.name[:4] == "rmv-")
    for name in sorted(found - names.keys()):
        match = _BENCH_RE.match(name)
        if match:
            names[name] = bench_host(int(match.group(1)))
        elif (_MNT_DIR / name).exists() or Path(f"/sys/class/net/rmv-{name}").exists():
            names[name] = HostSpec(name, "0.0.0.0", ())  # noqa: S104 - unknown leftover
    return list(names.values())


# ---------------------------------------------------------------------------------------------
# Network: bridge, namespaces, veth pairs
# ---------------------------------------------------------------------------------------------


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _set_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(value)


def _ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0"])
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")
    # Hosts must not reach beyond 198.18.0.0/24: never route what arrives on the bridge.
    _set_sysctl(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding", "0")
    _run(["ip", "addr", "replace", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # With br_netfilter loaded (every dockerd loads it), bridged host-to-host frames pass the
    # controller's FORWARD chain; accept traffic that stays on the lab bridge.
    if shutil.which("iptables") and _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode:
        _run(["iptables", "-I", *_FORWARD_RULE])


def _remove_bridge() -> None:
    if shutil.which("iptables"):
        while _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode == 0:
            _run(["iptables", "-D", *_FORWARD_RULE])
    if _link_exists(BRIDGE):
        _run(["ip", "link", "del", BRIDGE])


def _ensure_host_net(host: HostSpec) -> None:
    if not _is_ns_handle(host.netns):
        with contextlib.suppress(FileNotFoundError):
            host.netns.unlink()  # a stale plain file (e.g. after a reboot with /run on disk)
        _run(["ip", "netns", "add", host.name])
    has_eth0 = _run(["ip", "-n", host.name, "link", "show", "eth0"], check=False).returncode == 0
    if _link_exists(host.veth) and not has_eth0:
        _run(["ip", "link", "del", host.veth])
    if not _link_exists(host.veth):
        if has_eth0:
            _run(["ip", "-n", host.name, "link", "del", "eth0"])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
              "netns", host.name])  # fmt: skip
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{host.veth}/disable_ipv6", "1")
    _run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    batch = (
        f"addr replace {host.address}/{PREFIX_LEN} dev eth0\n"
        "link set lo up\n"
        "link set eth0 up\n"
        f"route replace default via {BRIDGE_ADDRESS} dev eth0\n"
    )
    _run(["ip", "-n", host.name, "-batch", "-"], input=batch.encode())
    if not has_eth0:
        # A new link has a new MAC address: forget the old one, or the controller keeps sending to
        # it until the neighbour entry goes stale (about 30 s).
        _run(["ip", "neigh", "flush", "to", host.address, "dev", BRIDGE], check=False)


def _remove_host_net(host: HostSpec) -> None:
    if _link_exists(host.veth):
        _run(["ip", "link", "del", host.veth], check=False)
    if host.netns.exists():
        if _is_ns_handle(host.netns):
            _run(["ip", "netns", "del", host.name])
        else:
            host.netns.unlink()


# ---------------------------------------------------------------------------------------------
# Mount namespaces: a private filesystem view per host
# ---------------------------------------------------------------------------------------------

# Runs inside the new mount namespace. "$1".."$6": sources for /srv, /etc/ufw, /etc/default/ufw,
# /var/lib/docker, /var/lib/postgresql, /var/log.
_MOUNT_SCRIPT = r"""
set -eu
# drop this copy's references to other hosts' namespaces
umount -R -l /run/netns 2>/dev/null || true
umount -R -l /run/remediations-lab 2>/dev/null || true
mount -t tmpfs -o mode=0755,size=256m rmlab-run /run
mkdir -p /run/sshd /run/lock /run/postgresql
chmod 0755 /run/sshd
chmod 1777 /run/lock
if id postgres >/dev/null 2>&1; then chown postgres:postgres /run/postgresql; fi
chmod 2775 /run/postgresql
mount --bind "$1" /srv
mount --bind "$2" /etc/ufw
mount --bind "$3" /etc/default/ufw
mount --bind "$4" /var/lib/docker
mount --bind "$5" /var/lib/postgresql
mount --bind "$6" /var/log
touch /run/.rmlab-ready
"""


def _mountinfo_has(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def _ensure_mnt_dir() -> None:
    """/run/remediations-lab/mnt must be a private mount to hold mount namespace handles."""
    _MNT_DIR.mkdir(parents=True, exist_ok=True)
    if not _mountinfo_has(_MNT_DIR):
        _run(["mount", "--bind", str(_MNT_DIR), str(_MNT_DIR)])
    _run(["mount", "--make-private", str(_MNT_DIR)])


def _host_dirs(host: HostSpec) -> list[Path]:
    d = host.dir
    return [d / "srv", d / "ufw", d / "default-ufw", d / "docker", d / "postgresql", d / "log"]


def _prepare_host_dirs(host: HostSpec) -> None:
    srv, ufw, default_ufw, docker, pg, logdir = _host_dirs(host)
    for folder in (srv, docker, pg, logdir):
        folder.mkdir(parents=True, exist_ok=True)
    if not ufw.is_dir() or not any(ufw.iterdir()):
        if not Path("/etc/ufw").is_dir():
            raise LabError("/etc/ufw is missing: install ufw (scripts/bootstrap)")
        shutil.copytree("/etc/ufw", ufw, symlinks=True, dirs_exist_ok=True)
    if not default_ufw.exists():
        src = Path("/etc/default/ufw")
        default_ufw.write_bytes(src.read_bytes() if src.exists() else b"")
    if host.has(ROLE_POSTGRES):
        for folder in (pg, logdir / "postgresql"):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "postgres", "postgres")
    for mountpoint in ("/srv", "/etc/ufw", "/var/lib/docker", "/var/lib/postgresql", "/var/log"):
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
    if not Path("/etc/default/ufw").exists():
        Path("/etc/default/ufw").touch()


def _mntns_ready(host: HostSpec) -> bool:
    if not _is_ns_handle(host.mntns):
        return False
    probe = ["nsenter", f"--mount={host.mntns}", "--", "test", "-e", "/run/.rmlab-ready"]
    return _run(probe, check=False).returncode == 0


def _remove_mntns(host: HostSpec) -> None:
    mounted = _mountinfo_has(host.mntns)
    if mounted and _run(["umount", str(host.mntns)], check=False).returncode != 0:
        _run(["umount", "-l", str(host.mntns)])
    with contextlib.suppress(FileNotFoundError):
        host.mntns.unlink()


def _ensure_utsns(host: HostSpec) -> None:
    """Its own UTS namespace, so that ``hostname`` on the host says its name."""
    if _is_ns_handle(host.utsns):
        return
    _UTS_DIR.mkdir(parents=True, exist_ok=True)
    host.utsns.unlink(missing_ok=True)
    host.utsns.touch()
    _run(["unshare", f"--uts={host.utsns}", "hostname", host.name])


def _remove_utsns(host: HostSpec) -> None:
    if _mountinfo_has(host.utsns):
        _run(["umount", "-l", str(host.utsns)], check=False)
    with contextlib.suppress(FileNotFoundError):
        host.utsns.unlink()


def _ensure_mntns(host: HostSpec) -> None:
    if _mntns_ready(host):
        return
    if _is_ns_handle(host.mntns):
        # Half set up by a crashed run: nothing may be using it, start over.
        _stop_host_processes(host)
    _remove_mntns(host)
    host.mntns.touch()
    _run(["unshare", f"--mount={host.mntns}", "--propagation", "private", "true"])
    sources = [str(p) for p in _host_dirs(host)]
    _run(["nsenter", f"--mount={host.mntns}", "--", "sh", "-c", _MOUNT_SCRIPT, "sh", *sources])


def _ensure_state_mount(host: HostSpec) -> None:
    """A private /var/lib/remediations per host, where remediations keep host-side state, a
    private /root: a host's root home is its own, not the controller's (whose dotfiles, sourced by
    every SSH command, would make the lab's hosts slow in ways real ones are not), and a private
    /var/spool/cron: ``crontab`` on a host edits that host's crontabs, never the controller's.

    Added to a live mount namespace too (processes in it, sshd included, see it at once), so hosts
    of a lab built before these mounts existed get them on the next ``up``.
    """
    state = host.dir / "remediations"
    state.mkdir(parents=True, exist_ok=True)
    Path(STATE_DIR).mkdir(parents=True, exist_ok=True)
    home = host.dir / "root"
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True)
        for name in (".bashrc", ".profile"):  # Debian's stock root dotfiles
            skel = Path("/etc/skel") / name
            if skel.exists():
                shutil.copy2(skel, home / name)
    script = (
        'for pair in "$@"; do src=${pair%%=*}; dst=${pair#*=}; '
        'mountpoint -q "$dst" || mount --bind "$src" "$dst"; done'
    )
    spool = _prepare_cron_spool(host)
    pairs = [f"{state}={STATE_DIR}", f"{home}=/root", f"{spool}={CRON_SPOOL}"]
    _run(["nsenter", f"--mount={host.mntns}", "--", "sh", "-c", script, "sh", *pairs])


def _prepare_cron_spool(host: HostSpec) -> Path:
    """The host's own cron spool, laid out as the controller's: crontab(1) is setgid to the
    spool's group and refuses to write a crontabs folder whose owner or mode differ."""
    crontabs = Path(CRON_SPOOL) / "crontabs"
    if not crontabs.is_dir():
        raise LabError(f"{crontabs} is missing: install cron (scripts/bootstrap)")
    spool = host.dir / "spool-cron"
    own = spool / "crontabs"
    own.mkdir(parents=True, exist_ok=True)
    wanted = crontabs.stat()
    os.chown(own, wanted.st_uid, wanted.st_gid)
    own.chmod(stat.S_IMODE(wanted.st_mode))
    return spool


# ---------------------------------------------------------------------------------------------
# SSH
# ---------------------------------------------------------------------------------------------


def _ensure_client_key() -> None:
    SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
    SSH_KEY.parent.chmod(0o755)
    if not SSH_KEY.exists() or not SSH_KEY.with_suffix(".pub").exists():
        SSH_KEY.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "remediations-lab",
              "-f", str(SSH_KEY)])  # fmt: skip
    _write_if_changed(_AUTHORIZED_KEYS, SSH_KEY.with_suffix(".pub").read_bytes())


def _host_key(host: HostSpec) -> Path:
    return host.dir / "ssh" / "ssh_host_ed25519_key"


def _sshd_config_path(host: HostSpec) -> Path:
    return host.dir / "ssh" / "sshd_config"


def _sshd_config(host: HostSpec) -> str:
    return f"""# Generated by the lab (lab/hosts.py) for lab host {host.name}; do not edit.
Port 22
ListenAddress {host.address}
HostKey {_host_key(host)}
PidFile /run/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile {_AUTHORIZED_KEYS}
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 50
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
"""


def _ensure_sshd_files(host: HostSpec) -> None:
    key = _host_key(host)
    key.parent.mkdir(parents=True, exist_ok=True)
    if not key.exists() or not key.with_suffix(".pub").exists():
        key.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
    _write_if_changed(_sshd_config_path(host), _sshd_config(host).encode())


def _sshd_pids(host: HostSpec, procs: list[_Proc] | None = None) -> list[int]:
    procs = _scan() if procs is None else procs
    return [p.pid for p in _host_procs(host, procs, net_only=True) if p.comm == "sshd"]


def _sshd_listener(host: HostSpec, procs: list[_Proc] | None = None) -> int | None:
    procs = _scan() if procs is None else procs
    sshd = {p.pid: p for p in _host_procs(host, procs, net_only=True) if p.comm == "sshd"}
    for p in sshd.values():
        if p.ppid not in sshd:
            return p.pid
    return None


def _start_sshd(host: HostSpec) -> None:
    if _sshd_listener(host) is not None and _tcp_open(host.address, 22):
        return
    for pid in _sshd_pids(host):  # a listener that does not answer
        _stop_pids({pid}, signal.SIGTERM, 2)
    logfile = host.dir / "sshd.log"
    _in_host(host, ["/usr/sbin/sshd", "-f", str(_sshd_config_path(host)), "-E", str(logfile)])
    try:
        _wait_for(f"sshd on {host.address}:22", lambda: _tcp_open(host.address, 22), 30, 0.05)
    except LabError as exc:
        raise LabError(f"{exc}\nsshd log {logfile}:\n{_file_tail(logfile)}") from None


def _write_known_hosts(hosts: Sequence[HostSpec]) -> None:
    lines = []
    for host in hosts:
        kind, blob, *_ = _host_key(host).with_suffix(".pub").read_text().split()
        lines.append(f"{host.address} {kind} {blob}\n")
    _write_if_changed(KNOWN_HOSTS, "".join(lines).encode())


# ---------------------------------------------------------------------------------------------
# Docker: engine per host, the busybox image, the compose project "shop"
# ---------------------------------------------------------------------------------------------


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _busybox_layer() -> bytes:
    """A deterministic root filesystem tar: /bin/busybox plus its applet links."""
    if not _BUSYBOX.exists():
        raise LabError(f"{_BUSYBOX} is missing: install busybox-static (scripts/bootstrap)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, 0, 0, link
            info.uname = info.gname = "root"
            if data:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder in ("bin", "dev", "etc", "proc", "sys", "usr", "usr/bin", "var", "root"):
            add(folder, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, _BUSYBOX.read_bytes())
        for applet in _BUSYBOX_LINKS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    return buf.getvalue()


def _build_busybox_image() -> str:
    """Write a ``docker save``-format tarball of local/busybox:1; returns its image id."""
    layer = _busybox_layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": _go_arch(),
        "os": "linux",
        "created": _IMAGE_EPOCH,
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _IMAGE_EPOCH, "created_by": "remediations.lab busybox-static"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = diff_id.removeprefix("sha256:")
    manifest = [
        {"Config": f"{config_hex}.json", "RepoTags": [IMAGE], "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            (f"{config_hex}.json", config_bytes),
            (f"{layer_dir}/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    _write_if_changed(_BUSYBOX_TAR, buf.getvalue())
    return f"sha256:{config_hex}"


def _docker_running(host: HostSpec) -> bool:
    procs = _host_procs(host, _scan(), net_only=True)
    return any(p.comm == "dockerd" for p in procs)


def _docker_answers(host: HostSpec) -> bool:
    probe = ["docker", "info", "--format", "{{.ServerVersion}}"]
    try:
        return _in_host(host, probe, check=False, timeout=10).returncode == 0
    except LabTimeoutError:  # a daemon still starting (or busy): not answering yet
        return False


def _dockerd_argv(host: HostSpec, driver: str) -> list[str]:
    return [
        "dockerd",
        "--config-file", str(host.dir / "daemon.json"),
        "--data-root", "/var/lib/docker",
        "--exec-root", "/run/docker",
        "-H", "unix:///run/docker.sock",
        "--pidfile", "/run/docker.pid",
        "--storage-driver", driver,
        "--cgroup-parent", f"/{host.cgroup_parent}",
    ]  # fmt: skip


def _launch_dockerd(host: HostSpec, driver: str) -> bool:
    """Start dockerd detached inside the host; True once ``docker info`` answers."""
    daemon_json = {"log-level": "warn", "log-driver": "json-file", "log-opts": {"max-size": "1m"}}
    _write_if_changed(host.dir / "daemon.json", json.dumps(daemon_json, indent=2).encode())
    logfile = host.dir / "dockerd.log"
    # A dockerd that was killed leaves its pid file behind, and a new one refuses to start.
    _in_host(host, ["rm", "-f", "/run/docker.pid"], check=False)
    with logfile.open("ab") as out:
        subprocess.run(
            ["setsid", "-f", *_ns_argv(host, _dockerd_argv(host, driver))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(host.name), cwd="/",
            check=True,
        )  # fmt: skip
    start = time.monotonic()
    while time.monotonic() - start < 40:
        if _docker_answers(host):
            return True
        # setsid -f returns before dockerd is exec'd: only trust "not running" after a while
        if time.monotonic() - start > 3 and not _docker_running(host):
            return False
        time.sleep(0.2)
    return False


def _storage_driver(host: HostSpec) -> str:
    """overlay2 unless this host's data root already uses vfs (the fallback)."""
    root = host.dir / "docker"
    if (root / "vfs").is_dir() and not (root / "overlay2").is_dir():
        return "vfs"
    return "overlay2"


def _ensure_dockerd(host: HostSpec) -> None:
    if _docker_running(host):
        with contextlib.suppress(LabError):
            _wait_for(f"dockerd on {host.name}", lambda: _docker_answers(host), 30, 0.3)
            return
        _stop_dockerd(host)  # running but deaf: restart it
    # A dockerd that was killed leaves its containerd (and the shims under it) running; a new dockerd
    # cannot start its own containerd while they hold the socket. They belong to nobody now.
    procs = _scan()
    orphans = {p.pid for p in _host_procs(host, procs, net_only=True) if p.comm.startswith("containerd")}
    if orphans:
        log.info("%s: stopping containerd left behind by a dead dockerd", host.name)
        _stop_pids(_with_descendants(orphans, procs) - _protected_pids(), signal.SIGTERM, 5)
    driver = _storage_driver(host)
    if _launch_dockerd(host, driver):
        return
    logfile = host.dir / "dockerd.log"
    if driver == "overlay2" and "overlay" in _file_tail(logfile, 30):
        log.warning("%s: overlay2 failed, falling back to vfs", host.name)
        _stop_dockerd(host)
        if _launch_dockerd(host, "vfs"):
            return
    raise LabError(f"dockerd on {host.name} did not come up; log {logfile}:\n{_file_tail(logfile)}")


def _stop_dockerd(host: HostSpec, timeout: float = 30) -> None:
    """SIGTERM dockerd and wait: it stops its containers (and containerd) before exiting."""
    pids = {p.pid for p in _host_procs(host, _scan(), net_only=True) if p.comm == "dockerd"}
    if pids:
        _stop_pids(pids, signal.SIGTERM, timeout)


def _ensure_image(host: HostSpec, image_id: str) -> None:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE]
    current = _in_host(host, inspect, check=False).stdout.decode().strip()
    if current != image_id:
        _in_host(host, ["docker", "load", "-q", "-i", str(_BUSYBOX_TAR)], timeout=120)


_compose_cmd: list[str] | None = None


def _compose_argv() -> list[str]:
    """``docker compose`` (v2 plugin) when available, else a docker-compose binary."""
    global _compose_cmd
    if _compose_cmd is None:
        if _run(["docker", "compose", "version"], check=False).returncode == 0:
            _compose_cmd = ["docker", "compose"]
        else:
            beside = Path(sys.executable).parent / "docker-compose"
            found = str(beside) if beside.exists() else shutil.which("docker-compose")
            if not found:
                raise LabError("no docker compose: run scripts/bootstrap (installs the plugin)")
            _compose_cmd = [found]
    return [*_compose_cmd, "-p", COMPOSE_PROJECT, "-f", COMPOSE_FILE]


def _write_shop_files(host: HostSpec) -> None:
    """Restore /srv/shop to its baseline (extra files that tests left there stay)."""
    shop = host.dir / "srv" / "shop"
    (shop / "www").mkdir(parents=True, exist_ok=True)
    (shop / "pins").mkdir(exist_ok=True)
    _write_if_changed(shop / "compose.yaml", (ASSETS / "compose.yaml").read_bytes())
    _write_if_changed(shop / ".env", (ASSETS / "env").read_bytes(), mode=0o600)
    _write_if_changed(shop / "www" / "health", (ASSETS / "health").read_bytes())


def _api_health(host: HostSpec) -> str:
    ids = _in_host(host, [*_compose_argv(), "ps", "-q", API_SERVICE], check=False)
    cid = ids.stdout.decode().split()
    if not cid:
        return "missing"
    fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    out = _in_host(host, ["docker", "inspect", "--format", fmt, cid[0]], check=False)
    return out.stdout.decode().strip() or "missing"


def _wait_api_healthy(host: HostSpec, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    health = _api_health(host)
    while health != "healthy" and health != "unhealthy" and time.monotonic() < deadline:
        time.sleep(0.3)
        health = _api_health(host)
    return health


def _ensure_shop(host: HostSpec) -> None:
    _write_shop_files(host)
    _in_host(host, [*_compose_argv(), "up", "-d"], timeout=120)
    if _api_health(host) == "healthy":
        return
    health = _wait_api_healthy(host, 20)
    if health != "healthy":  # e.g. /tmp/www/health deleted inside the container
        log.info("%s: api is %s, restarting it", host.name, health)
        _in_host(host, [*_compose_argv(), "restart", "-t", "2", API_SERVICE], timeout=60)
        health = _wait_api_healthy(host, 20)
        if health == "unhealthy":  # give the health check its retries after the restart
            time.sleep(3)
            health = _wait_api_healthy(host, 10)
    if health != "healthy":
        ps = _in_host(host, [*_compose_argv(), "ps", "-a"], check=False).stdout
        raise LabError(f"api on {host.name} is {health}, not healthy:\n{_tail(ps)}")


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def _pg_bin(tool: str) -> str:
    path = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin/{tool}")
    if not path.exists():
        raise LabError(f"{path} is missing: install postgresql (scripts/bootstrap)")
    return str(path)


def _pg_password() -> str:
    if not PG_PASSWORD_FILE.exists():
        _write_if_changed(PG_PASSWORD_FILE, secrets.token_urlsafe(18).encode(), mode=0o600)
    password = PG_PASSWORD_FILE.read_text().strip()
    _write_if_changed(PG_PASSFILE, f"*:*:*:postgres:{password}\n".encode(), mode=0o600)
    return password


def _as_postgres(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def _pg_datadir(host: HostSpec) -> Path:
    """The controller-side path of the host's PG_DATA."""
    return host.dir / "postgresql" / PG_VERSION / "lab"


def _pg_running(host: HostSpec, procs: list[_Proc] | None = None) -> bool:
    procs = _scan() if procs is None else procs
    return any(p.comm == "postgres" for p in _host_procs(host, procs, net_only=True))


def _pg_conf(host: HostSpec) -> str:
    return f"""# Generated by the lab (lab/hosts.py); included from postgresql.conf.
listen_addresses = '{host.address},127.0.0.1'
port = {PG_PORT}
unix_socket_directories = '/run/postgresql'
cluster_name = 'rmlab-{host.name}'
max_connections = 50
shared_buffers = 32MB
password_encryption = scram-sha-256
""" + (_pg_archive_conf() if host.has(ROLE_WAL_ARCHIVE) else "")


def _pg_archive_conf() -> str:
    """The Ringo setup: every WAL segment copied to a local archive and uploaded to S3."""
    argv = [str(ASSETS / "pg_archive_wal"), "%p", "%f", PG_WAL_ARCHIVE, S3_ENDPOINT, S3_BACKUP_BUCKET,
            S3_WAL_PREFIX]  # fmt: skip
    command = shlex.join(argv).replace("'", "''")
    return f"archive_mode = on\narchive_command = '{command}'\narchive_timeout = 0\n"


_PG_HBA = f"""# Generated by the lab (lab/hosts.py).
local   all  all                  trust
local   replication  all          trust
host    all  all  127.0.0.1/32    scram-sha-256
host    all  all  {SUBNET}    scram-sha-256
"""


def _pg_initdb(host: HostSpec) -> None:
    datadir = _pg_datadir(host)
    marker = host.dir / "postgresql" / ".rmlab-initdb-done"
    if marker.exists() and (datadir / "PG_VERSION").exists():
        return
    shutil.rmtree(datadir, ignore_errors=True)  # half-made by a crashed run
    datadir.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(datadir.parent, "postgres", "postgres")
    initdb = [_pg_bin("initdb"), "-D", PG_DATA, "-U", "postgres", "-E", "UTF8", "--locale=C",
              "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]  # fmt: skip
    _in_host(host, _as_postgres(initdb), timeout=120)
    marker.touch()


def _pg_write_conf(host: HostSpec) -> bool:
    """Write the lab's settings; True when they changed (a running server must restart)."""
    datadir = _pg_datadir(host)
    changed = False
    for name, text in (("lab.conf", _pg_conf(host)), ("pg_hba.conf", _PG_HBA)):
        path = datadir / name
        if _write_if_changed(path, text.encode(), mode=0o600):
            shutil.chown(path, "postgres", "postgres")
            changed = True
    if host.has(ROLE_WAL_ARCHIVE):
        archive = host.dir / "postgresql" / Path(PG_WAL_ARCHIVE).name
        archive.mkdir(exist_ok=True)
        shutil.chown(archive, "postgres", "postgres")
    main_conf = datadir / "postgresql.conf"
    if "include_if_exists = 'lab.conf'" not in main_conf.read_text():
        with main_conf.open("a") as fh:
            fh.write("\ninclude_if_exists = 'lab.conf'\n")
        changed = True
    return changed


def _ensure_postgres(host: HostSpec) -> None:
    _pg_initdb(host)
    logfile = f"/var/log/postgresql/postgresql-{PG_VERSION}-lab.log"
    if _pg_write_conf(host) and _pg_running(host):
        restart = [_pg_bin("pg_ctl"), "-D", PG_DATA, "-l", logfile, "-m", "fast", "-w", "-t", "60",
                   "restart"]  # fmt: skip
        _in_host(host, _as_postgres(restart), timeout=90)
    if not _pg_running(host):
        (_pg_datadir(host) / "postmaster.pid").unlink(missing_ok=True)  # stale after a crash
        start = [_pg_bin("pg_ctl"), "-D", PG_DATA, "-l", logfile, "-w", "-t", "60", "start"]
        try:
            _in_host(host, _as_postgres(start), timeout=90)
        except LabError as exc:
            host_log = host.dir / "log" / "postgresql" / Path(logfile).name
            raise LabError(f"{exc}\npostgres log {host_log}:\n{_file_tail(host_log)}") from None
    _wait_for(f"postgres on {host.address}", lambda: _tcp_open(host.address, PG_PORT), 30)
    sql = f"ALTER ROLE postgres PASSWORD '{_pg_password()}';\n"
    psql = [_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "/run/postgresql",
            "-U", "postgres", "-d", "postgres", "-f", "-"]  # fmt: skip
    _in_host(host, _as_postgres(psql), input=sql.encode())


def _stop_postgres(host: HostSpec, timeout: float = 20) -> None:
    """Fast shutdown (SIGINT to the postmaster), then wait for every backend to exit."""
    procs = _host_procs(host, _scan(), net_only=True)
    pg = {p.pid: p for p in procs if p.comm == "postgres"}
    postmasters = {pid for pid, p in pg.items() if p.ppid not in pg}
    if postmasters:
        _stop_pids(postmasters, signal.SIGINT, timeout)


# ---------------------------------------------------------------------------------------------
# S3 (moto on the controller side of the bridge)
# ---------------------------------------------------------------------------------------------


def _moto_pid() -> int | None:
    try:
        pid = int(_MOTO_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid) and _read_marker(pid) == _MOTO_MARKER:
        return pid
    return None


def _moto_answers() -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(S3_ENDPOINT + "/", timeout=1) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _moto_argv() -> list[str]:
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    base = [found] if found else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", BRIDGE_ADDRESS, "-p", str(S3_PORT)]


def _start_moto() -> None:
    """Start moto detached (no wait); ``_wait_moto`` waits for it."""
    if _moto_pid() is not None:
        return
    _MOTO_PID.unlink(missing_ok=True)
    script = 'echo $$ > "$1"; shift; exec "$@"'
    with _MOTO_LOG.open("ab") as out:
        subprocess.run(
            ["setsid", "-f", "sh", "-c", script, "sh", str(_MOTO_PID), *_moto_argv()],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(_MOTO_MARKER), cwd="/",
            check=True,
        )  # fmt: skip


def _wait_moto(timeout: float = 60) -> None:
    start = time.monotonic()
    while not _moto_answers():
        elapsed = time.monotonic() - start
        if elapsed > timeout or (elapsed > 2 and _moto_pid() is None):
            raise LabError(
                f"moto_server did not answer on {S3_ENDPOINT}; log {_MOTO_LOG}:\n"
                + _file_tail(_MOTO_LOG)
            )
        time.sleep(0.2)


def _stop_moto() -> None:
    pid = _moto_pid()
    if pid is not None:
        _stop_pids({pid}, signal.SIGTERM, 5)
    _MOTO_PID.unlink(missing_ok=True)


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


def _stop_host_processes(host: HostSpec) -> None:
    _stop_dockerd(host)
    _stop_postgres(host)
    procs = _host_procs(host, _scan(with_marker=True))
    survivors = _stop_pids({p.pid for p in procs}, signal.SIGTERM, 3)
    if survivors:
        raise LabError(f"{host.name}: processes survive SIGKILL: {sorted(survivors)}")


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


def up(extra_api_hosts: int | None = None) -> LabStatus:
    """Build the lab, or repair it to its baseline; idempotent. Returns ``status()``.

    ``extra_api_hosts`` bench hosts are added (or removed down to that number); ``None`` keeps the
    bench hosts that run now, so a test session starting the lab does not pull them from under a
    benchmark.
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
        _write_known_hosts(hosts)
        if extra_api_hosts:
            _write_if_changed(BENCH_INVENTORY, _bench_inventory(hosts).encode())
        else:
            BENCH_INVENTORY.unlink(missing_ok=True)
        _wait_moto()
        log.info("lab up: %d hosts in %.1fs", len(hosts), time.monotonic() - t0)
    return status()


def down(purge: bool = False) -> None:
    """Stop and remove everything the lab runs or mounts; ``purge`` also deletes LAB_ROOT."""
    _require_root()
    with _locked():
        t0 = time.monotonic()
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
    )


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


# Runs in a mount namespace of cron's own, inside the host's: the controller's system crontabs
# (/etc/crontab, /etc/cron.d: run-parts, e2scrub, …) are hidden, so only the host's own spool runs.
# "$@": folders of the controller's root filesystem that the jobs need and the host's private
# mounts hide; a bind of "/" alone (not --rbind) is that filesystem without the mounts over it.
_CRON_SCRIPT = r"""
set -eu
mount -t tmpfs -o mode=0755,size=1m rmlab-cron /etc/cron.d
: > /etc/cron.d/.crontab
mount --bind /etc/cron.d/.crontab /etc/crontab
mkdir /etc/cron.d/.controller
mount --bind / /etc/cron.d/.controller
for folder in "$@"; do mount --bind "/etc/cron.d/.controller$folder" "$folder"; done
umount /etc/cron.d/.controller
rmdir /etc/cron.d/.controller
exec cron -f
"""


@contextlib.contextmanager
def cron_daemon(host: str, share: Sequence[str] = ()) -> Iterator[int]:
    """A real cron daemon (Debian's ``cron -f``) on ``host`` while the ``with`` lasts, running the
    host's own crontabs (its private /var/spool/cron) and nothing else; yields its pid. At the end
    it is stopped, and so are the jobs it is running.

    ``share``: folders of the controller's root filesystem its jobs see as on the controller, e.g.
    the Python of a venv under the controller's /root (each host has its own /root). Only cron's
    own mount namespace has them; mount points made on the host for them are removed again.
    """
    _require_root()
    spec = _host(host)
    if not (_is_ns_handle(spec.netns) and _is_ns_handle(spec.mntns)):
        raise LabError(f"lab host {host} is not up (python -m lab up)")
    if _in_host(spec, ["mountpoint", "-q", CRON_SPOOL], check=False).returncode != 0:
        # It would run the controller's crontabs inside the host.
        raise LabError(f"lab host {host} has no cron spool of its own (python -m lab up)")
    made: list[str] = []  # deepest first
    for folder in share:
        target = Path(folder)
        missing = []
        while _in_host(spec, ["test", "-e", str(target)], check=False).returncode != 0:
            missing.append(str(target))
            target = target.parent
        made = missing + made
        if missing:
            _in_host(spec, ["mkdir", "-p", missing[0]])
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CRON_SCRIPT, "sh", *share]
    proc = subprocess.Popen(_ns_argv(spec, argv), env=_env(host), stdin=subprocess.DEVNULL)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=1)
            raise LabError(f"{host}: cron exited at once (exit code {code})")
        yield proc.pid
    finally:
        # Its running jobs too (taken before cron stops: then they are orphans, no longer its children).
        family = _with_descendants({proc.pid}, _scan())
        survivors = _stop_pids(family, signal.SIGTERM, 5)
        proc.wait(timeout=10)
        for folder in made:
            _in_host(spec, ["rmdir", folder], check=False)
        # Its pid file, and the mark that @reboot entries ran (the next daemon runs them again).
        _in_host(spec, ["rm", "-f", "/run/crond.pid", "/run/crond.reboot"], check=False)
        if survivors:
            raise LabError(f"{host}: cron processes survive SIGKILL: {sorted(survivors)}")


# ---------------------------------------------------------------------------------------------
# Clients: bare namespaces on the bridge that play an outside machine (e.g. a blocked address)
# ---------------------------------------------------------------------------------------------

_CLIENT_NETNS_PREFIX = "rmlabc-"
_CLIENT_VETH_PREFIX = "rmc-"
_CLIENT_NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
_CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as exc:
    print(exc)
    sys.exit(1)
"""


@dataclass(frozen=True)
class Client:
    """A network namespace with one address on the lab bridge and no services of its own."""

    name: str
    address: str

    @property
    def netns(self) -> Path:
        return _NETNS_DIR / f"{_CLIENT_NETNS_PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        return f"{_CLIENT_VETH_PREFIX}{self.name}"

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the client's network namespace (the controller's filesystem)."""
        return _run(["nsenter", f"--net={self.netns}", "--", *argv], check=check, timeout=timeout)

    def can_connect(self, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from this client to ``address:port`` is accepted in time."""
        probe = [sys.executable, "-c", _CONNECT_PROBE, address, str(port), str(timeout)]
        return self.run(probe, check=False, timeout=timeout + 10).returncode == 0


def _client_spec(name: str, address: str) -> Client:
    if not _CLIENT_NAME_RE.match(name):
        raise LabError(f"client name {name!r}: 1 to 10 lowercase letters or digits")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise LabError(f"client address {address!r} is not an IP address") from None
    subnet = ipaddress.ip_network(SUBNET)
    taken = {BRIDGE_ADDRESS, *(h.address for h in _current_hosts())}
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address) or address in taken:
        raise LabError(f"client address {address}: give a free address in {SUBNET}")
    return Client(name, address)


def ensure_client(name: str, address: str = CLIENT_ADDRESS) -> Client:
    """A client namespace ``name`` holding ``address`` on the bridge; idempotent."""
    _require_root()
    spec = _client_spec(name, address)
    with _locked():
        if not _link_exists(BRIDGE):
            raise LabError("the lab is not up (python -m lab up)")
        netns = spec.netns.name
        if not _is_ns_handle(spec.netns):
            with contextlib.suppress(FileNotFoundError):
                spec.netns.unlink()
            _run(["ip", "netns", "add", netns])
        if not _link_exists(spec.veth):
            _run(["ip", "-n", netns, "link", "del", "eth0"], check=False)
            _run(["ip", "link", "add", spec.veth, "type", "veth", "peer", "name", "eth0",
                  "netns", netns])  # fmt: skip
        _set_sysctl(f"/proc/sys/net/ipv6/conf/{spec.veth}/disable_ipv6", "1")
        _run(["ip", "link", "set", spec.veth, "master", BRIDGE, "up"])
        batch = (
            "addr flush dev eth0\n"
            f"addr add {address}/{PREFIX_LEN} dev eth0\n"
            "link set lo up\n"
            "link set eth0 up\n"
        )
        _run(["ip", "-n", netns, "-batch", "-"], input=batch.encode())
    return spec


def remove_client(name: str) -> None:
    """Remove the client namespace ``name`` and its link (no-op when absent)."""
    _require_root()
    spec = Client(name, "")
    with _locked():
        _remove_client(spec)


def _remove_client(spec: Client) -> None:
    if _link_exists(spec.veth):
        _run(["ip", "link", "del", spec.veth], check=False)
    if _is_ns_handle(spec.netns):
        _run(["ip", "netns", "del", spec.netns.name], check=False)
    with contextlib.suppress(FileNotFoundError):
        spec.netns.unlink()


def _remove_clients() -> None:
    """Every client namespace (called by ``down``, which holds the lab lock)."""
    with contextlib.suppress(OSError):
        for entry in _NETNS_DIR.iterdir():
            if entry.name.startswith(_CLIENT_NETNS_PREFIX):
                _remove_client(Client(entry.name[len(_CLIENT_NETNS_PREFIX) :], ""))


@contextlib.contextmanager
def client(address: str = CLIENT_ADDRESS, name: str = "client") -> Iterator[Client]:
    """A client namespace for the duration of a ``with`` block, removed afterwards."""
    spec = ensure_client(name, address)
    try:
        yield spec
    finally:
        remove_client(name)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def print_status(st: LabStatus) -> None:
    def mark(value: bool | None) -> str:
        return "-" if value is None else ("up" if value else "DOWN")

    print(f"bridge {BRIDGE}: {mark(st.bridge)}   s3 {st.s3_endpoint}: {mark(st.moto)}")
    print(f"{'host':<9} {'address':<13} {'roles':<16} netns mntns sshd dockerd postgres")
    for h in st.hosts.values():
        print(
            f"{h.name:<9} {h.address:<13} {','.join(h.roles):<16} {mark(h.netns):<5} "
            f"{mark(h.mountns):<5} {mark(h.sshd):<4} {mark(h.dockerd):<7} {mark(h.postgres)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build or repair the lab")
    p_up.add_argument("--extra-api-hosts", type=int, default=None, metavar="N",
                      help="bench hosts to run (default: keep those running now)")
    p_down = sub.add_parser("down", help="stop and remove everything")
    p_down.add_argument("--purge", action="store_true", help=f"also delete {LAB_ROOT}")
    p_status = sub.add_parser("status", help="show what runs")
    p_status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="lab: %(message)s"
    )
    try:
        if args.command == "up":
            print_status(up(args.extra_api_hosts))
        elif args.command == "down":
            down(purge=args.purge)
        elif args.json:
            print(json.dumps(status().to_dict(), indent=2))
        else:
            st = status()
            print_status(st)
            return 0 if st.up else 3
    except LabError as exc:
        print(f"lab {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
