"""The per-host lock: one changing remediation at a time on a host.

The lock is an flock on a file under /run/lock on the host, taken over the run's own connection by a
small shell that holds it until its stdin closes. When the controller dies, the SSH session ends,
stdin closes and the lock is released: no stale lock survives its holder.
"""

from __future__ import annotations

import shlex
from types import TracebackType

from remediations.connection import Process, Remote
from remediations.errors import HostError, LockTimeout

DEFAULT_LOCK_DIR = "/run/lock"
BUSY_EXIT = 75

# $1 lock file, $2 seconds to wait, $3 who we are (written next to the lock for the next waiter).
LOCK_SCRIPT = r"""
lock=$1; wait=$2; holder=$3
mkdir -p "$(dirname "$lock")" || exit 1
exec 9>>"$lock" || exit 1
if ! flock -w "$wait" 9; then
  printf 'BUSY %s\n' "$(cat "$lock.holder" 2>/dev/null || echo unknown)"
  exit 75
fi
printf '%s\n' "$holder" > "$lock.holder"
echo LOCKED
cat >/dev/null
: > "$lock.holder"
"""


class HostLock:
    """Held for the duration of a `with` block; waits at most `wait` seconds to get it."""

    def __init__(self, remote: Remote, holder: str, wait: float, lock_dir: str = DEFAULT_LOCK_DIR):
        self.remote = remote
        self.holder = holder
        self.wait = wait
        self.path = f"{lock_dir.rstrip('/')}/remediations.lock"
        self.process: Process | None = None

    def acquire(self) -> None:
        command = shlex.join(["sh", "-c", LOCK_SCRIPT, "lock", self.path, str(int(self.wait)), self.holder])
        process = self.remote.open_process(command)
        line = process.readline(timeout=self.wait + 15)
        if line == "LOCKED":
            self.process = process
            return
        process.finish(timeout=2)
        if line and line.startswith("BUSY"):
            holder = line[5:].strip() or "unknown"
            raise LockTimeout(
                f"host is locked by another run ({holder}); gave up after {self.wait:.0f}s. "
                "Wait for it to finish, or raise --lock-wait"
            )
        raise HostError(f"could not take the host lock {self.path} (is flock installed?)")

    def release(self) -> None:
        if self.process is not None:
            self.process.finish()
            self.process = None

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
