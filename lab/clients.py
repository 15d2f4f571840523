"""Clients: bare namespaces on the bridge that play an outside machine."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.base import (
    _NETNS_DIR,
    BRIDGE,
    BRIDGE_ADDRESS,
    CLIENT_ADDRESS,
    PREFIX_LEN,
    SUBNET,
    LabError,
    _is_ns_handle,
    _run,
)
from lab.net import _link_exists, _set_sysctl
from lab.state import _current_hosts, _locked, _require_root

# ---------------------------------------------------------------------------------------------
# Clients: bare namespaces on the bridge that play an outside machine (e.g. a blocked address)
# ---------------------------------------------------------------------------------------------

_CLIENT_NETNS_PREFIX = "rmlabc-"
_CLIENT_VETH_PREFIX = "rmc-"
_CLIENT_NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
_CONNECT_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as exc:
    print(exc)
    sys.exit(1)
"""


@dataclass(frozen=True)
class Client:
    """A network namespace with one address on the lab bridge and no services of its own."""

    name: str
    address: str

    @property
    def netns(self) -> Path:
        return _NETNS_DIR / f"{_CLIENT_NETNS_PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        return f"{_CLIENT_VETH_PREFIX}{self.name}"

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the client's network namespace (the controller's filesystem)."""
        return _run(["nsenter", f"--net={self.netns}", "--", *argv], check=check, timeout=timeout)

    def can_connect(self, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from this client to ``address:port`` is accepted in time."""
        probe = [sys.executable, "-c", _CONNECT_PROBE, address, str(port), str(timeout)]
        return self.run(probe, check=False, timeout=timeout + 10).returncode == 0


def _client_spec(name: str, address: str) -> Client:
    if not _CLIENT_NAME_RE.match(name):
        raise LabError(f"client name {name!r}: 1 to 10 lowercase letters or digits")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise LabError(f"client address {address!r} is not an IP address") from None
    subnet = ipaddress.ip_network(SUBNET)
    taken = {BRIDGE_ADDRESS, *(h.address for h in _current_hosts())}
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address) or address in taken:
        raise LabError(f"client address {address}: give a free address in {SUBNET}")
    return Client(name, address)


def ensure_client(name: str, address: str = CLIENT_ADDRESS) -> Client:
    """A client namespace ``name`` holding ``address`` on the bridge; idempotent."""
    _require_root()
    spec = _client_spec(name, address)
    with _locked():
        if not _link_exists(BRIDGE):
            raise LabError("the lab is not up (python -m lab up)")
        netns = spec.netns.name
        if not _is_ns_handle(spec.netns):
            with contextlib.suppress(FileNotFoundError):
                spec.netns.unlink()
            _run(["ip", "netns", "add", netns])
        if not _link_exists(spec.veth):
            _run(["ip", "-n", netns, "link", "del", "eth0"], check=False)
            _run(["ip", "link", "add", spec.veth, "type", "veth", "peer", "name", "eth0",
                  "netns", netns])  # fmt: skip
        _set_sysctl(f"/proc/sys/net/ipv6/conf/{spec.veth}/disable_ipv6", "1")
        _run(["ip", "link", "set", spec.veth, "master", BRIDGE, "up"])
        batch = (
            "addr flush dev eth0\n"
            f"addr add {address}/{PREFIX_LEN} dev eth0\n"
            "link set lo up\n"
            "link set eth0 up\n"
        )
        _run(["ip", "-n", netns, "-batch", "-"], input=batch.encode())
    return spec


def remove_client(name: str) -> None:
    """Remove the client namespace ``name`` and its link (no-op when absent)."""
    _require_root()
    spec = Client(name, "")
    with _locked():
        _remove_client(spec)


def _remove_client(spec: Client) -> None:
    if _link_exists(spec.veth):
        _run(["ip", "link", "del", spec.veth], check=False)
    if _is_ns_handle(spec.netns):
        _run(["ip", "netns", "del", spec.netns.name], check=False)
    with contextlib.suppress(FileNotFoundError):
        spec.netns.unlink()


def _remove_clients() -> None:
    """Every client namespace (called by ``down``, which holds the lab lock)."""
    with contextlib.suppress(OSError):
        for entry in _NETNS_DIR.iterdir():
            if entry.name.startswith(_CLIENT_NETNS_PREFIX):
                _remove_client(Client(entry.name[len(_CLIENT_NETNS_PREFIX) :], ""))


@contextlib.contextmanager
def client(address: str = CLIENT_ADDRESS, name: str = "client") -> Iterator[Client]:
    """A client namespace for the duration of a ``with`` block, removed afterwards."""
    spec = ensure_client(name, address)
    try:
        yield spec
    finally:
        remove_client(name)
