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
THEN_END = "@@lock-then-end "

# $1 lock file, $2 seconds to wait, $3 who we are (written next to the lock for the next waiter),
# $4 a command to run as soon as the lock is held (the remediation's facts: saves a round trip).
LOCK_SCRIPT = r"""
lock=$1; wait=$2; holder=$3; then=${4:-}
mkdir -p "$(dirname "$lock")" || exit 1
exec 9>>"$lock" || exit 1
if ! flock -w "$wait" 9; then
  printf 'BUSY %s\n' "$(cat "$lock.holder" 2>/dev/null || echo unknown)"
  exit 75
fi
printf '%s\n' "$holder" > "$lock.holder"
echo LOCKED
if [ -n "$then" ]; then
  sh -c "$then" </dev/null 2>&1
  printf '\n%s %s\n' "@@lock-then-end" "$?"
fi
cat >/dev/null
: > "$lock.holder"
"""


class HostLock:
    """Held for the duration of a `with` block; waits at most `wait` seconds to get it."""

    def __init__(
        self, remote: Remote, holder: str, wait: float, lock_dir: str = DEFAULT_LOCK_DIR, then: str = ""
    ):
        self.remote = remote
        self.holder = holder
        self.wait = wait
        self.path = f"{lock_dir.rstrip('/')}/remediations.lock"
        self.process: Process | None = None
        self.then = then
        self.output: str | None = None  # what `then` printed (stdout and stderr), once the lock is held

    def acquire(self) -> None:
        argv = ["sh", "-c", LOCK_SCRIPT, "lock", self.path, str(int(self.wait)), self.holder, self.then]
        process = self.remote.open_process(shlex.join(argv))
        line = process.readline(timeout=self.wait + 15)
        if line == "LOCKED":
            self.process = process
            if self.then:
                self.output = self._then_output(process)
            return
        process.finish(timeout=2)
        if line and line.startswith("BUSY"):
            holder = line[5:].strip() or "unknown"
            raise LockTimeout(
                f"host is locked by another run ({holder}); gave up after {self.wait:.0f}s. "
                "Wait for it to finish, or raise --lock-wait"
            )
        raise HostError(f"could not take the host lock {self.path} (is flock installed?)")

    def _then_output(self, process: Process) -> str | None:
        """The output of `then`, up to its end marker; None when it did not finish in time."""
        lines: list[str] = []
        while True:
            line = process.readline(timeout=120)
            if line is None:
                return None
            if line.startswith(THEN_END):
                return "\n".join(lines[:-1] if lines and lines[-1] == "" else lines) + "\n"
            lines.append(line)

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
