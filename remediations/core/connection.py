"""Connections to inventory hosts: Fabric over SSH with strict host keys, or the local machine.

One `Remote` per host per run; every step of the run uses it. Commands are shell text built by the
caller with every argument quoted (`shlex.join` / `shlex.quote`); data that must not appear on a
command line (secrets) travels on stdin.

Why Fabric builds the client but does not run the commands: every `fabric.Connection` method that
talks to the host (`run`, `sudo`, `create_session`, `sftp`, `forward_local`) is wrapped in its
`@opens` decorator, which calls `open()` and silently reconnects when the transport is no longer
active. A connection lost in the middle of a change must fail the host ("may be half-changed,
nothing more was sent"), never carry on over a fresh connection, so commands and forwarding go
through `SSHRemote` on the one transport Fabric opened: with the run's `Guard` (one deadline for the
whole remediation, the interrupt, the lost flag), a bound on opening each channel (a host that
accepts TCP and then stalls hangs Invoke's runner otherwise), and stdin for secrets.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import paramiko
from tenacity import Retrying as _Retrying
from tenacity import (
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from remediations.core import jump, known_hosts, private_keys
from remediations.core.errors import (
    CommandResult,
    ConnectionLost,
    DeadlineExceeded,
    HostError,
    HostKeyRefused,
    HostUnreachable,
)
from remediations.core.inventory import Host
from remediations.core.remote import (
    CHANNEL_TIMEOUT,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    DEFAULT_KNOWN_HOSTS,
    KEEPALIVE_INTERVAL,
    TIMED_OUT,
    Guard,
    LineReader,
    Lines,
    LocalProcess,
    LocalRemote,
    Process,
    Remote,
    must,
    wrap_become,
)

if TYPE_CHECKING:
    from fabric import Config, Connection

# what the rest of the code imports from here (the protocol and the local host live in core.remote)
__all__ = [
    "CHANNEL_TIMEOUT", "COMMAND_TIMEOUT", "CONNECT_TIMEOUT", "DEFAULT_KNOWN_HOSTS", "EXIT_GRACE",
    "KEEPALIVE_INTERVAL", "TIMED_OUT", "Guard", "LocalProcess", "LocalRemote", "Process", "Remote",
    "SSHProcess", "SSHRemote", "connect", "connect_retrying", "fingerprint", "must", "wrap_become",
]  # fmt: skip


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


# AES-GCM (an AEAD cipher: no separate MAC) costs both ends less CPU per packet than paramiko's first
# choice, AES-CTR with HMAC-SHA2-256, whose MAC paramiko checks byte by byte in Python: offered
# first, so that a host that supports it (OpenSSH does since 6.2) uses it; any other host negotiates
# from the rest of paramiko's list, in its own order, as before.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def cheap_cipher_first(ciphers: Iterable[str]) -> tuple[str, ...]:
    """`ciphers` (paramiko's list, in its order) with the AES-GCM ones it has moved to the front."""
    offered = tuple(ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
    return first + tuple(c for c in offered if c not in first)


def _transport(sock: object, **kwargs: object) -> paramiko.Transport:
    """The transport paramiko's SSHClient makes (its `transport_factory`), AES-GCM offered first."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = cheap_cipher_first(options.ciphers)
    return transport


_configs: dict[tuple[object, ...], Config] = {}
_configs_lock = threading.Lock()


def _file_version(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _fabric_config() -> Config:
    """One Fabric configuration for every connection while the SSH config files stay the same:
    making one reads ~/.ssh/config and /etc/ssh/ssh_config and merges Invoke's defaults (deep
    copies), a few milliseconds of the controller's CPU per host. Connections only read it."""
    from fabric import Config

    user_file = os.path.expanduser("~/.ssh/config")
    key = (user_file, _file_version(user_file), _file_version("/etc/ssh/ssh_config"))
    with _configs_lock:
        config = _configs.get(key)
        if config is None:
            _configs.clear()
            config = _configs[key] = Config()
        return config


_connection_type: type[Connection] | None = None


def _connection_class() -> type[Connection]:
    """Fabric's Connection, with its own attributes set as plain attributes.

    Fabric's Connection is an Invoke config proxy: setting an attribute first lists the object's
    every attribute (`dir`) to tell its own from config keys, and `inline_ssh_env`, which it does not
    declare, is written into the Config it was given, which merges all its levels again (the one
    Config shared by every connection of the run: `_fabric_config`). That was two thirds of the
    Connection's construction on the controller, and a race: while one thread's merge rebuilt the
    Config, another thread's Connection found keys missing from it ("AttributeError: No attribute
    or config key found for 'port'": hosts failed with an internal error at 200 hosts under load).
    Declared here, the attribute stays on the connection (only Fabric's own `run` reads it, which
    this project does not use) and the shared Config is never modified."""
    global _connection_type
    if _connection_type is None:
        from fabric import Connection

        own = frozenset(k for k in vars(Connection) if not k.startswith("__")) | {"inline_ssh_env"}

        class OneHostConnection(Connection):  # type: ignore[misc]
            inline_ssh_env = None

            def __setattr__(self, key: str, value: object) -> None:
                if key in own or key.startswith("_"):
                    object.__setattr__(self, key, value)  # as Fabric does for its own attributes
                else:
                    super().__setattr__(key, value)

        _connection_type = OneHostConnection
    return _connection_type


class SSHRemote:
    """A host reached over SSH through a Fabric connection with strict host key checking."""

    def __init__(self, host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.name = host.name
        self.host = host
        self.guard = Guard()
        self.connection = self._build(host, connect_timeout)

    @staticmethod
    def _build(host: Host, connect_timeout: float, via_jump: bool = False) -> Connection:
        options = host.ssh_options
        config = _fabric_config()
        if host.key_file:
            connect_kwargs: dict[str, object] = {"key_filename": [host.key_file]}
        else:
            # Given no kwargs of its own, Fabric takes the Config's and adds ~/.ssh/config's
            # IdentityFile to them in place: into the Config every connection shares, while other
            # threads read it. A copy (without its key files: Fabric adds those itself) is given
            # instead; allow_agent is paramiko's default, there only so the copy is not empty.
            shared = dict(config.connect_kwargs)
            connect_kwargs = {k: v for k, v in shared.items() if k != "key_filename"}
            connect_kwargs.setdefault("allow_agent", True)
        gateway = None
        if options.proxy_jump and not via_jump:
            gateway = jump.jump_connection(host, options.proxy_jump, connect_timeout, SSHRemote._build)
        try:
            conn = _connection_class()(
                host.address,
                user=host.user,
                port=host.port,
                config=config,
                connect_timeout=int(connect_timeout),
                connect_kwargs=connect_kwargs,
                gateway=gateway if gateway is not None else (False if via_jump else None),
            )
        except ValueError as exc:  # Fabric reading a ProxyJump of ~/.ssh/config it cannot parse
            raise HostUnreachable(f"~/.ssh/config: the SSH settings for {host.address}: {exc}") from None
        if gateway is None:
            jump.configured_jump(host, conn, connect_timeout, via_jump, SSHRemote._build)
        # the key parsed once per run, not per host; AES-GCM offered first
        connect_kwargs = private_keys.given(dict(conn.connect_kwargs))
        conn.connect_kwargs = {**connect_kwargs, "transport_factory": _transport}
        files = list(options.known_hosts_files)
        if not files:
            configured = conn.ssh_config.get("userknownhostsfile", "")
            files = [os.path.expanduser(f) for f in str(configured).split()] or [
                os.path.expanduser(f) for f in DEFAULT_KNOWN_HOSTS
            ]
        known_hosts.trust(conn.client, files, conn.host, conn.port)
        conn.client.set_missing_host_key_policy(
            _StrictPolicy(host, files, options.host_key_policy == "accept-new")
        )
        return conn

    def open(self) -> None:
        """Connect, retrying only transient network errors, with an explicit stop. Called once: a
        connection that drops later is lost for the rest of the run (see `Guard`)."""
        try:
            for attempt in connect_retrying():
                with attempt:
                    self.connection.open()
            transport = self.connection.client.get_transport()
            if transport is not None:
                transport.set_keepalive(KEEPALIVE_INTERVAL)
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
            raise HostUnreachable(
                f"SSH authentication failed for {self.host.address}{self._via()}: {exc}"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HostUnreachable(f"cannot connect to {self.host.address}{self._via()}: {reason}") from None

    def _via(self) -> str:
        gateway = self.connection.gateway
        if not gateway or isinstance(gateway, str):
            return ""
        return f" through jump host {gateway.host}"

    @property
    def transport(self) -> paramiko.Transport:
        """The open transport; ConnectionLost once it dropped (never reopened behind the run's back)."""
        if self.guard.lost is not None:
            raise ConnectionLost(self.guard.lost)
        transport = self.connection.client.get_transport()
        if transport is None or not transport.is_active():
            self.lose(f"the SSH connection to {self.host.address} dropped")
            raise ConnectionLost(str(self.guard.lost))
        return transport

    def lose(self, reason: str) -> None:
        """The connection is lost for the rest of the run: close it, so that whatever is waiting on
        it (a command, a channel request) ends now and nothing more is sent."""
        self.guard.lose(reason)
        transport = self.connection.client.get_transport()
        if transport is not None:
            transport.close()

    def _lost_now(self) -> bool:
        transport = self.connection.client.get_transport()
        if self.guard.lost is None and (transport is None or not transport.is_active()):
            self.guard.lose(f"the SSH connection to {self.host.address} dropped")
        return self.guard.lost is not None

    def _channel(self, command: str) -> paramiko.Channel:
        """A channel running `command`; a host that does not answer the requests within
        CHANNEL_TIMEOUT is lost (paramiko's exec_command would wait for ever)."""
        self.guard.check()
        transport = self.transport
        watchdog = threading.Timer(
            CHANNEL_TIMEOUT,
            self.lose,
            (f"{self.host.address} did not answer a request to start a command "
             f"within {CHANNEL_TIMEOUT:.0f}s",),
        )
        watchdog.daemon = True
        watchdog.start()
        try:
            channel = transport.open_session(timeout=CHANNEL_TIMEOUT)
            channel.exec_command(wrap_become(self.host, command))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if self._lost_now():
                raise ConnectionLost(str(self.guard.lost)) from None
            raise HostError(f"could not start a command on {self.host.address}: {exc}") from None
        finally:
            watchdog.cancel()
        return channel

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        allowed, by_deadline = self.guard.admit(timeout)
        deadline = time.monotonic() + allowed
        channel = self._channel(command)
        try:
            if stdin is not None:
                channel.settimeout(max(deadline - time.monotonic(), 0.1))
                channel.sendall(stdin)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._send_failed(channel, exc, by_deadline)
        return self._collect(channel, command, deadline, allowed, by_deadline, bytearray(), bytearray())

    def run_stream(
        self, command: str, chunks: Iterable[bytes], *, timeout: float | None = None
    ) -> CommandResult:
        """`run` with stdin fed from `chunks` as they come (never joined: memory stays one chunk,
        plus the channel's window), stdout and stderr read meanwhile (a chatty command cannot stall
        the feed). When `chunks` raises, the channel is closed without an exit status (the command
        reads an end of input, or dies of SIGPIPE) and the exception propagates."""
        allowed, by_deadline = self.guard.admit(timeout)
        deadline = time.monotonic() + allowed
        channel = self._channel(command)
        out, err = bytearray(), bytearray()
        try:
            for chunk in chunks:
                channel.settimeout(max(deadline - time.monotonic(), 0.1))
                channel.sendall(chunk)
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not (channel.exit_status_ready() and not self._lost_now()):
                self._send_failed(channel, exc, by_deadline)
            # else: the command ended before reading all its input: its exit status says why
        except BaseException:
            channel.close()
            raise
        return self._collect(channel, command, deadline, allowed, by_deadline, out, err)

    def _send_failed(self, channel: paramiko.Channel, exc: BaseException, by_deadline: bool) -> NoReturn:
        channel.close()
        if self._lost_now():
            raise ConnectionLost(str(self.guard.lost)) from None
        if by_deadline:
            raise DeadlineExceeded(self.guard.expired()) from None
        raise HostError(f"could not send input to a command on {self.host.address}: {exc}") from None

    def _collect(self, channel: paramiko.Channel, command: str, deadline: float, allowed: float,
                 by_deadline: bool, out: bytearray, err: bytearray) -> CommandResult:  # fmt: skip
        """The command's output until it ends, and its exit status, within the deadline."""
        exited_at: float | None = None
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if _output_ended(channel):
                break
            if channel.exit_status_ready() and exited_at is None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > EXIT_GRACE:
                break  # exited, but a child it left behind keeps the output open
            if channel.closed and self._lost_now():
                raise ConnectionLost(str(self.guard.lost))
            if channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._timed_out(channel, command, out, allowed, by_deadline)
            select.select([channel], [], [], min(remaining, 1.0))
        # output closed before the exit: wait for the exit status within the same deadline
        if not channel.status_event.wait(max(deadline - time.monotonic(), 0.0)):
            return self._timed_out(channel, command, out, allowed, by_deadline)
        code = channel.recv_exit_status()
        channel.close()
        if code == -1 and self._lost_now():  # closed without an exit status: the connection died
            raise ConnectionLost(str(self.guard.lost))
        return CommandResult(command, code, out.decode(errors="replace"), err.decode(errors="replace"))

    def _timed_out(
        self, channel: paramiko.Channel, command: str, out: bytearray, allowed: float, by_deadline: bool
    ) -> CommandResult:
        channel.close()
        if by_deadline:
            raise DeadlineExceeded(self.guard.expired())
        reason = f"timed out after {allowed:.0f}s"
        return CommandResult(command, TIMED_OUT, out.decode(errors="replace"), reason)

    def open_process(self, command: str) -> SSHProcess:
        return SSHProcess(self._channel(command))

    def put(self, local_path: str, remote_path: str, timeout: float | None = None) -> None:
        """Copy a file to the host over SFTP on this run's connection (Fabric's `put` would reopen a
        dropped connection behind the run's back), within the command deadline."""
        allowed, by_deadline = self.guard.admit(timeout)
        expired = threading.Event()

        def expire() -> None:  # SFTP has no overall timeout: closing the connection ends the copy
            expired.set()
            self.lose(f"copying {local_path} to the host did not finish within {allowed:.0f}s")

        watchdog = threading.Timer(allowed, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            with paramiko.SFTPClient.from_transport(self.transport) as sftp:
                sftp.put(local_path, remote_path)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if expired.is_set() and by_deadline:
                raise DeadlineExceeded(self.guard.expired()) from None
            if self._lost_now():
                raise ConnectionLost(str(self.guard.lost)) from None
            where = f"{self.host.address}:{remote_path}"
            raise HostError(f"copying {local_path} to {where} failed: {exc}") from None
        finally:
            watchdog.cancel()

    @contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """Local port forwarding over this connection (SSH direct-tcpip), on 127.0.0.1 only."""
        forwarder = _Forwarder(self.transport, (host, port))
        try:
            yield forwarder.address
        finally:
            forwarder.close()

    def close(self) -> None:
        """Close the connection and the jump host's under it (Fabric leaves a gateway open)."""
        self.connection.close()
        self.connection.client.close()  # Fabric skips it when its open() failed half-way
        gateway = self.connection.gateway
        if gateway and not isinstance(gateway, str):
            gateway.close()


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


# sshd may send a command's exit status before the last of its output: the output has ended only at
# the channel's EOF. A command that exits while a child it started keeps stdout open never sends EOF;
# it is taken as finished this long after its exit status, so that it cannot hang the run.
EXIT_GRACE = 2.0


def _output_ended(channel: paramiko.Channel) -> bool:
    """All output has arrived: EOF was received and nothing is left in the buffers."""
    return bool(channel.eof_received and not channel.recv_ready() and not channel.recv_stderr_ready())


class SSHProcess(LineReader):
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.lines = Lines()

    def _chunk(self, deadline: float) -> bool:
        """Wait for the next piece of stdout and take it in; False at the end of the output or
        when nothing came before `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.channel.recv_ready():
                chunk = self.channel.recv(65536)
                if not chunk:
                    return False
                self.lines.feed(chunk)
                return True
            if _output_ended(self.channel):
                return False
            select.select([self.channel], [], [], min(remaining, 0.5))

    @property
    def ended(self) -> bool:
        return bool(self.channel.closed or self.channel.exit_status_ready())

    def send(self, data: bytes) -> bool:
        try:
            self.channel.settimeout(5.0)
            self.channel.sendall(data)
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False

    def finish(self, timeout: float = 10.0) -> None:
        """Close stdin (the process ends on EOF) and wait for it to exit."""
        try:
            self.channel.shutdown_write()
            self.channel.status_event.wait(timeout)
        finally:
            self.channel.close()


def connect(host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> SSHRemote | LocalRemote:
    """An open connection to `host`; raises HostUnreachable or HostKeyRefused."""
    remote: SSHRemote | LocalRemote = LocalRemote(host) if host.is_local else SSHRemote(host, connect_timeout)
    try:
        remote.open()
    except BaseException:
        remote.close()  # a refused key or failed auth leaves paramiko's transport (a thread, a socket) open
        raise
    return remote


