"""The arguments of the firewall tasks, parsed and checked before any host is touched (UsageError:
one line, exit 2): the target (`TARGET`: --ip, --port, --proto, shared by block-ip and unblock-ip),
--ttl, --comment, and the inventory's firewall_allowlist.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Any

from remediations.core.args import Arg
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.units import parse_seconds
from remediations.facts.ufw import PROTOCOLS, Network, Target

COMMENT_MAX = 200
_ADDRESS_CHARS = frozenset(string.hexdigits + ":./")


def parse_network(text: str | None, flag: str = "--ip") -> tuple[Network, str]:
    """An address or CIDR range from the command line, and a note when it was normalised.

    Refused: anything but hex digits, '.', ':' and '/', a bad address or prefix length, host bits
    set in a range (ambiguous: the range or the one address?), /0, and IPv4-mapped IPv6 ranges.
    An IPv4-mapped IPv6 address is normalised to its IPv4 address (the note says so).
    """
    raw = (text or "").strip()
    if not raw:
        raise UsageError(f"{flag} is required: an IPv4 or IPv6 address or CIDR range, e.g. 203.0.113.7")
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    if not set(raw) <= _ADDRESS_CHARS or raw.count("/") > 1:
        raise UsageError(f"{flag} {shown!r}: not an IPv4 or IPv6 address or CIDR range")
    address_text, slash, prefix_text = raw.partition("/")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise UsageError(f"{flag} {shown!r}: {address_text!r} is not an IPv4 or IPv6 address") from None
    if slash:
        if not prefix_text.isdigit() or not 0 <= int(prefix_text) <= address.max_prefixlen:
            raise UsageError(
                f"{flag} {shown!r}: prefix length must be a number from 1 to {address.max_prefixlen} "
                f"for IPv{address.version}"
            )
        prefix = int(prefix_text)
    else:
        prefix = address.max_prefixlen
    network = ipaddress.ip_network((address, prefix), strict=False)
    if network.network_address != address:
        raise UsageError(
            f"{flag} {shown!r} has host bits set: give {network} for the whole range, or "
            f"{address} for that one address (refused rather than guessed)"
        )
    if prefix == 0:
        raise UsageError(f"{flag} {shown!r} is every IPv{address.version} address; refusing to block it")
    note = ""
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        if prefix != 128:
            raise UsageError(f"{flag} {shown!r} is an IPv4-mapped IPv6 range; give the IPv4 range")
        mapped = network.network_address.ipv4_mapped
        note = f"{raw} is the IPv4-mapped form of {mapped}; blocking {mapped}"
        network = ipaddress.IPv4Network(mapped)
    return network, note


def parse_port(value: str | int | None, flag: str = "--port") -> int | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    # length first: int() of 100,000 digits raises past Python's digit limit (a traceback)
    if len(text) > 5 or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise UsageError(f"{flag} {text[:20]!r}: give a port number from 1 to 65535")
    return int(text)


def parse_proto(value: str | None, flag: str = "--proto") -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text not in PROTOCOLS:
        raise UsageError(f"{flag} {str(value)[:20]!r}: give tcp or udp (or leave it out for both)")
    return text


TTL_MAX = 100 * 366 * 86400


TTL_HINT = "give a duration such as 90s, 30m, 24h, 7d or 1h30m; leave it out for no expiry"


def parse_ttl(value: str | None, flag: str = "--ttl") -> int | None:
    """The one duration grammar (core/units.py) in whole seconds, with a unit (`--ttl 24` is refused:
    24 seconds is never what it meant), longer than 0s and at most 100 years; None for no expiry."""
    if value is None or str(value).strip() == "":
        return None
    seconds = int(parse_seconds(value, flag, TTL_HINT, unit_required=True, high=TTL_MAX))
    if seconds <= 0:
        raise UsageError(f"{flag} {str(value).strip()[:30]!r}: must be longer than 0s")
    return seconds


def parse_comment(value: str | None, flag: str = "--comment") -> str:
    """Free text for the state file; ufw's parser rejects quotes, so they are refused here."""
    text = (value or "").strip()
    if len(text) > COMMENT_MAX:
        raise UsageError(f"{flag} is {len(text)} characters; keep it under {COMMENT_MAX}")
    bad = sorted({ch for ch in text if ch in "'\"\\" or not ch.isprintable()})
    if bad:
        raise UsageError(f"{flag}: characters {''.join(bad)!r} are not allowed (quotes, backslash, control)")
    return text


def parse_allowlist(value: Any, where: str) -> tuple[Network, ...]:
    """The inventory var `firewall_allowlist`: addresses or ranges that are never blocked."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise UsageError(f"{where}: firewall_allowlist must be a list of addresses or CIDR ranges")
    return tuple(parse_network(str(item), flag=f"{where}: firewall_allowlist entry")[0] for item in items)


def allowlist_of(host: Host) -> tuple[Network, ...]:
    return parse_allowlist(host.get("firewall_allowlist"), f"{host.source}: host {host.name}")


def target_of(ip: tuple[Network, str] | None, port: int | None, proto: str | None) -> tuple[Target, str]:
    """The target of the parsed --ip/--port/--proto, and the note on --ip's normalisation.
    --ip left out is refused here, with the message an empty --ip gets."""
    network, note = ip if ip is not None else parse_network(None)
    return Target(network, port, proto), note


# --ip, --port, --proto: what block-ip and unblock-ip act on
TARGET = (
    Arg("ip", "source to block: an IPv4/IPv6 address or CIDR range (host bits set in a range are refused)",
        parse=parse_network),
    Arg("port", "only traffic to this port (1-65535); default: every port", parse=parse_port),
    Arg("proto", "tcp or udp; default: both (with --port) or every protocol", parse=parse_proto),
)  # fmt: skip
