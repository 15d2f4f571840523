"""What runs commands on a host: the `Remote` protocol, its `Guard` (deadline, interrupt, lost
connection), and the local implementation. No paramiko here, so that `inv --list` stays quick; SSH
is `core.connection`.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from remediations.core import interrupt
from remediations.core.errors import (
    CommandResult,
    ConnectionLost,
    DeadlineExceeded,
    HostError,
    Interrupted,
)
from remediations.core.inventory import Host

DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")


CONNECT_TIMEOUT = 10.0


TIMED_OUT = 124


COMMAND_TIMEOUT = 600.0  # a command given no timeout of its own


CHANNEL_TIMEOUT = 30.0  # opening a channel and starting a command on it


KEEPALIVE_INTERVAL = 5  # seconds of silence before the client sends an SSH keepalive


class Guard:
    """What may still be sent to one host in this run.

    Nothing once the run was told to stop (`interrupt`), once the host's deadline passed, or once
    the connection was lost: a lost connection is never silently reopened, because the run's host
    lock rode on it and the host may be half-changed.
    """

    def __init__(self) -> None:
        self.deadline: float | None = None  # time.monotonic() past which nothing is sent
        self.budget = 0.0  # the deadline's length, for messages
        self.lost: str | None = None  # why the connection is gone; first reason wins
        self._lock = threading.Lock()

    def set_deadline(self, seconds: float | None) -> None:
        self.budget = seconds or 0.0
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def lose(self, reason: str) -> bool:
        """Mark the connection lost; False if it already was."""
        with self._lock:
            if self.lost is not None:
                return False
            self.lost = reason
            return True

    def check(self) -> None:
        """Raise unless a new command may be sent now."""
        if self.lost is not None:
            raise ConnectionLost(self.lost)
        name = interrupt.requested()
        if name is not None:
            raise Interrupted(f"interrupted by {name}")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(self.expired())

    def expired(self) -> str:
        return f"the run's deadline on this host ({self.budget:.0f}s) passed; nothing more was sent to it"

    def admit(self, timeout: float | None) -> tuple[float, bool]:
        """The seconds the next command may take, and whether the deadline (not its own timeout)
        is what bounds it; raises when nothing may be sent."""
        self.check()
        wanted = COMMAND_TIMEOUT if timeout is None else timeout
        if self.deadline is None:
            return wanted, False
        remaining = self.deadline - time.monotonic()
        return (remaining, True) if remaining < wanted else (wanted, False)


class Remote(Protocol):
    """What a remediation may do on a host."""

    name: str
    guard: Guard

    def run(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult: ...

    def open_process(self, command: str) -> Process: ...

    def forward(self, host: str, port: int) -> AbstractContextManager[tuple[str, int]]:
        """A local address whose connections reach host:port as the host sees it (in a `with`)."""
        ...

    def lose(self, reason: str) -> None:
        """The connection is lost for the rest of the run (see `Guard`)."""
        ...

    def close(self) -> None: ...


class Process(Protocol):
    """A long-running command whose stdin we hold (the host lock is one)."""

    def readline(self, timeout: float) -> str | None: ...

    def read_through(self, prefix: str, silence: float) -> list[str] | None:
        """The lines up to the first that starts with `prefix`, that one last (None: the output
        ended, or was silent for `silence` seconds, before it)."""
        ...

    def send(self, data: bytes) -> bool:
        """Write to the process's stdin; False when it can no longer be written."""
        ...

    @property
    def ended(self) -> bool:
        """The process exited (or its channel closed)."""
        ...

    def finish(self, timeout: float = 10.0) -> None: ...


def wrap_become(host: Host, command: str) -> str:
    """Run `command` through sudo when the inventory asks for privilege escalation."""
    if not host.become:
        return command
    return shlex.join(["sudo", "-n", "-H", "-u", host.become_user, "--", "sh", "-c", command])


