"""Connections to inventory hosts: Fabric over SSH with strict host keys, or the local machine.

One `Remote` per host per run; every step of the run uses it. Commands are shell text built by the
caller with every argument quoted (`shlex.join` / `shlex.quote`); data that must not appear on a
command line (secrets) travels on stdin.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

import paramiko
from tenacity import Retrying as _Retrying
from tenacity import (
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from remediations.errors import CommandResult, HostError, HostKeyRefused, HostUnreachable
from remediations.inventory import Host

if TYPE_CHECKING:
    from fabric import Connection

DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
CONNECT_TIMEOUT = 10.0
TIMED_OUT = 124


class Remote(Protocol):
    """What a remediation may do on a host."""

    name: str

    def run(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult: ...

    def open_process(self, command: str) -> Process: ...

    def forward(self, host: str, port: int) -> AbstractContextManager[tuple[str, int]]:
        """A local address whose connections reach host:port as the host sees it (in a `with`)."""
        ...

    def close(self) -> None: ...


class Process(Protocol):
    """A long-running command whose stdin we hold (the host lock is one)."""

    def readline(self, timeout: float) -> str | None: ...

    def finish(self, timeout: float = 10.0) -> None: ...


def wrap_become(host: Host, command: str) -> str:
    """Run `command` through sudo when the inventory asks for privilege escalation."""
    if not host.become:
        return command
    return shlex.join(["sudo", "-n", "-H", "-u", host.become_user, "--", "sh", "-c", command])


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _StrictPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse unknown keys with a message that says how to trust them; or accept-new."""

    def __init__(self, host: Host, files: list[str], accept_new: bool) -> None:
        self.host = host
        self.files = files
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.accept_new and self.files:
            path = self.files[0]
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            return
        port = self.host.port or 22
        target = self.host.address if port == 22 else f"-p {port} {self.host.address}"
        known = self.files[0] if self.files else "~/.ssh/known_hosts"
        raise HostKeyRefused(
            f"host key {key.get_name()} {fingerprint(key)} of {hostname} is not in "
            f"{', '.join(self.files) or 'any known_hosts file'}; if that fingerprint is right, "
            f"trust it with: ssh-keyscan -t {key.get_name()} {target} >> {known}"
        )


def _is_transient(exc: BaseException) -> bool:
    """Connection errors worth another try; never a refused host key or failed authentication."""
    if isinstance(exc, HostKeyRefused | paramiko.BadHostKeyException | paramiko.AuthenticationException):
        return False
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | socket.timeout | EOFError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower()


def connect_retrying(attempts: int = 3, max_delay: float = 20.0) -> _Retrying:
    return _Retrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_delay),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )


