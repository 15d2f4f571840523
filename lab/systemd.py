"""The lab's systemd host: svc1, a Debian 12 tree booted by systemd-nspawn, systemd as its PID 1.

Only on demand (``python -m lab up --systemd``, or the lab tests' fixture): the default lab does not
start it, so its bring-up time does not grow. The tree is made once by debootstrap (minbase plus
systemd, dbus, openssh-server, python3, curl; a few minutes, apt reaching Debian's mirror) and kept
under LAB_ROOT/systemd/rootfs; every later boot takes a few seconds.

svc1 is a lab host like the others on the network: a network namespace with its veth on the bridge
(198.18.0.31), which ``systemd-nspawn --network-namespace-path`` boots the tree in, with its own
mount, PID, UTS and IPC namespaces. The root is ``--volatile=overlay``: the tree is the lower layer
and every change made while it runs (a test's unit files, the journal) is gone at the next boot.
Before a boot the lab writes into the tree: the lab's client key (root's authorized_keys), svc1's
host key (known_hosts holds it), an sshd drop-in (key auth only, no PAM: a container has no
loginuid to set), /etc/hosts and an empty resolv.conf (no DNS: a lab host reaches lab addresses
only), and ``shop-health.service`` (lab/assets/systemd: a Python HTTP health endpoint on
127.0.0.1:8000 that fails to start while /etc/shop/fail-start exists).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lab.base import (
    ASSETS,
    LAB_ROOT,
    SSH_KEY,
    SYSTEMD_HOST,
    HostSpec,
    LabError,
    _env,
    _file_tail,
    _is_ns_handle,
    _ns_id,
    _run,
    _tcp_open,
    _wait_for,
    _write_if_changed,
    log,
)
from lab.net import _ensure_host_net, _remove_host_net
from lab.procs import _scan, _stop_pids
from lab.ssh import _ensure_sshd_files, _host_key

SYSTEMD_ROOT = LAB_ROOT / "systemd"
ROOTFS = SYSTEMD_ROOT / "rootfs"
UNIT = "shop-health.service"
HEALTH_URL = "http://127.0.0.1:8000/health"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "curl")
_COMPLETE = ROOTFS / ".rmlab-complete"  # written last: a tree without it is rebuilt
_WANTED = SYSTEMD_ROOT / "wanted"  # present while svc1 is part of the lab (known_hosts, down)
_BOOT_TIMEOUT = 90


def ensure_tree() -> Path:
    """The Debian tree, made by debootstrap when it is not there (or a build was cut short)."""
    if _COMPLETE.exists():
        return ROOTFS
    if shutil.which("debootstrap") is None or shutil.which("systemd-nspawn") is None:
        raise LabError("debootstrap and systemd-nspawn are needed (apt-get install debootstrap "
                       "systemd-container; scripts/bootstrap does it)")  # fmt: skip
    building = SYSTEMD_ROOT / "rootfs.building"
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(ROOTFS, ignore_errors=True)
    SYSTEMD_ROOT.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log.info("systemd host: debootstrap of Debian 12 into %s (once; a few minutes)", ROOTFS)
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(building)]
    done = _run(argv, check=False, timeout=1800)
    (SYSTEMD_ROOT / "debootstrap.log").write_bytes(done.stdout + done.stderr)
    if done.returncode != 0:
        logfile = SYSTEMD_ROOT / "debootstrap.log"
        raise LabError(f"debootstrap failed (exit {done.returncode}); see {logfile}:\n{_file_tail(logfile)}")
    building.rename(ROOTFS)
    _COMPLETE.write_text("debootstrap bookworm minbase " + ",".join(PACKAGES) + "\n")
    log.info("systemd host: tree ready in %.0fs", time.monotonic() - t0)
    return ROOTFS


def _provision(host: HostSpec) -> None:
    """What the lab puts into the tree before a boot (idempotent)."""
    root = ROOTFS
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    _write_if_changed(ssh_dir / "authorized_keys", SSH_KEY.with_suffix(".pub").read_bytes(), 0o600)
    key = _host_key(host)
    _write_if_changed(root / "etc/ssh/ssh_host_ed25519_key", key.read_bytes(), 0o600)
    _write_if_changed(root / "etc/ssh/ssh_host_ed25519_key.pub", key.with_suffix(".pub").read_bytes())
    dropin = (
        "# Written by the lab (lab/systemd.py); do not edit.\n"
        f"ListenAddress {host.address}\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUseDNS no\nMaxStartups 100:30:200\nMaxSessions 50\n"
    )
    _write_if_changed(root / "etc/ssh/sshd_config.d/rmlab.conf", dropin.encode())
    _write_if_changed(root / "etc/hostname", f"{host.name}\n".encode())
    # Names from files only: the lab has no DNS, and debootstrap copied this machine's resolver
    # (which a lab host must never ask: only lab addresses are reached from a lab host).
    hosts = f"127.0.0.1 localhost\n::1 localhost\n{host.address} {host.name}\n"
    _write_if_changed(root / "etc/hosts", hosts.encode())
    _write_if_changed(root / "etc/resolv.conf", b"# The lab has no DNS (lab/systemd.py): see /etc/hosts.\n")
    assets = ASSETS / "systemd"
    _write_if_changed(root / "opt/shop/shop-health.py", (assets / "shop-health.py").read_bytes(), 0o755)
    _write_if_changed(root / "etc/systemd/system" / UNIT, (assets / UNIT).read_bytes())
    wants = root / "etc/systemd/system/multi-user.target.wants" / UNIT
    if not wants.is_symlink():
        wants.parent.mkdir(parents=True, exist_ok=True)
        wants.symlink_to(f"/etc/systemd/system/{UNIT}")
    (root / "etc/shop").mkdir(parents=True, exist_ok=True)


def _nspawn_pid(host: HostSpec) -> int | None:
    """The systemd-nspawn process running `host` (found by its marker in the environment)."""
    for proc in _scan(with_marker=True):
        if proc.comm == "systemd-nspawn" and proc.marker == host.name:
            return proc.pid
    return None


def leader(host: HostSpec = SYSTEMD_HOST) -> int | None:
    """PID (on this machine) of the host's PID 1, systemd, or None when it does not run."""
    nspawn = _nspawn_pid(host)
    if nspawn is None:
        return None
    for proc in _scan():
        if proc.ppid == nspawn and proc.comm == "systemd":
            return proc.pid
    return None