class LocalRemote:
    """The controller itself (`ansible_connection: local`): no SSH."""

    def __init__(self, host: Host) -> None:
        self.name = host.name
        self.host = host
        self.guard = Guard()

    def open(self) -> None:
        """Nothing to connect."""

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        timeout, by_deadline = self.guard.admit(timeout)
        try:
            done = subprocess.run(
                ["sh", "-c", wrap_become(self.host, command)],
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            if by_deadline:
                raise DeadlineExceeded(self.guard.expired()) from None
            out = exc.stdout or b""
            return CommandResult(
                command, TIMED_OUT, out.decode(errors="replace"), f"timed out after {timeout:.0f}s"
            )
        return CommandResult(
            command,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )

    def run_stream(
        self, command: str, chunks: Iterable[bytes], *, timeout: float | None = None
    ) -> CommandResult:
        """`run` with stdin fed from `chunks` as they come (see SSHRemote.run_stream); past the
        timeout the command is killed. When `chunks` raises, the command is killed and the
        exception propagates."""
        timeout, by_deadline = self.guard.admit(timeout)
        proc = subprocess.Popen(["sh", "-c", wrap_become(self.host, command)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip

        def kill() -> None:  # the shell and what it started: they hold the output open
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        output: dict[str, bytes] = {}
        readers = [threading.Thread(target=lambda n=n, f=f: output.__setitem__(n, f.read()), daemon=True)
                   for n, f in (("out", proc.stdout), ("err", proc.stderr))]  # fmt: skip
        for reader in readers:
            reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill()

        killer = threading.Timer(timeout, expire)
        killer.daemon = True
        killer.start()
        assert proc.stdin is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            code = proc.wait()
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
            for reader in readers:
                reader.join()
        out, err = (output.get(n, b"").decode(errors="replace") for n in ("out", "err"))
        if expired.is_set() and by_deadline:
            raise DeadlineExceeded(self.guard.expired())
        if expired.is_set():
            return CommandResult(command, TIMED_OUT, out, f"timed out after {timeout:.0f}s")
        return CommandResult(command, code, out, err)

    def open_process(self, command: str) -> LocalProcess:
        self.guard.check()
        return LocalProcess(command, self.host)

    def lose(self, reason: str) -> None:
        self.guard.lose(reason)

    @contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """The controller is the host: its own address is reached directly."""
        yield (host, port)

    def close(self) -> None:
        """Nothing to close."""


class LineReader:
    """Lines of a long-running command's stdout, for `Process`: a subclass keeps `self.lines` and takes
    in each piece of output in `_chunk`."""

    lines: Lines

    def readline(self, timeout: float) -> str | None:
        """One line of stdout, or None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while not self.lines.ready and self._chunk(deadline):
            pass
        return self.lines.pop()

    def read_through(self, prefix: str, silence: float) -> list[str] | None:
        """Every line of stdout up to the first that starts with `prefix`, that one last; None when
        the output ends, or nothing more comes for `silence` seconds, before it."""
        while (taken := self.lines.take_through(prefix)) is None:
            if not self._chunk(time.monotonic() + silence):
                return None
        return taken

    def _chunk(self, deadline: float) -> bool:
        """Wait for the next piece of stdout and take it in; False at the end of the output or
        when nothing came before `deadline`."""
        raise NotImplementedError


class LocalProcess(LineReader):
    def __init__(self, command: str, host: Host) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", wrap_become(host, command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines = Lines()

    def _chunk(self, deadline: float) -> bool:
        """Wait for the next piece of stdout (read unbuffered: a select on a buffered reader would
        miss lines already in its buffer) and take it in; False at the end of the output or when
        nothing came before `deadline`."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self.lines.feed(chunk)
        return True

    @property
    def ended(self) -> bool:
        return self.proc.poll() is not None

    def send(self, data: bytes) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def finish(self, timeout: float = 10.0) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Lines:
    """A process's output as lines, each chunk split once when it arrives: an output of thousands of
    lines read line by line stays linear (cutting one line at a time off a buffer copies the rest of
    it every time). A last line without its newline is never returned."""

    def __init__(self) -> None:
        self._complete: deque[str] = deque()
        self._partial = b""
        self._scanned = 0  # complete lines `take_through` looked at already

    @property
    def ready(self) -> bool:
        return bool(self._complete)

    def feed(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        self._complete.extend(line.decode(errors="replace") for line in complete)

    def pop(self) -> str | None:
        """The first complete line, or None until one arrived."""
        if not self._complete:
            return None
        self._scanned = max(self._scanned - 1, 0)
        return self._complete.popleft()

    def take_through(self, prefix: str) -> list[str] | None:
        """The complete lines up to the first that starts with `prefix`, that one included, taken
        off; None, nothing taken, until such a line arrived. Each line is looked at once, however
        often this is asked while the output comes in."""
        complete = self._complete
        for index in range(self._scanned, len(complete)):
            if complete[index].startswith(prefix):
                taken = [complete.popleft() for _ in range(index + 1)]
                self._scanned = 0
                return taken
        self._scanned = len(complete)
        return None


def must(result: CommandResult, what: str) -> CommandResult:
    """Raise HostError with the output tail when a command failed."""
    if not result.ok:
        raise HostError(f"{what} failed (exit {result.exit_code}): {result.tail()}", result)
    return result


def connect(host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> Remote:
    """An open connection to `host` (the engine's default): the local machine here, SSH through
    `core.connection`, imported only then: paramiko and tenacity cost a run that never leaves the
    controller (the S3 tasks, a local host) a fifth of a second of start-up."""
    if not host.is_local:
        from remediations.core import connection

        return connection.connect(host, connect_timeout)
    remote = LocalRemote(host)
    remote.open()
    return remote