class SSHRemote:
    """A host reached over SSH through a Fabric connection with strict host key checking."""

    def __init__(self, host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.name = host.name
        self.host = host
        self.connection = self._build(host, connect_timeout)

    @staticmethod
    def _build(host: Host, connect_timeout: float, via_jump: bool = False) -> Connection:
        from fabric import Connection

        options = host.ssh_options
        connect_kwargs: dict[str, object] = {}
        if host.key_file:
            connect_kwargs["key_filename"] = [host.key_file]
        gateway = None
        if options.proxy_jump and not via_jump:
            gateway = SSHRemote._jump(host, options.proxy_jump, connect_timeout)
        conn = Connection(
            host.address,
            user=host.user,
            port=host.port,
            connect_timeout=int(connect_timeout),
            connect_kwargs=connect_kwargs,
            gateway=gateway,
        )
        files = list(options.known_hosts_files)
        if not files:
            configured = conn.ssh_config.get("userknownhostsfile", "")
            files = [os.path.expanduser(f) for f in str(configured).split()] or [
                os.path.expanduser(f) for f in DEFAULT_KNOWN_HOSTS
            ]
        for path in files:
            if os.path.exists(path):
                conn.client.load_system_host_keys(path)
        conn.client.set_missing_host_key_policy(
            _StrictPolicy(host, files, options.host_key_policy == "accept-new")
        )
        return conn

    @staticmethod
    def _jump(host: Host, spec: str, connect_timeout: float) -> Connection:
        """A jump host named by ProxyJump ([user@]host[:port]); checked as strictly as the target."""
        user, _, hostport = spec.rpartition("@")
        address, _, port = hostport.partition(":")
        jump_vars = {k: v for k, v in host.vars.items() if k in ("ansible_ssh_private_key_file",)}
        jump_vars.update(ansible_host=address, ansible_user=user or host.user)
        if port:
            jump_vars["ansible_port"] = int(port)
        common = host.vars.get("ansible_ssh_common_args", "")
        jump_vars["ansible_ssh_common_args"] = " ".join(
            w for w in shlex.split(str(common)) if "ProxyJump" not in w and "ProxyCommand" not in w
        )
        jump = Host(f"{host.name} (jump {address})", jump_vars, (), host.source)
        return SSHRemote._build(jump, connect_timeout, via_jump=True)

    def open(self) -> None:
        """Connect, retrying only transient network errors, with an explicit stop."""
        try:
            for attempt in connect_retrying():
                with attempt:
                    self.connection.open()
        except HostKeyRefused:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRefused(
                f"host key of {exc.hostname} CHANGED: got {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}; "
                "refusing to connect. If the host was really reinstalled, remove the old line "
                f"(ssh-keygen -R {exc.hostname} -f FILE) and trust the new key"
            ) from None
        except paramiko.AuthenticationException as exc:
            raise HostUnreachable(f"SSH authentication failed for {self.host.address}: {exc}") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HostUnreachable(f"cannot connect to {self.host.address}: {reason}") from None

    @property
    def transport(self) -> paramiko.Transport:
        if not self.connection.is_connected:
            self.open()
        transport = self.connection.client.get_transport()
        if transport is None:
            raise HostUnreachable(f"connection to {self.host.address} is closed")
        return transport

    def _channel(self, command: str) -> paramiko.Channel:
        try:
            channel = self.transport.open_session()
            channel.exec_command(wrap_become(self.host, command))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(f"lost the connection to {self.host.address}: {exc}") from None
        return channel

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        channel = self._channel(command)
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if channel.closed and channel.eof_received and not channel.recv_ready():
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                channel.close()
                return CommandResult(
                    command, TIMED_OUT, out.decode(errors="replace"), f"timed out after {timeout:.0f}s"
                )
            select.select([channel], [], [], min(remaining or 1.0, 1.0))
        code = channel.recv_exit_status()
        channel.close()
        return CommandResult(command, code, out.decode(errors="replace"), err.decode(errors="replace"))

    def open_process(self, command: str) -> SSHProcess:
        return SSHProcess(self._channel(command))

    @contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """Local port forwarding over this connection (SSH direct-tcpip), on 127.0.0.1 only."""
        forwarder = _Forwarder(self.transport, (host, port))
        try:
            yield forwarder.address
        finally:
            forwarder.close()

    def close(self) -> None:
        self.connection.close()


class _Forwarder:
    """Accepts on an ephemeral loopback port; each connection is piped through its own SSH channel."""

    def __init__(self, transport: paramiko.Transport, destination: tuple[str, int]) -> None:
        self.transport = transport
        self.destination = destination
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.address: tuple[str, int] = self.server.getsockname()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, peer = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._pipe, client, peer)

    def _pipe(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = self.transport.open_channel("direct-tcpip", self.destination, peer, timeout=15)
        except (paramiko.SSHException, OSError, EOFError):
            client.close()  # the client sees the connection closed: its own error says so
            return
        with client, channel:
            while not self.stop.is_set():
                ready, _, _ = select.select([client, channel], [], [], 0.2)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    client.sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        for thread in self.threads:
            thread.join(timeout=2)


class SSHProcess:
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.buffer = b""

    def readline(self, timeout: float) -> str | None:
        """One line of stdout, or None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.channel.recv_ready():
                chunk = self.channel.recv(4096)
                if not chunk:
                    break
                self.buffer += chunk
                continue
            if self.channel.exit_status_ready() and not self.channel.recv_ready():
                break
            select.select([self.channel], [], [], min(remaining, 0.5))
        if b"\n" not in self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def finish(self, timeout: float = 10.0) -> None:
        """Close stdin (the process ends on EOF) and wait for it to exit."""
        try:
            self.channel.shutdown_write()
            deadline = time.monotonic() + timeout
            while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            self.channel.close()


class LocalRemote:
    """The controller itself (`ansible_connection: local`): no SSH."""

    def __init__(self, host: Host) -> None:
        self.name = host.name
        self.host = host

    def open(self) -> None:
        """Nothing to connect."""

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        try:
            done = subprocess.run(
                ["sh", "-c", wrap_become(self.host, command)],
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
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

    def open_process(self, command: str) -> LocalProcess:
        return LocalProcess(command, self.host)

    @contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """The controller is the host: its own address is reached directly."""
        yield (host, port)

    def close(self) -> None:
        """Nothing to close."""


class LocalProcess:
    def __init__(self, command: str, host: Host) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", wrap_become(host, command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.buffer = b""

    def readline(self, timeout: float) -> str | None:
        """One line of stdout, or None on timeout or end of output (read unbuffered: a select on a
        buffered reader would miss lines already in its buffer)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        if b"\n" not in self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def finish(self, timeout: float = 10.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def connect(host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> SSHRemote | LocalRemote:
    """An open connection to `host`; raises HostUnreachable or HostKeyRefused."""
    remote: SSHRemote | LocalRemote = LocalRemote(host) if host.is_local else SSHRemote(host, connect_timeout)
    remote.open()
    return remote


def must(result: CommandResult, what: str) -> CommandResult:
    """Raise HostError with the output tail when a command failed."""
    if not result.ok:
        raise HostError(f"{what} failed (exit {result.exit_code}): {result.tail()}", result)
    return result
