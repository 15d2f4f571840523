"""A real SSH server on 127.0.0.1 for unit tests (paramiko's server mode): public key authentication
for one authorized key, host key known through a known_hosts file the test writes, and `exec`
requests that run nothing: each ends with exit status 0 and no output as soon as its input ends."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def ed25519_key_file(path: Path, passphrase: bytes | None = None) -> paramiko.Ed25519Key:
    """A new Ed25519 private key written to `path` in OpenSSH's format; returns it, as paramiko
    reads it."""
    private = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())  # fmt: skip
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           encryption))  # fmt: skip
    path.chmod(0o600)
    return paramiko.Ed25519Key(filename=str(path), password=passphrase.decode() if passphrase else None)


@dataclass
class Server:
    port: int
    host_key: paramiko.PKey
    authorized: bytes  # the authorized public key's blob
    accepted: list[bytes] = field(default_factory=list)  # the key blob of every accepted login
    commands: list[str] = field(default_factory=list)
    transports: list[paramiko.Transport] = field(default_factory=list)

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"


class _Interface(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, server: Server) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.server.authorized:
            self.server.accepted.append(key.asbytes())
            return int(paramiko.AUTH_SUCCESSFUL)
        return int(paramiko.AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        refused = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return int(paramiko.OPEN_SUCCEEDED if kind == "session" else refused)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.server.commands.append(command.decode())
        threading.Thread(target=_end, args=(channel,), daemon=True).start()
        return True


def _end(channel: paramiko.Channel) -> None:
    """Exit once the client closed its input: it has had the answer to its request by then."""
    channel.settimeout(30)
    while channel.recv(4096):
        pass
    channel.send_exit_status(0)
    channel.shutdown_write()
    channel.close()


@contextmanager
def serving(authorized: paramiko.PKey, ciphers: tuple[str, ...] | None = None) -> Iterator[Server]:
    """The server, running until the block ends; `ciphers`: the only ones it accepts."""
    host_key = paramiko.RSAKey.generate(2048)
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(listener.getsockname()[1], host_key, authorized.asbytes())
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            if ciphers is not None:
                transport.get_security_options().ciphers = ciphers
            server.transports.append(transport)
            try:
                transport.start_server(server=_Interface(server))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the serving thread waits in
        listener.close()
        for transport in server.transports:
            transport.close()
        thread.join(timeout=5)
