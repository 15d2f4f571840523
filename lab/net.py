"""Network: the bridge, the hosts' network namespaces and veth pairs."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from lab.base import _FORWARD_RULE, BRIDGE, BRIDGE_ADDRESS, PREFIX_LEN, HostSpec, _is_ns_handle, _run

# ---------------------------------------------------------------------------------------------
# Network: bridge, namespaces, veth pairs
# ---------------------------------------------------------------------------------------------


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _set_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(value)


def _ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0"])
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")
    # Hosts must not reach beyond 198.18.0.0/24: never route what arrives on the bridge.
    _set_sysctl(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding", "0")
    _run(["ip", "addr", "replace", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # With br_netfilter loaded (every dockerd loads it), bridged host-to-host frames pass the
    # controller's FORWARD chain; accept traffic that stays on the lab bridge.
    if shutil.which("iptables") and _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode:
        _run(["iptables", "-I", *_FORWARD_RULE])


def _remove_bridge() -> None:
    if shutil.which("iptables"):
        while _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode == 0:
            _run(["iptables", "-D", *_FORWARD_RULE])
    if _link_exists(BRIDGE):
        _run(["ip", "link", "del", BRIDGE])


def _ensure_host_net(host: HostSpec) -> None:
    if not _is_ns_handle(host.netns):
        with contextlib.suppress(FileNotFoundError):
            host.netns.unlink()  # a stale plain file (e.g. after a reboot with /run on disk)
        _run(["ip", "netns", "add", host.name])
    has_eth0 = _run(["ip", "-n", host.name, "link", "show", "eth0"], check=False).returncode == 0
    if _link_exists(host.veth) and not has_eth0:
        _run(["ip", "link", "del", host.veth])
    if not _link_exists(host.veth):
        if has_eth0:
            _run(["ip", "-n", host.name, "link", "del", "eth0"])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
              "netns", host.name])  # fmt: skip
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{host.veth}/disable_ipv6", "1")
    _run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    batch = (
        f"addr replace {host.address}/{PREFIX_LEN} dev eth0\n"
        "link set lo up\n"
        "link set eth0 up\n"
        f"route replace default via {BRIDGE_ADDRESS} dev eth0\n"
    )
    _run(["ip", "-n", host.name, "-batch", "-"], input=batch.encode())
    if not has_eth0:
        # A new link has a new MAC address: forget the old one, or the controller keeps sending to
        # it until the neighbour entry goes stale (about 30 s).
        _run(["ip", "neigh", "flush", "to", host.address, "dev", BRIDGE], check=False)


def _remove_host_net(host: HostSpec) -> None:
    if _link_exists(host.veth):
        _run(["ip", "link", "del", host.veth], check=False)
    if host.netns.exists():
        if _is_ns_handle(host.netns):
            _run(["ip", "netns", "del", host.name])
        else:
            host.netns.unlink()
