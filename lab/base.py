"""Constants, errors, data types, and running commands: what every lab module uses."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("lab")

# ---------------------------------------------------------------------------------------------
# Constants (public ones first)
# ---------------------------------------------------------------------------------------------

LAB_ROOT = Path("/var/lib/remediations-lab")
SSH_KEY = LAB_ROOT / "ssh" / "id_ed25519"
KNOWN_HOSTS = LAB_ROOT / "ssh" / "known_hosts"
S3_ENDPOINT = "http://198.18.0.1:9000"
BENCH_INVENTORY = LAB_ROOT / "bench.yml"
FLEET_INVENTORY = LAB_ROOT / "fleet.yml"  # the sshd-only fleet (lab.fleet), when it runs
PG_PASSWORD_FILE = LAB_ROOT / "pg_password"
PG_PASSFILE = LAB_ROOT / "pgpass"  # libpq's format, for the postgres_admin_passfile var
STATE_DIR = "/var/lib/remediations"  # private per host
CRON_SPOOL = "/var/spool/cron"  # private per host
CLIENT_ADDRESS = "198.18.0.200"

ROLE_DOCKER = "docker"
ROLE_UFW = "ufw"
ROLE_POSTGRES = "postgres"
ROLE_WAL_ARCHIVE = "wal-archive"  # archive_mode on: WAL to PG_WAL_ARCHIVE and to S3
ROLE_FLEET = "fleet"  # sshd and ufw only, on the fleet bridge (lab.fleet)
ROLE_SYSTEMD = "systemd"  # systemd as PID 1 in a Debian tree (lab.systemd), only on demand

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
# The fleet: sshd-only hosts on their own bridge and subnet, inside the lab's 198.18.0.0/15.
FLEET_BRIDGE = "rmfleet0"
FLEET_BRIDGE_ADDRESS = "198.18.16.1"
FLEET_PREFIX_LEN = 20
FLEET_SUBNET = "198.18.16.0/20"
MAX_FLEET = 4000

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
_FLEET_RE = re.compile(r"^fleet(\d{4})$")
_FLEET_STATE = LAB_ROOT / "fleet.json"
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
    systemd: bool | None = None  # the systemd host svc1 (lab.systemd): None when not part of the lab

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


# Not among DEFAULT_HOSTS: lab.systemd boots it only when asked (`python -m lab up --systemd`).
SYSTEMD_HOST = HostSpec("svc1", "198.18.0.31", (ROLE_SYSTEMD,))


def bench_host(index: int) -> HostSpec:
    """The ``index``-th extra api host (1-based): bench01 at 198.18.0.101, ..."""
    return HostSpec(f"bench{index:02d}", f"198.18.0.{100 + index}", (ROLE_DOCKER,))


def fleet_host(index: int) -> HostSpec:
    """The ``index``-th fleet host (1-based): fleet0001 at 198.18.16.2, ..., fleet4000."""
    if not 1 <= index <= MAX_FLEET:
        raise LabError(f"fleet host index must be within 1..{MAX_FLEET}")
    address = ipaddress.IPv4Address(FLEET_BRIDGE_ADDRESS) + index
    return HostSpec(f"fleet{index:04d}", str(address), (ROLE_FLEET, ROLE_UFW))


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
