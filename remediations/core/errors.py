"""Errors that carry what explains them.

`UsageError` is bad input: the front end prints its one line and exits 2 before any host is touched.
`HostError` is a failure on one host; it carries the command result that explains it.
"""

from __future__ import annotations

from dataclasses import dataclass


class UsageError(Exception):
    """Bad input (arguments, inventory): one clear line, exit code 2, nothing run."""

    exit_code = 2


@dataclass(frozen=True)
class CommandResult:
    """What a remote or local command left behind."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 5) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for a failure message."""
        text = self.stderr.strip() or self.stdout.strip()
        return "\n".join(text.splitlines()[-lines:])


class HostError(Exception):
    """A step failed on a host; `result` is the command that explains it, when there is one."""

    def __init__(self, message: str, result: CommandResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class HostUnreachable(HostError):
    """The host could not be connected to (network, sshd down, auth)."""


class HostKeyRefused(HostError):
    """The host's key is unknown or changed: the host is refused, never trusted silently."""


class LockTimeout(HostError):
    """Another run holds the host's lock for longer than we were willing to wait."""


class ConnectionLost(HostError):
    """The connection (or the host lock that rides on it) died during the run. Never followed by a
    silent reconnect: the host may be half-changed and the run no longer holds its lock."""


class DeadlineExceeded(HostError):
    """The remediation's own deadline on this host passed; nothing more is sent to the host."""


class Interrupted(HostError):
    """The run was told to stop (SIGINT, SIGTERM): no new step or command is started."""
