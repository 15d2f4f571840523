"""Mount and UTS namespaces: a private filesystem view (and hostname) per host."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from lab.base import (
    _MNT_DIR,
    _UTS_DIR,
    CRON_SPOOL,
    ROLE_POSTGRES,
    STATE_DIR,
    HostSpec,
    LabError,
    _is_ns_handle,
    _run,
)
from lab.procs import _stop_host_processes

# ---------------------------------------------------------------------------------------------
# Mount namespaces: a private filesystem view per host
# ---------------------------------------------------------------------------------------------

# Runs inside the new mount namespace. "$1".."$6": sources for /srv, /etc/ufw, /etc/default/ufw,
# /var/lib/docker, /var/lib/postgresql, /var/log.
_MOUNT_SCRIPT = r"""
set -eu
# drop this copy's references to other hosts' namespaces: a lazy umount detaches a whole subtree
# in one call (umount -R makes one per mount: minutes when the fleet's thousand hosts run)
umount -l /run/netns /run/remediations-lab/mnt 2>/dev/null || true
for f in /run/remediations-lab/uts/*; do
    # another host built in parallel may have its handle made but not bound yet: not an error
    if [ -e "$f" ]; then umount -l /run/remediations-lab/uts/* 2>/dev/null || true; fi; break
done
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