def exec_in(
    argv: list[str], *, host: HostSpec = SYSTEMD_HOST, input: bytes | None = None, check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` inside the running systemd host, in all its namespaces (tests set faults up so)."""
    pid = leader(host)
    if pid is None:
        raise LabError(f"{host.name} (systemd) is not running: python -m lab up --systemd")
    return _run(["nsenter", "-t", str(pid), "-a", "--", *argv], input=input, check=check, timeout=timeout)


def _running(host: HostSpec) -> bool:
    pid = leader(host)
    if pid is None or not _is_ns_handle(host.netns):
        return False
    return _ns_id(f"/proc/{pid}/ns/net") == _ns_id(host.netns)


def _system_state(host: HostSpec) -> str:
    done = exec_in(["systemctl", "is-system-running"], host=host, check=False, timeout=20)
    return done.stdout.decode(errors="replace").strip()


def _boot(host: HostSpec) -> None:
    console = host.dir / "console.log"
    argv = ["systemd-nspawn", "--quiet", "-D", str(ROOTFS), "--boot", f"--machine={host.name}",
            "--register=no", "--keep-unit", "--volatile=overlay", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", f"--network-namespace-path={host.netns}", "--console=read-only"]  # fmt: skip
    with console.open("wb") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         env=_env(host.name), cwd="/", start_new_session=True)  # fmt: skip
    try:
        _wait_for(f"{host.name} booting (systemd)", lambda: leader(host) is not None, 30, 0.1)
        _wait_for(f"sshd on {host.address}:22", lambda: _tcp_open(host.address, 22), _BOOT_TIMEOUT, 0.1)
        _wait_for(f"{host.name} reaching running",
                  lambda: _system_state(host) in ("running", "degraded"), _BOOT_TIMEOUT, 0.2)  # fmt: skip
    except LabError as exc:
        raise LabError(f"{exc}\nconsole {console}:\n{_file_tail(console)}") from None
    state = _system_state(host)
    if state != "running":
        failed = exec_in(["systemctl", "--failed", "--no-legend", "--plain"], host=host, check=False)
        raise LabError(f"{host.name}: systemd is {state}: {failed.stdout.decode(errors='replace').strip()}")


def ensure(host: HostSpec = SYSTEMD_HOST) -> HostSpec:
    """svc1 up: the tree (debootstrap once), its network, systemd booted, sshd answering. The caller
    holds the lab lock and has made the bridge and the client key."""
    t0 = time.monotonic()
    ensure_tree()
    host.dir.mkdir(parents=True, exist_ok=True)
    _ensure_sshd_files(host)
    SYSTEMD_ROOT.mkdir(parents=True, exist_ok=True)
    _WANTED.touch()
    _ensure_host_net(host)
    if _running(host) and _tcp_open(host.address, 22):
        return host
    stop(host)
    _ensure_host_net(host)
    _provision(host)
    _boot(host)
    log.info("systemd host %s booted in %.1fs", host.name, time.monotonic() - t0)
    return host


def stop(host: HostSpec = SYSTEMD_HOST) -> None:
    """Shut svc1 down (nspawn passes SIGTERM on as systemd's clean shutdown), then anything left."""
    nspawn = _nspawn_pid(host)
    if nspawn is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn, signal.SIGTERM)
        with contextlib.suppress(LabError):
            _wait_for(f"{host.name} shutting down", lambda: _nspawn_pid(host) is None, 20, 0.1)
        pid = _nspawn_pid(host)
        if pid is not None:
            _stop_pids({pid}, signal.SIGKILL, 3)
    if _is_ns_handle(host.netns):
        inside = [p.pid for p in _scan() if p.netns == _ns_id(host.netns)]
        if inside:
            _stop_pids(set(inside), signal.SIGKILL, 3)


def remove(host: HostSpec = SYSTEMD_HOST) -> bool:
    """Stop svc1 and remove its network; True when it was part of the lab."""
    wanted = _WANTED.exists()
    stop(host)
    _remove_host_net(host)
    _WANTED.unlink(missing_ok=True)
    return wanted


def wanted_hosts() -> list[HostSpec]:
    """[svc1] while it is part of the lab (its key belongs in known_hosts), else []."""
    return [SYSTEMD_HOST] if _WANTED.exists() else []


def running() -> bool | None:
    """None when svc1 is not part of the lab, else whether it runs and answers on :22."""
    if not _WANTED.exists():
        return None
    return _running(SYSTEMD_HOST) and _tcp_open(SYSTEMD_HOST.address, 22, 0.3)
