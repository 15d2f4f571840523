"""The per-host lock: one changing remediation at a time on a host.

The lock is an flock on a file under /run/lock on the host, taken over the run's own connection by a
small shell that holds it as a lease: the controller writes a heartbeat byte every BEAT_INTERVAL
seconds and the shell answers each one. Either side notices the other is gone within a bound:
- the host releases the lock when no heartbeat came for BEAT_RELEASE seconds (the controller died
  or was cut off: TCP alone would keep the dead run's session, and its lock, for hours);
- the controller declares the connection lost when no answer came for BEAT_LOST seconds, sooner
  than the host releases, so a run never goes on believing it holds a lock the host let go. A lost
  connection is never reopened (see `connection.Guard`): the host fails, "may be half-changed".
A host with neither bash nor `timeout(1)` holds the lock until its stdin closes, as before (no bound).
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from types import TracebackType

from remediations.core import interrupt
from remediations.core.errors import HostError, Interrupted, LockTimeout
from remediations.core.remote import Process, Remote

DEFAULT_LOCK_DIR = "/run/lock"
BUSY_EXIT = 75
THEN_END = "@@lock-then-end "
BEAT_INTERVAL = 2.0  # seconds between the controller's heartbeats
BEAT_LOST = 10.0  # the controller gives the connection up after this long without an answer
BEAT_RELEASE = 20  # the host releases the lock after this long without a heartbeat

# $1 lock file, $2 seconds to wait, $3 who we are (written next to the lock for the next waiter),
# $4 a command to run as soon as the lock is held (the remediation's facts: saves a round trip),
# $5 seconds without a heartbeat after which the lock is released (0: hold until stdin closes).
# Children get `9>&-` so that nothing but this shell holds the lock's file descriptor. Every
# process started on the host costs about a millisecond of its CPU per run: the directory is made
# only when missing, and `$4` runs in a subshell (a fork, no new shell). Where the host has bash, the
# lease is read by bash's own timed `read` (the shell execs it, keeping the lock's descriptor), not a
# `timeout` and a `dd` per heartbeat; `timeout` and `dd` where it has none.
LOCK_SCRIPT = r"""
lock=$1; wait=$2; holder=$3; then=${4:-}; beat=${5:-0}
dir=${lock%/*}
[ -d "${dir:-/}" ] || mkdir -p "$dir" || exit 1
exec 9>>"$lock" || exit 1
if ! flock -w "$wait" 9; then
  printf 'BUSY %s\n' "$(cat "$lock.holder" 2>/dev/null || echo unknown)"
  exit 75
fi
printf '%s\n' "$holder" > "$lock.holder"
echo LOCKED
if [ -n "$then" ]; then
  (eval "$then") </dev/null 2>&1 9>&-
  printf '\n%s %s\n' "@@lock-then-end" "$?"
fi
if [ "$beat" -gt 0 ] && command -v bash >/dev/null 2>&1; then
  echo HEARTBEAT
  # bash's read times out by itself: no process per heartbeat (timeout and dd below are two)
  unset BASH_ENV ENV
  exec bash --norc --noprofile -c 'while IFS= read -r -n 1 -t "$1" got; do echo beat; done
: > "$2.holder"' lock "$beat" "$lock"
elif [ "$beat" -gt 0 ] && command -v timeout >/dev/null 2>&1; then
  echo HEARTBEAT
  while got=$(timeout "$beat" dd bs=64 count=1 2>/dev/null 9>&-) && [ -n "$got" ]; do
    echo beat
  done
else
  echo NOHEARTBEAT
  cat >/dev/null 9>&-
fi
: > "$lock.holder"
"""


class HostLock:
    """Held for the duration of a `with` block; waits at most `wait` seconds to get it."""

    def __init__(
        self,
        remote: Remote,
        holder: str,
        wait: float,
        lock_dir: str = DEFAULT_LOCK_DIR,
        then: str = "",
        release_after: int = BEAT_RELEASE,
    ):
        self.remote = remote
        self.holder = holder
        self.wait = wait
        self.path = f"{lock_dir.rstrip('/')}/remediations.lock"
        self.process: Process | None = None
        self.then = then
        self.release_after = release_after  # the host's side of the lease, in seconds
        self.lost_after = min(BEAT_LOST, release_after / 2)  # the controller's side: always sooner
        self.interval = min(BEAT_INTERVAL, release_after / 5)
        self.output: str | None = None  # what `then` printed (stdout and stderr), once the lock is held
        self.heartbeat = False  # whether the host answers heartbeats (has timeout(1))
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def acquire(self) -> None:
        argv = ["sh", "-c", LOCK_SCRIPT, "lock", self.path, str(int(self.wait)), self.holder, self.then,
                str(self.release_after)]  # fmt: skip
        process = self.remote.open_process(shlex.join(argv))
        line = self._first_line(process)
        if line == "LOCKED":
            self.process = process
            if self.then:
                self.output = self._then_output(process)
            mode = process.readline(timeout=15)
            if mode == "HEARTBEAT":
                self.heartbeat = True
                self._beater = threading.Thread(
                    target=self._beat, name=f"lock-{self.remote.name}", daemon=True
                )
                self._beater.start()
            elif mode != "NOHEARTBEAT":
                self.remote.lose(f"the host lock on {self.remote.name} stopped answering once taken")
            return
        process.finish(timeout=2)
        if line and line.startswith("BUSY"):
            holder = line[5:].strip() or "unknown"
            raise LockTimeout(
                f"host is locked by another run ({holder}); gave up after {self.wait:.0f}s. "
                "Wait for it to finish, or raise --lock-wait"
            )
        raise HostError(f"could not take the host lock {self.path} (is flock installed?)")

    def _first_line(self, process: Process) -> str | None:
        """LOCKED or BUSY; waiting stops early when the run is told to stop or the process ends."""
        give_up = time.monotonic() + self.wait + 15
        while time.monotonic() < give_up:
            line = process.readline(timeout=0.5)
            if line is not None:
                return line
            stopping = interrupt.requested()
            if stopping:
                process.finish(timeout=2)
                raise Interrupted(f"interrupted by {stopping} while waiting for the host lock")
            if process.ended:
                return process.readline(timeout=0.1)
        return None

    def _then_output(self, process: Process) -> str | None:
        """The output of `then`, up to its end marker; None when it did not finish in time (120 s
        without output). Taken in as a whole, not a line at a time (the facts of a firewall are
        hundreds of lines: a call per line was a millisecond of the controller's CPU per host)."""
        lines = process.read_through(THEN_END, silence=120)
        if lines is None:
            return None
        lines.pop()  # the marker
        return "\n".join(lines[:-1] if lines and lines[-1] == "" else lines) + "\n"

    def _beat(self) -> None:
        """Watch the answers to the heartbeats; on silence, the connection is lost (and closed).

        Sending is another thread's job (`_send_beats`): a send can block for as long as TCP does
        (a partition while another channel's big write fills the socket holds paramiko's write
        lock), and the watch must not block with it."""
        process = self.process
        assert process is not None
        sender = threading.Thread(target=self._send_beats, args=(process,), daemon=True,
                                  name=f"lock-send-{self.remote.name}")  # fmt: skip
        sender.start()
        last = time.monotonic()
        while not self._stop.is_set():
            answer = process.readline(timeout=0.5)
            if answer == "beat":
                last = time.monotonic()
                continue
            if self._stop.is_set():
                return
            if answer is None and process.ended:
                self._lost(f"the host lock on {self.remote.name} ended")
                return
            if time.monotonic() - last >= self.lost_after + self.interval:
                silence = f"{self.lost_after + self.interval:.0f}s"
                self._lost(f"no answer from {self.remote.name} for {silence} (link or host down)")
                return

    def _send_beats(self, process: Process) -> None:
        while not self._stop.wait(self.interval):
            if not process.send(b"b"):
                self._lost("the host lock's channel can no longer be written")
                return

    def _lost(self, reason: str) -> None:
        if not self._stop.is_set():
            self.remote.lose(f"{reason}; the host releases the run's lock within {self.release_after}s")

    def release(self) -> None:
        """End the lease: close the lock shell's stdin first (it releases the lock and exits, and the
        end of its output wakes the watcher at once instead of at its next poll), then wait for the
        watcher."""
        self._stop.set()
        if self.process is not None:
            with contextlib.suppress(Exception):  # a lost connection has nothing left to close
                self.process.finish()
            self.process = None
        if self._beater is not None:
            self._beater.join(timeout=self.lost_after + self.interval + 5)
            self._beater = None

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
