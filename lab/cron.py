"""A real cron daemon on a host, for the tests of cron-installed remediations."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from lab.base import CRON_SPOOL, LabError, _env, _in_host, _is_ns_handle, _ns_argv
from lab.procs import _scan, _stop_pids, _with_descendants
from lab.state import _host, _require_root

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
