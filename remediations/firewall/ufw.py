"""block-ip, unblock-ip, unblock-expired, list-blocks: deny a source address in ufw, above the allow
rules, and in Docker's DOCKER-USER chain (Docker-published ports bypass ufw), with an optional expiry
recorded on the host.

facts   one round trip: ufw's own rule tuples (/etc/ufw/user.rules, user6.rules), whether its chains
        are loaded, IPV6= from /etc/default/ufw, `iptables -S DOCKER-USER` (and ip6tables), the state
        file of recorded blocks, the host's clock, and the SSH connection the controller came in on;
decide  pure functions of (request, facts): the commands to run and the new state file, "nothing to
        do because ...", or a refusal (lockout guard, ufw inactive) with nothing changed;
apply   one round trip: the commands, stopping at the first failure, then the facts again;
verify  those facts must show the block in every layer the host has (or gone from every layer).

Every change runs under the engine's per-host lock: ufw is not safe to run concurrently.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import shlex
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from remediations.actions import remote_write
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote
from remediations.core.results import HostResult, Status
from remediations.core.units import duration_seconds
from remediations.facts.sections import MARK
from remediations.facts.sections import sections_by_name as sections

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_STATE_DIR = "/var/lib/remediations"
STATE_FILE_NAME = "firewall-blocks.json"
UFW_COMMENT = "remediations block-ip"  # on every rule we add, so a reader of `ufw status` knows why
DOCKER_COMMENT = "remediations block-ip"
DOCKER_CHAIN = "DOCKER-USER"
PROTOCOLS = ("tcp", "udp")
COMMENT_MAX = 200
COMMAND_TIMEOUT = 120.0
_ADDRESS_CHARS = frozenset(string.hexdigits + ":./")
_ANY_DST = ("0.0.0.0/0", "::/0")


# ---------------------------------------------------------------------------------------------
# Arguments: parsed and checked before any host is touched (UsageError: one line, exit 2)
# ---------------------------------------------------------------------------------------------


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


def parse_port(value: str | int | None) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    # length first: int() of 100,000 digits raises past Python's digit limit (a traceback)
    if len(text) > 5 or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise UsageError(f"--port {text[:20]!r}: give a port number from 1 to 65535")
    return int(text)


def parse_proto(value: str | None) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text not in PROTOCOLS:
        raise UsageError(f"--proto {str(value)[:20]!r}: give tcp or udp (or leave it out for both)")
    return text


TTL_MAX = 100 * 366 * 86400


def parse_ttl(value: str | None) -> int | None:
    """'90s', '30m', '24h', '7d', '2w', or combined ('1h30m'), in seconds; None for no expiry."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    found = duration_seconds(text)
    if found is None or not text[-1].isalpha() or "." in text:  # whole numbers, each with its unit
        raise UsageError(f"--ttl {str(value)[:30]!r}: give a duration such as 90s, 30m, 24h, 7d or 1h30m")
    if found > TTL_MAX:
        raise UsageError(f"--ttl {text[:30]!r}: at most 100 years (3650d is ten); leave it out for no expiry")
    seconds = int(found)
    if seconds <= 0:
        raise UsageError(f"--ttl {text!r}: must be longer than 0s")
    if seconds > TTL_MAX:
        raise UsageError(f"--ttl {text!r}: at most 100 years (3650d is ten); leave it out for no expiry")
    return seconds


def parse_comment(value: str | None) -> str:
    """Free text for the state file; ufw's parser rejects quotes, so they are refused here."""
    text = (value or "").strip()
    if len(text) > COMMENT_MAX:
        raise UsageError(f"--comment is {len(text)} characters; keep it under {COMMENT_MAX}")
    bad = sorted({ch for ch in text if ch in "'\"\\" or not ch.isprintable()})
    if bad:
        raise UsageError(
            f"--comment: characters {''.join(bad)!r} are not allowed (quotes, backslash, control)"
        )
    return text


def parse_allowlist(value: Any, where: str) -> tuple[Network, ...]:
    """The inventory var `firewall_allowlist`: addresses or ranges that are never blocked."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise UsageError(f"{where}: firewall_allowlist must be a list of addresses or CIDR ranges")
    return tuple(parse_network(str(item), flag=f"{where}: firewall_allowlist entry")[0] for item in items)


def format_duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def format_time(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# What is blocked: a source, optionally narrowed to a port and protocol
# ---------------------------------------------------------------------------------------------

OTHER = "other"  # a traffic slice's protocol: every protocol but tcp and udp (icmp, esp, ...)


@dataclass(frozen=True)
class Traffic:
    """One slice of a source's incoming traffic: tcp, udp or OTHER, to one port or to every port."""

    proto: str
    port: int | None = None

    def label(self) -> str:
        if self.proto == OTHER:
            return "non-tcp/udp"
        return f"{self.proto} port {self.port}" if self.port is not None else f"{self.proto}"


@dataclass(frozen=True)
class Target:
    """Deny incoming traffic from `network` (to `port`/`proto` when given; a port alone means tcp+udp)."""

    network: Network
    port: int | None = None
    proto: str | None = None

    @property
    def v6(self) -> bool:
        return self.network.version == 6

    @property
    def source(self) -> str:
        """The source as ufw writes it in its tuples: a single address without /32 or /128."""
        if self.network.prefixlen == self.network.max_prefixlen:
            return str(self.network.network_address)
        return str(self.network)

    def label(self) -> str:
        where = ""
        if self.port is not None:
            where = f" port {self.port}/{self.proto or 'tcp+udp'}"
        elif self.proto:
            where = f" {self.proto} (all ports)"
        return self.source + where

    def ufw_args(self) -> list[str]:
        """The rule in ufw's syntax, after the action: `[proto P] from SRC [to any port N]`."""
        args = ["proto", self.proto] if self.proto else []
        args += ["from", self.source]
        if self.port is not None:
            args += ["to", "any", "port", str(self.port)]
        return args

    def traffic(self) -> tuple[Traffic, ...]:
        """The slices of traffic the block must deny, each of which a rule matches all, some or none of."""
        if self.proto:
            return (Traffic(self.proto, self.port),)
        if self.port is not None:
            return tuple(Traffic(p, self.port) for p in PROTOCOLS)
        return (*(Traffic(p, None) for p in PROTOCOLS), Traffic(OTHER, None))

    def conntrack_filters(self) -> list[list[str]]:
        """`conntrack` arguments selecting the flows this source opened that the block covers."""
        base = ["-f", "ipv6" if self.v6 else "ipv4", "-s", self.source]
        if self.port is None:
            return [[*base, "-p", self.proto] if self.proto else base]
        protos = [self.proto] if self.proto else list(PROTOCOLS)
        return [[*base, "-p", p, "--dport", str(self.port)] for p in protos]

    def docker_keys(self) -> list[tuple[str | None, int | None]]:
        """(proto, port) of each DOCKER-USER rule this target needs (iptables needs -p for a port)."""
        if self.port is not None and self.proto is None:
            return [(p, self.port) for p in PROTOCOLS]
        return [(self.proto, self.port)]

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.source, "port": self.port, "proto": self.proto}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        network = ipaddress.ip_network(str(data["ip"]), strict=True)
        port = data.get("port")
        proto = data.get("proto")
        return cls(network, int(port) if port is not None else None, str(proto) if proto else None)


def docker_rule_spec(network: Network, proto: str | None, port: int | None) -> list[str]:
    """An iptables rule spec for DOCKER-USER. After Docker's DNAT the destination port is the
    container's, so a published port is matched on the original destination port (conntrack)."""
    spec = ["-s", str(network)]
    if proto:
        spec += ["-p", proto]
    if port is not None:
        spec += ["-m", "conntrack", "--ctorigdstport", str(port), "--ctdir", "ORIGINAL"]
    return [*spec, "-m", "comment", "--comment", DOCKER_COMMENT, "-j", "DROP"]


def lockout_reason(target: Target, controller: Address | None, allowlist: Sequence[Network]) -> str:
    """Why blocking `target` would lock us (or an allowlisted range) out, or "" when it would not."""
    network = target.network
    if controller is not None and controller.version == network.version and controller in network:
        return (
            f"refusing to block {network}: it contains {controller}, the address this controller "
            "connects from (as the host sees it); nothing changed"
        )
    for allowed in allowlist:
        if allowed.version == network.version and network.overlaps(allowed):
            return (
                f"refusing to block {network}: it overlaps {allowed} in firewall_allowlist; nothing changed"
            )
    return ""


# ---------------------------------------------------------------------------------------------
# What ufw matches: its rule tuples (/etc/ufw/user.rules, user6.rules, app profiles resolved) to
# decide, and the chain it loaded into iptables (ufw-user-input) to verify. Never `ufw status` text.
# ---------------------------------------------------------------------------------------------

NONE, SOME, ALL = 0, 1, 2  # how much of a slice of traffic a rule matches
ADMIT, DENY, PASS = "admit", "deny", "pass"  # what a matching rule does with it
Profiles = Mapping[str, tuple[tuple[str, str], ...]]  # app profile name -> ((proto or "any", ports), ...)


def _source_match(rule_src: Network | None, network: Network) -> int:
    """None: a source the rule does not restrict."""
    if rule_src is None:
        return ALL
    if rule_src.version != network.version or not rule_src.overlaps(network):
        return NONE
    return ALL if network.subnet_of(rule_src) else SOME  # type: ignore[arg-type]


def _port_in(ports: str, port: int) -> bool:
    """`port` in ufw's (and multiport's) syntax: `22`, `80,443`, `60000:61000`, or a mix."""
    for part in ports.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (high or low).isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def _service_match(proto: str, ports: str, traffic: Traffic) -> int:
    """How much of `traffic` a rule's protocol ("any" or a name) and ports ("any" or a list) match."""
    if ports != "any":
        # ports exist for tcp and udp only (`allow 53` is one rule for each)
        if traffic.proto not in PROTOCOLS or proto not in ("any", traffic.proto):
            return NONE
        if traffic.port is None:
            return SOME
        return ALL if _port_in(ports, traffic.port) else NONE
    if proto == "any" or proto == traffic.proto:
        return ALL
    return SOME if traffic.proto == OTHER and proto not in PROTOCOLS else NONE


@dataclass(frozen=True)
class UfwRule:
    """One `### tuple ###` line of user.rules / user6.rules, in file order (= evaluation order)."""

    action: str  # allow, deny, reject, limit (ufw's logging suffix removed)
    proto: str  # for an app rule, as ufw resolved the profile when it wrote the rule
    dport: str
    dst: str
    sport: str
    src: str
    direction: str  # in, out, in_IFACE, out_IFACE, in_IFACE!out_IFACE
    forward: bool = False
    dapp: str = ""  # the destination app profile (`ufw allow OpenSSH`), "" for none
    sapp: str = ""
    comment: str = ""
    v6: bool = False

    @property
    def app(self) -> bool:
        return bool(self.dapp or self.sapp)

    @property
    def iface(self) -> str:
        """The interface an incoming rule is restricted to (`allow in on eth0 ...`), "" for none."""
        head, _, name = self.direction.partition("_")
        return name if head == "in" and "!" not in name else ""

    @property
    def inbound(self) -> bool:
        """Traffic to the host (ufw-user-input), whether plain, app or interface rule."""
        return not self.forward and (self.direction == "in" or bool(self.iface))

    @property
    def incoming(self) -> bool:
        """A plain incoming rule: the shape `ufw deny from SRC ...` writes."""
        return self.direction == "in" and not self.forward and not self.app

    @property
    def verdict(self) -> str:
        if self.action in ("allow", "limit"):
            return ADMIT
        return DENY if self.action in ("deny", "reject") else PASS

    def src_network(self) -> Network | None:
        try:
            return ipaddress.ip_network(self.src, strict=False)
        except ValueError:
            return None

    def blocks(self, target: Target) -> bool:
        """This is the deny rule `ufw deny TARGET` writes (comment aside)."""
        return (
            self.incoming
            and self.action == "deny"
            and self.proto == (target.proto or "any")
            and self.dport == (str(target.port) if target.port is not None else "any")
            and self.dst in _ANY_DST
            and self.sport == "any"
            and self.src_network() == target.network
        )

    def as_target(self) -> Target | None:
        """The target whose block this rule is, when it has block-ip's shape."""
        network = self.src_network()
        if (
            network is None
            or not self.incoming
            or self.action != "deny"
            or self.dst not in _ANY_DST
            or self.sport != "any"
            or self.proto not in ("any", *PROTOCOLS)
            or not (self.dport == "any" or self.dport.isdigit())
        ):
            return None
        port = int(self.dport) if self.dport.isdigit() else None
        return Target(network, port, None if self.proto == "any" else self.proto)

    def admits(self) -> bool:
        """An incoming allow (or limit) rule, app and interface rules included."""
        return self.inbound and self.verdict == ADMIT

    def match(self, network: Network, traffic: Traffic, profiles: Profiles) -> int:
        """How much of `traffic` from `network` this rule matches. What the rule cannot tell from the
        packet's source (its interface, destination address, source port) counts as SOME."""
        if not self.inbound:
            return NONE
        src = None if self.src in _ANY_DST else self.src_network()
        if src is None and self.src not in _ANY_DST:
            return SOME  # a source ufw wrote that we cannot read: assume it may match
        # an app rule matches the ports ufw resolved when it wrote the rule, and those the profile
        # lists now (a `ufw app update` or reload picks them up)
        services = [(self.proto, self.dport), *(profiles.get(self.dapp, ()) if self.dapp else ())]
        narrowed = self.iface or self.dst not in _ANY_DST or self.sport != "any" or self.sapp
        return min(
            _source_match(src, network),
            max(_service_match(proto, ports, traffic) for proto, ports in services),
            SOME if narrowed else ALL,
        )

    def allows_tcp_port(self, port: int, source: Address | None) -> bool:
        """Admits every new tcp connection to `port` from `source` (on any interface)."""
        if not self.admits() or self.iface or self.dst not in _ANY_DST or self.sport != "any":
            return False
        if source is None:  # not connected over SSH: only a rule for every source will do
            if self.src not in _ANY_DST:
                return False
            source = ipaddress.IPv6Address(0) if self.v6 else ipaddress.IPv4Address(0)
        return self.match(ipaddress.ip_network(source), Traffic("tcp", port), {}) == ALL

    def text(self) -> str:
        """The rule as a person would type it after `ufw`."""
        words = [self.action]
        if self.iface:
            words += ["in", "on", self.iface]
        if self.src not in _ANY_DST:
            words += ["from", self.src]
        if self.dst not in _ANY_DST:
            words += ["to", self.dst]
        if self.dapp:
            words.append(f"{self.dapp} ({self.dport}/{self.proto})")
        elif self.dport != "any":
            words.append(self.dport + ("" if self.proto == "any" else f"/{self.proto}"))
        elif self.proto != "any":
            words += ["proto", self.proto]
        return " ".join(words)


def parse_user_rules(text: str, v6: bool) -> tuple[UfwRule, ...]:
    """The rule tuples ufw keeps in user.rules (or user6.rules); malformed lines skipped as ufw does."""
    rules = []
    for line in text.splitlines():
        if not line.startswith("### tuple ###"):
            continue
        body = line[len("### tuple ###") :]
        comment = ""
        if " comment=" in body:
            body, _, hexed = body.partition(" comment=")
            try:
                comment = bytes.fromhex(hexed.strip()).decode(errors="replace")
            except ValueError:
                comment = ""
        fields = body.split()
        if len(fields) not in (7, 9):
            continue
        action, forward = fields[0], False
        if action.startswith("route:"):
            action, forward = action[len("route:") :], True
        # app profile names, spaces written as %20; "-" for none
        apps = [n.replace("%20", " ") if n != "-" else "" for n in fields[6:8]] if len(fields) == 9 else []
        rules.append(
            UfwRule(
                action=action.split("_", 1)[0],
                proto=fields[1],
                dport=fields[2],
                dst=fields[3],
                sport=fields[4],
                src=fields[5],
                direction=fields[-1],
                forward=forward,
                dapp=apps[0] if apps else "",
                sapp=apps[1] if apps else "",
                comment=comment,
                v6=v6,
            )
        )
    return tuple(rules)


def parse_app_profiles(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """ufw's application profiles (the files of /etc/ufw/applications.d, one after another): name ->
    ((proto, ports), ...). `ports=80,443/tcp|53` is tcp 80,443 and 53 over any protocol."""
    profiles: dict[str, tuple[tuple[str, str], ...]] = {}
    name = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
        elif name and line.partition("=")[0].strip() == "ports":
            entries = []
            for part in line.partition("=")[2].split("|"):
                ports, _, proto = part.strip().partition("/")
                if ports:
                    entries.append((proto.strip() or "any", ports.strip()))
            profiles[name] = tuple(entries)
    return profiles


class Judged(Protocol):
    """A rule in evaluation order: what it does with the traffic it matches, and how much it matches."""

    @property
    def verdict(self) -> str: ...

    def match(self, network: Network, traffic: Traffic, profiles: Profiles) -> int: ...

    def text(self) -> str: ...


@dataclass(frozen=True)
class Decision:
    """What the first deciding rule does with a slice of the source's traffic."""

    traffic: Traffic
    verdict: str  # ADMIT, DENY, or PASS when no rule decides it
    index: int | None = None  # of the deciding rule


def decide_traffic(
    rules: Sequence[Judged], network: Network, traffic: Traffic, profiles: Profiles
) -> Decision:
    """Walk `rules` in order as netfilter does: the first rule that admits part of the slice lets that
    part in; a deny decides only once it matches all of the slice (a narrower deny lets the rest on)."""
    for index, rule in enumerate(rules):
        matched = rule.match(network, traffic, profiles)
        if matched == NONE or rule.verdict == PASS:
            continue
        if rule.verdict == ADMIT:
            return Decision(traffic, ADMIT, index)
        if matched == ALL:
            return Decision(traffic, DENY, index)
    return Decision(traffic, PASS)


def admitted_first(
    rules: Sequence[Judged], target: Target, profiles: Profiles, upto: int | None = None
) -> list[tuple[int, list[Traffic]]]:
    """The rules (index, and the slices they let in) that admit part of the target's traffic before
    a deny of all of it, within rules[:upto + 1] (default: all)."""
    considered = rules if upto is None else rules[: upto + 1]
    found: dict[int, list[Traffic]] = {}
    for traffic in target.traffic():
        decision = decide_traffic(considered, target.network, traffic, profiles)
        if decision.verdict == ADMIT and decision.index is not None:
            found.setdefault(decision.index, []).append(decision.traffic)
    return sorted(found.items())


def _slices(traffic: Sequence[Traffic]) -> str:
    return ", ".join(t.label() for t in traffic)


def shadow_text(rules: Sequence[Judged], shadows: Sequence[tuple[int, list[Traffic]]]) -> str:
    """`rule 1 (allow OpenSSH (22/tcp)) admits its tcp first`, for every shadowing rule."""
    return "; ".join(
        f"rule {i + 1} ({rules[i].text()}) admits its {_slices(t)} traffic first" for i, t in shadows
    )


def chain_name(v6: bool) -> str:
    return "ufw6-user-input" if v6 else "ufw-user-input"


@dataclass(frozen=True)
class ChainRule:
    """One rule of ufw's loaded user-input chain, from `iptables -S` (iptables' own syntax)."""

    line: str  # as iptables prints it, for messages
    src: Network | None = None  # None: any source
    proto: str = "any"
    dports: str = "any"  # `--dport` / multiport `--dports`, in ufw's syntax
    narrowed: bool = False  # other conditions (interface, destination, state, rate, a negation)
    jump: str = ""

    @property
    def verdict(self) -> str:
        if self.jump in ("DROP", "REJECT") or self.jump.endswith("-user-limit"):
            return DENY  # ufw's limit chain rejects (after the rate check, so always narrowed)
        if self.jump in ("", "LOG", "RETURN") or "-logging-" in self.jump:
            return PASS  # ufw's logging chains log and return
        return ADMIT  # ACCEPT, ufw's limit-accept, and any chain we do not know (may accept)

    def match(self, network: Network, traffic: Traffic, profiles: Profiles) -> int:
        return min(
            _source_match(self.src, network),
            _service_match(self.proto, self.dports, traffic),
            SOME if self.narrowed else ALL,
        )

    def text(self) -> str:
        return self.line


_NEUTRAL_MODULES = frozenset({"tcp", "udp", "multiport", "comment"})
_TARGET_OPTIONS = frozenset({"--reject-with", "--log-prefix", "--log-level"})  # not conditions
_VALUE_OPTIONS = frozenset(
    {"-s", "-d", "-i", "-o", "-p", "-j", "-g", "-m", "--dport", "--dports", "--sport", "--sports",
     "--comment", "--ctstate", "--state", "--name", "--mask", "--seconds", "--hitcount", "--limit",
     "--limit-burst", "--log-prefix", "--log-level", "--reject-with", "--destination-ports",
     "--source-ports"}
)  # fmt: skip


def parse_chain(text: str, chain: str) -> tuple[ChainRule, ...]:
    """The `-A CHAIN ...` lines of `iptables -S CHAIN`, in order. What this parser does not know
    narrows the rule (matches SOME): never read as a deny of everything."""
    rules = []
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            words = []
        if words[:2] != ["-A", chain]:
            continue
        values: dict[str, str] = {}
        narrowed, negate, index = False, False, 2
        while index < len(words):
            word = words[index]
            if word == "!":
                negate, index = True, index + 1
                continue
            takes_value = word in _VALUE_OPTIONS or (
                index + 1 < len(words) and not words[index + 1].startswith("-") and word.startswith("-")
            )
            value = words[index + 1] if takes_value and index + 1 < len(words) else ""
            index += 2 if takes_value else 1
            if negate or word not in _VALUE_OPTIONS:
                narrowed, negate = True, False
                continue
            if word == "-m" and value not in _NEUTRAL_MODULES:
                narrowed = True
            elif word in ("-s", "-p", "--dport", "--dports", "-j", "-g"):
                values[word] = value
            elif word not in ("-m", "--comment", *_TARGET_OPTIONS):
                narrowed = True  # -i, -d, --sport, --ctstate, ...
        try:
            src = ipaddress.ip_network(values["-s"], strict=False) if "-s" in values else None
        except ValueError:
            src, narrowed = None, True
        rules.append(
            ChainRule(
                line=line.strip().split(" ", 2)[2] if len(words) > 2 else "",
                src=src,
                proto=values.get("-p", "any"),
                dports=values.get("--dport") or values.get("--dports") or "any",
                narrowed=narrowed,
                jump=values.get("-j") or values.get("-g", ""),
            )
        )
    return tuple(rules)


# ---------------------------------------------------------------------------------------------
# Docker's DOCKER-USER chain, from `iptables -S` (iptables' own rule syntax)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerRule:
    """A DROP rule block-ip put in DOCKER-USER (recognised by its comment)."""

    v6: bool
    network: Network
    proto: str | None
    port: int | None
    spec: tuple[str, ...]  # as `iptables -S` prints it, after `-A DOCKER-USER`: what -D needs


def parse_docker_rules(text: str, v6: bool) -> tuple[DockerRule, ...]:
    rules = []
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[:2] != ["-A", DOCKER_CHAIN] or len(words) % 2:
            continue
        options: dict[str, str] = {}
        for name, value in zip(words[2::2], words[3::2], strict=True):
            options[name] = value
        if options.get("--comment") != DOCKER_COMMENT or options.get("-j") != "DROP":
            continue
        try:
            network = ipaddress.ip_network(options.get("-s", ""), strict=True)
        except ValueError:
            continue
        port_text = options.get("--ctorigdstport")
        port = int(port_text) if port_text and port_text.isdigit() else None
        rules.append(DockerRule(v6, network, options.get("-p"), port, tuple(words[2:])))
    return tuple(rules)


# ---------------------------------------------------------------------------------------------
# The host's record of blocks (expiry and comment)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockRecord:
    target: Target
    comment: str = ""
    created: int = 0
    ttl: int | None = None
    expires: int | None = None

    def expired(self, now: int) -> bool:
        return self.expires is not None and self.expires <= now

    def expiry_text(self, now: int) -> str:
        if self.expires is None:
            return "no expiry"
        if self.expired(now):
            return f"EXPIRED {format_duration(now - self.expires)} ago ({format_time(self.expires)})"
        return f"expires in {format_duration(self.expires - now)} ({format_time(self.expires)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.target.to_dict(),
            "comment": self.comment,
            "created": self.created,
            "ttl": self.ttl,
            "expires": self.expires,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockRecord:
        ttl, expires = data.get("ttl"), data.get("expires")
        return cls(
            Target.from_dict(data),
            str(data.get("comment") or ""),
            int(data.get("created") or 0),
            int(ttl) if ttl is not None else None,
            int(expires) if expires is not None else None,
        )


def parse_state(text: str) -> tuple[BlockRecord, ...]:
    """The state file's records; raises ValueError when it is not what we write."""
    if not text.strip():
        return ()
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
        raise ValueError("no 'blocks' list")
    try:
        return tuple(BlockRecord.from_dict(item) for item in data["blocks"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad record: {exc}") from None


def render_state(records: Iterable[BlockRecord]) -> str:
    return json.dumps({"version": 1, "blocks": [r.to_dict() for r in records]}, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# Facts: one round trip
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatePath:
    directory: str

    @property
    def file(self) -> str:
        return f"{self.directory.rstrip('/')}/{STATE_FILE_NAME}"

    @classmethod
    def from_host(cls, host: Host) -> StatePath:
        return cls(str(host.get("firewall_state_dir") or DEFAULT_STATE_DIR))


@dataclass(frozen=True)
class FirewallFacts:
    now: int = 0
    controller: Address | None = None  # the controller's address as the host sees it
    ssh_port: int | None = None  # the host's port the controller's SSH session came in on
    ufw_installed: bool = False
    ufw_active: bool = False  # ufw's chains are loaded in iptables
    ufw_enabled_conf: bool = False  # ENABLED=yes in /etc/ufw/ufw.conf
    ipv6: bool = False  # IPV6=yes in /etc/default/ufw
    rules4: tuple[UfwRule, ...] = ()
    rules6: tuple[UfwRule, ...] = ()
    profiles: Profiles = field(default_factory=dict)  # /etc/ufw/applications.d
    chain4: tuple[ChainRule, ...] | None = None  # ufw-user-input as loaded (None: not loaded)
    chain6: tuple[ChainRule, ...] | None = None  # ufw6-user-input
    docker4: bool = False  # DOCKER-USER exists in iptables: the host runs Docker
    docker6: bool = False
    docker_rules: tuple[DockerRule, ...] = ()
    records: tuple[BlockRecord, ...] = ()
    conntrack: bool = False  # the conntrack tool is installed
    flows: int | None = None  # tracked flows the asked-about source opened (None: not counted)
    error: str = ""

    def rules(self, v6: bool) -> tuple[UfwRule, ...]:
        return self.rules6 if v6 else self.rules4

    def chain(self, v6: bool) -> tuple[ChainRule, ...] | None:
        return self.chain6 if v6 else self.chain4

    def has_docker(self, v6: bool) -> bool:
        return self.docker6 if v6 else self.docker4

    def record(self, target: Target) -> BlockRecord | None:
        return next((r for r in self.records if r.target == target), None)

    def docker_rules_for(self, target: Target) -> list[DockerRule]:
        keys = target.docker_keys()
        return [
            r
            for r in self.docker_rules
            if r.v6 == target.v6 and r.network == target.network and (r.proto, r.port) in keys
        ]

    def docker_missing(self, target: Target) -> list[tuple[str | None, int | None]]:
        have = {(r.proto, r.port) for r in self.docker_rules_for(target)}
        return [key for key in target.docker_keys() if key not in have]


_CONNECTION_SCRIPT = r"""
conn=${SSH_CONNECTION:-}
p=$$
# sudo drops SSH_CONNECTION: look for it in the environment of the ancestors (the SSH session)
while [ -z "$conn" ] && [ "${p:-1}" -gt 1 ]; do
  conn=$(tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | sed -n 's/^SSH_CONNECTION=//p' | head -n 1)
  p=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null)
done
"""


def facts_command(state: StatePath, flows_of: Target | None = None) -> str:
    """Shell text that prints every fact in marked sections; every value quoted. With `flows_of`,
    also the number of tracked flows (conntrack) that source opened."""
    q = shlex.quote
    flows = []
    if flows_of is not None:
        listing = "; ".join(shlex.join(["conntrack", "-L", *f]) for f in flows_of.conntrack_filters())
        flows = [f'[ "$ct" = yes ] && echo "{MARK}flows $({{ {listing}; }} 2>/dev/null | wc -l)"']
    return "\n".join(
        [
            f'echo "{MARK}now $(date +%s)"',
            _CONNECTION_SCRIPT.strip(),
            f'echo "{MARK}ssh $conn"',
            f'if command -v ufw >/dev/null 2>&1; then echo "{MARK}ufw yes"; else echo "{MARK}ufw no"; fi',
            f'echo "{MARK}conf"; cat /etc/ufw/ufw.conf 2>/dev/null',
            f'echo "{MARK}default"; cat /etc/default/ufw 2>/dev/null',
            f'echo "{MARK}rules4"; cat /etc/ufw/user.rules 2>/dev/null',
            f'echo "{MARK}rules6"; cat /etc/ufw/user6.rules 2>/dev/null',
            f'echo "{MARK}apps"; for f in /etc/ufw/applications.d/*; do [ -f "$f" ] && cat "$f"; echo; done',
            *(
                f'd=$({tool} -w 10 -S {chain} 2>/dev/null); echo "{MARK}{name} $?"; echo "$d"'
                for tool, chain, name in (
                    ("iptables", chain_name(False), "chain4"),
                    ("ip6tables", chain_name(True), "chain6"),
                    ("iptables", DOCKER_CHAIN, "docker4"),
                    ("ip6tables", DOCKER_CHAIN, "docker6"),
                )
            ),
            "ct=no; command -v conntrack >/dev/null 2>&1 && ct=yes",
            f'echo "{MARK}conntrack $ct"',
            *flows,
            f"if [ -e {q(state.file)} ]; then echo '{MARK}state present'; cat {q(state.file)}; "
            f"else echo '{MARK}state absent'; fi",
            f'echo "{MARK}end"',
        ]
    )


def _key_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("'\"")
    return values


def parse_facts(output: str, state: StatePath) -> FirewallFacts:
    """Pure parser of `facts_command` output."""
    found = sections(output)
    if "end" not in found:
        return FirewallFacts(error="the facts command did not finish: " + output.strip()[-300:])
    now_text = found.get("now", ("", ""))[0]
    controller: Address | None = None
    ssh_port: int | None = None
    words = found.get("ssh", ("", ""))[0].split()
    if len(words) == 4:
        try:
            controller = ipaddress.ip_address(words[0].split("%")[0])
        except ValueError:
            controller = None
        if isinstance(controller, ipaddress.IPv6Address) and controller.ipv4_mapped is not None:
            controller = controller.ipv4_mapped
        ssh_port = int(words[3]) if words[3].isdigit() else None
    records: tuple[BlockRecord, ...] = ()
    state_arg, state_text = found.get("state", ("absent", ""))
    if state_arg == "present":
        try:
            records = parse_state(state_text)
        except ValueError as exc:
            return FirewallFacts(
                error=f"state file {state.file} is not what block-ip writes ({exc}); fix or remove it"
            )
    docker4_rc, docker4_text = found.get("docker4", ("1", ""))
    docker6_rc, docker6_text = found.get("docker6", ("1", ""))
    chains = {}
    for name, v6 in (("chain4", False), ("chain6", True)):
        rc, text = found.get(name, ("1", ""))
        chains[name] = parse_chain(text, chain_name(v6)) if rc == "0" else None
    flows_text = found.get("flows", ("", ""))[0]
    return FirewallFacts(
        now=int(now_text) if now_text.isdigit() else 0,
        controller=controller,
        ssh_port=ssh_port,
        ufw_installed=found.get("ufw", ("no", ""))[0] == "yes",
        ufw_active=chains["chain4"] is not None,  # ufw's chains are loaded only while it is active
        ufw_enabled_conf=_key_values(found.get("conf", ("", ""))[1]).get("ENABLED", "").lower() == "yes",
        ipv6=_key_values(found.get("default", ("", ""))[1]).get("IPV6", "").lower() == "yes",
        rules4=parse_user_rules(found.get("rules4", ("", ""))[1], v6=False),
        rules6=parse_user_rules(found.get("rules6", ("", ""))[1], v6=True),
        docker4=docker4_rc == "0",
        docker6=docker6_rc == "0",
        docker_rules=(
            (parse_docker_rules(docker4_text, v6=False) if docker4_rc == "0" else ())
            + (parse_docker_rules(docker6_text, v6=True) if docker6_rc == "0" else ())
        ),
        profiles=parse_app_profiles(found.get("apps", ("", ""))[1]),
        chain4=chains["chain4"],
        chain6=chains["chain6"],
        records=records,
        conntrack=found.get("conntrack", ("no", ""))[0] == "yes",
        flows=int(flows_text) if flows_text.isdigit() else None,
    )


def gather(remote: Remote, state: StatePath, flows_of: Target | None = None) -> FirewallFacts:
    result = remote.run(facts_command(state, flows_of), timeout=COMMAND_TIMEOUT)
    if not result.ok:
        raise HostError(f"gathering firewall facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_facts(result.stdout, state)


# ---------------------------------------------------------------------------------------------
# Layers: where a block holds right now
# ---------------------------------------------------------------------------------------------


def ufw_deny_index(rules: Sequence[UfwRule], target: Target) -> int | None:
    return next((i for i, r in enumerate(rules) if r.blocks(target)), None)


def ufw_order_problems(target: Target, facts: FirewallFacts, ours: int) -> list[str]:
    """Why the target's ufw deny (rule index `ours`) does not decide all of its traffic; [] for none.

    First by ufw's rule tuples: an allow rule above the deny that admits part of the traffic (app
    profiles resolved, interface rules included). Then, while ufw is active, by the chain it loaded
    into iptables, in the order netfilter walks it: that is what ufw actually matches.
    """
    rules = facts.rules(target.v6)
    shadows = admitted_first(rules, target, facts.profiles, upto=ours)
    if shadows:
        return [f"the ufw deny (rule {ours + 1}) is below an allow rule: {shadow_text(rules, shadows)}"]
    if not facts.ufw_active:
        return []
    name, chain = chain_name(target.v6), facts.chain(target.v6)
    if chain is None:
        return [f"ufw's {name} chain is not loaded"]
    problems = []
    admitted = admitted_first(chain, target, {})
    if admitted:
        problems.append(f"ufw's loaded {name} chain: {shadow_text(chain, admitted)}")
    undecided = [
        t for t in target.traffic() if decide_traffic(chain, target.network, t, {}).verdict == PASS
    ]
    if undecided:
        problems.append(f"ufw's loaded {name} chain has no DROP for its {_slices(undecided)} traffic")
    return problems


def layers(target: Target, facts: FirewallFacts) -> tuple[list[str], list[str]]:
    """(layers that hold the block, problems with the ones that should but do not)."""
    holding: list[str] = []
    problems: list[str] = []
    ours = ufw_deny_index(facts.rules(target.v6), target)
    if ours is None:
        problems.append("no ufw deny rule")
    else:
        order = ufw_order_problems(target, facts, ours)
        if not facts.ufw_active:
            problems.append("the ufw deny rule is there but ufw is inactive")
        problems += order
        if facts.ufw_active and not order:
            holding.append("ufw")
    if facts.has_docker(target.v6):
        missing = facts.docker_missing(target)
        if missing:
            partial = len(missing) < len(target.docker_keys())
            which = f" for {missing[0][0]}" if partial else ""
            problems.append(f"no {DOCKER_CHAIN} rule{which}")
        else:
            holding.append(DOCKER_CHAIN)
    return holding, problems


def describe(target: Target, facts: FirewallFacts) -> str:
    holding, problems = layers(target, facts)
    text = f"{target.label()}: " + (f"blocked in {' and '.join(holding)}" if holding else "not blocked")
    if problems:
        text += " (" + "; ".join(problems) + ")"
    elif not facts.has_docker(target.v6):
        text += f" (no {DOCKER_CHAIN} chain for IPv{target.network.version}: no Docker layer on this host)"
    record = facts.record(target)
    if record is not None:
        text += f"; {record.expiry_text(facts.now)}"
    return text


# ---------------------------------------------------------------------------------------------
# Decide: pure
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run, in order, and the state file to write; or nothing, with the reason; or a refusal."""

    commands: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()  # in words, for check mode and the result
    state: tuple[BlockRecord, ...] | None = None  # the state file to write (None: leave it)
    reason: str = ""  # why nothing is to be done
    refused: str = ""  # why the host fails with nothing changed
    notes: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # run once the block is in place and recorded (conntrack -D)

    @property
    def nothing(self) -> bool:
        return not self.refused and not self.commands and self.state is None and not self.after


@dataclass(frozen=True)
class BlockRequest:
    target: Target
    ttl: int | None = None
    comment: str = ""
    enable: bool = False
    notes: tuple[str, ...] = field(default=())
    kill_established: bool = False


def ufw_command(*args: str) -> str:
    return shlex.join(["ufw", *args])


def _iptables(v6: bool) -> str:
    return "ip6tables" if v6 else "iptables"


def decide_block(request: BlockRequest, facts: FirewallFacts, allowlist: Sequence[Network]) -> Plan:
    target = request.target
    family = f"IPv{target.network.version}"
    if facts.error:
        return Plan(refused=facts.error)
    if not facts.ufw_installed:
        return Plan(refused="ufw is not installed on this host; nothing changed")
    refusal = lockout_reason(target, facts.controller, allowlist)
    if refusal:
        return Plan(refused=refusal)
    if target.v6 and not facts.ipv6:
        return Plan(
            refused="ufw has IPV6=no in /etc/default/ufw, so it cannot hold an IPv6 rule; nothing changed"
        )

    commands: list[str] = []
    changes: list[str] = []
    notes = list(request.notes)
    enable_after: list[str] = []
    if not facts.ufw_active:
        if not request.enable:
            return Plan(
                refused="ufw is inactive on this host, so a deny rule would not take effect; nothing "
                "changed. --enable first allows the SSH port the controller uses, then enables ufw"
            )
        if facts.controller is None or facts.ssh_port is None:
            notes.append("not connected over SSH: no SSH allow rule needed")
        else:
            rules = facts.rules(facts.controller.version == 6)
            if not any(r.allows_tcp_port(facts.ssh_port, facts.controller) for r in rules):
                commands.append(ufw_command("allow", f"{facts.ssh_port}/tcp"))
                changes.append(f"allow SSH {facts.ssh_port}/tcp in ufw (the controller's connection)")
        enable_after = [ufw_command("--force", "enable")]

    ours = ufw_deny_index(facts.rules(target.v6), target)
    deny = ufw_command("prepend", "deny", *target.ufw_args(), "comment", UFW_COMMENT)
    if ours is None:
        commands.append(deny)
        changes.append(f"add a ufw deny for {target.label()} at the top of the {family} rules")
    else:
        order = ufw_order_problems(target, facts, ours)
        if order:
            # above every rule: the deny is then the first rule that matches the source's traffic
            commands += [ufw_command("delete", "deny", *target.ufw_args()), deny]
            changes.append(
                f"move the ufw deny for {target.label()} from rule {ours + 1} to the top "
                f"({'; '.join(order)})"
            )
    commands += enable_after
    if enable_after:
        changes.append("enable ufw")

    if facts.has_docker(target.v6):
        for proto, port in reversed(facts.docker_missing(target)):
            spec = docker_rule_spec(target.network, proto, port)
            commands.append(shlex.join([_iptables(target.v6), "-w", "10", "-I", DOCKER_CHAIN, "1", *spec]))
            changes.append(f"add a DROP for {target.label()} to {DOCKER_CHAIN} ({family}{_for(proto)})")
    else:
        notes.append(f"no {DOCKER_CHAIN} chain for {family} (no Docker): ufw only")

    state = _block_state(request, facts)
    if state is not None:
        changes.append(_state_change(request, facts))
    after, note = _established(request, facts, changing=bool(commands or state is not None))
    if after:
        changes.append(f"drop the tracked flows {target.label()} has open (conntrack -D; {facts.flows} now)")
    if note:
        notes.append(note)
    if not commands and state is None and not after:
        return Plan(reason=f"already blocked: {describe(target, facts)}", notes=tuple(notes))
    return Plan(tuple(commands), tuple(changes), state, notes=tuple(notes), after=tuple(after))


def conntrack_delete(target: Target) -> list[str]:
    """`conntrack -D` for the source's flows, printing conntrack's count; "0 deleted" (exit 1) is no
    error, any other failure is."""
    return [
        f"out=$({shlex.join(['conntrack', '-D', *f])} 2>&1 >/dev/null) || case \"$out\" in "
        '*" 0 flow entries have been deleted"*) ;; *) printf "%s\\n" "$out" >&2; exit 1;; esac; '
        'printf "%s\\n" "$out"'
        for f in target.conntrack_filters()
    ]


_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")


def flows_dropped(apply_output: str) -> int:
    return sum(int(n) for n in _DELETED_RE.findall(apply_output))


def _established(request: BlockRequest, facts: FirewallFacts, changing: bool) -> tuple[list[str], str]:
    """The commands that drop the connections the source already has open (ufw accepts their
    traffic before any of its rules), and what to say about them."""
    source = request.target.label()
    if not facts.conntrack:
        return [], (
            f"connections {source} already has open were not checked or dropped: conntrack is not "
            "installed on the host (they survive the block)"
        )
    if not request.kill_established:
        if not facts.flows:
            return [], f"no tracked connections from {source}"
        return [], (
            f"{facts.flows} tracked flow(s) from {source} left open: ufw accepts established traffic "
            "before its rules (--kill-established drops them)"
        )
    if facts.flows or changing:
        return conntrack_delete(request.target), ""
    return [], f"no tracked connections from {source} to drop"


def _for(proto: str | None) -> str:
    return f", {proto}" if proto else ""


def _block_state(request: BlockRequest, facts: FirewallFacts) -> tuple[BlockRecord, ...] | None:
    """The state file with this block recorded, or None when the record is already as asked.

    A re-run with the same --ttl keeps the recorded expiry (so the run is idempotent); a different
    --ttl (or none) sets a new expiry from now.
    """
    existing = facts.record(request.target)
    if existing is not None and existing.ttl == request.ttl and existing.comment == request.comment:
        return None
    expires = facts.now + request.ttl if request.ttl is not None else None
    record = BlockRecord(
        request.target,
        request.comment,
        existing.created if existing else facts.now,
        request.ttl,
        expires,
    )
    others = [r for r in facts.records if r.target != request.target]
    return (*others, record)


def _state_change(request: BlockRequest, facts: FirewallFacts) -> str:
    existing = facts.record(request.target)
    expiry = (
        f"expiry in {format_duration(request.ttl)} ({format_time(facts.now + request.ttl)})"
        if request.ttl is not None
        else "no expiry"
    )
    verb = "update the record of" if existing else "record"
    return f"{verb} the block on the host ({expiry}" + (
        f", comment {request.comment!r})" if request.comment else ")"
    )


def _removal(targets: Sequence[Target], facts: FirewallFacts) -> tuple[list[str], list[str]]:
    """Commands (and words) that take every given target out of ufw and DOCKER-USER."""
    commands: list[str] = []
    changes: list[str] = []
    seen: set[DockerRule] = set()
    for target in targets:
        if any(r.blocks(target) for r in facts.rules(target.v6)):
            commands.append(ufw_command("delete", "deny", *target.ufw_args()))
            changes.append(f"delete the ufw deny for {target.label()}")
        for rule in facts.docker_rules_for(target):
            if rule in seen:
                continue
            seen.add(rule)
            commands.append(shlex.join([_iptables(rule.v6), "-w", "10", "-D", DOCKER_CHAIN, *rule.spec]))
            changes.append(f"delete the {DOCKER_CHAIN} DROP for {target.label()}{_for(rule.proto)}")
    return commands, changes


def matching_targets(target: Target, facts: FirewallFacts) -> list[Target]:
    """The blocks an unblock of `target` lifts: exactly it, or with no --port/--proto every block of
    that source (whatever port or protocol it was narrowed to)."""
    if target.port is not None or target.proto is not None:
        return [target]
    found = [target]
    candidates = [r.as_target() for r in facts.rules(target.v6)] + [r.target for r in facts.records]
    candidates += [Target(r.network, r.port, r.proto) for r in facts.docker_rules if r.v6 == target.v6]
    for candidate in candidates:
        if candidate is not None and candidate.network == target.network and candidate not in found:
            # a DOCKER-USER pair (tcp+udp) belongs to the port-only block
            if (
                candidate.port is not None
                and candidate.proto
                and Target(candidate.network, candidate.port) in found
            ):
                continue
            found.append(candidate)
    return found


def decide_unblock(target: Target, facts: FirewallFacts) -> Plan:
    if facts.error:
        return Plan(refused=facts.error)
    targets = matching_targets(target, facts)
    commands, changes = _removal(targets, facts)
    remaining = tuple(r for r in facts.records if r.target not in targets)
    state = remaining if len(remaining) != len(facts.records) else None
    if state is not None:
        changes.append("remove the record of the block from the host")
    if not commands and state is None:
        return Plan(
            reason=f"{target.label()} is not blocked (no ufw deny, no {DOCKER_CHAIN} rule, no record)"
        )
    return Plan(tuple(commands), tuple(changes), state)


def decide_expired(facts: FirewallFacts) -> Plan:
    if facts.error:
        return Plan(refused=facts.error)
    expired = [r for r in facts.records if r.expired(facts.now)]
    if not expired:
        pending = [r.expires for r in facts.records if r.expires is not None]
        when = f"; next expiry {format_time(min(pending))}" if pending else ""
        return Plan(reason=f"no expired blocks ({len(facts.records)} recorded{when})")
    commands, changes = _removal([r.target for r in expired], facts)
    remaining = tuple(r for r in facts.records if not r.expired(facts.now))
    lifted = ", ".join(r.target.label() for r in expired)
    changes.append(f"remove the record of {len(expired)} expired block(s): {lifted}")
    return Plan(tuple(commands), tuple(changes), remaining)


# ---------------------------------------------------------------------------------------------
# Apply and verify: the commands, then the facts again, in one round trip
# ---------------------------------------------------------------------------------------------


def apply_command(plan: Plan, state: StatePath, flows_of: Target | None = None) -> str:
    """The plan's commands under `set -e`, then the new state file from stdin, then the commands
    that need the block in place (conntrack -D), then the facts."""
    body = list(plan.commands)
    if plan.state is not None:
        body.append(state_write(plan.state, state).command())
    body += plan.after
    script = "\n".join(["set -e", *body])
    return "\n".join(
        [
            f"out=$(sh -c {shlex.quote(script)} 2>&1); rc=$?",
            f'echo "{MARK}apply $rc"; printf "%s\\n" "$out"',
            facts_command(state, flows_of),
        ]
    )


def state_write(records: Iterable[BlockRecord], state: StatePath) -> remote_write.Write:
    """The state file as one checked write: whole or not at all, whatever happens to the stream."""
    return remote_write.Write(state.file, render_state(records).encode(), make_dir=True)


def apply(
    remote: Remote, plan: Plan, state: StatePath, flows_of: Target | None = None
) -> tuple[FirewallFacts, str]:
    """The facts afterwards, and what the commands printed."""
    stdin = state_write(plan.state, state).stdin if plan.state is not None else b""
    result = remote.run(apply_command(plan, state, flows_of), stdin=stdin, timeout=COMMAND_TIMEOUT)
    found = sections(result.stdout)
    code, output = found.get("apply", ("", result.stderr))
    if code != "0":
        detail = "\n".join(output.strip().splitlines()[-5:]) or result.tail()
        raise HostError(
            f"applying the firewall change failed (exit {code or result.exit_code}): {detail}", result
        )
    return parse_facts(result.stdout, state), output


# ---------------------------------------------------------------------------------------------
# The remediations
# ---------------------------------------------------------------------------------------------


def allowlist_of(host: Host) -> tuple[Network, ...]:
    return parse_allowlist(host.get("firewall_allowlist"), f"{host.source}: host {host.name}")


Check = Callable[[FirewallFacts, str], str]  # (facts, apply output) -> "" when as intended, else why not
Outcome = Callable[[FirewallFacts, str], tuple[str, dict[str, Any]]]  # the result line and its data


def carry_out(
    ctx: HostContext, plan: Plan, check: Check, outcome: Outcome, flows_of: Target | None = None
) -> None:
    """Record the decision; unless in check mode, apply the plan and verify that it took."""
    notes = "".join(f"; {n}" for n in plan.notes)
    if plan.refused:
        ctx.record("decide", Status.FAILED, plan.refused)
        return
    if plan.nothing:
        ctx.record("decide", Status.OK, plan.reason + notes)
        return
    diff = "\n".join(f"+ {c}" for c in plan.commands)
    if plan.state is not None:
        diff += f"\n+ write the state file ({len(plan.state)} block(s))"
    diff += "".join(f"\n+ {c}" for c in plan.after)
    if ctx.check:
        ctx.record("decide", Status.CHANGED, "would " + "; ".join(plan.changes) + notes, diff=diff.strip())
        return
    with ctx.step("apply") as step:
        after, output = apply(ctx.remote, plan, StatePath.from_host(ctx.host), flows_of)
        problem = after.error or check(after, output)
        if problem:
            raise HostError(f"ran: {'; '.join(plan.changes)}; but afterwards: {problem}")
        message, data = outcome(after, output)
        done = "; ".join(plan.changes)
        step.done(Status.CHANGED, f"{message} (done: {done}){notes}", diff=diff.strip(), **data)


class _Firewall(Remediation):
    """Shared by the firewall tasks: the facts step."""

    def flows_of(self) -> Target | None:
        """The source whose tracked flows the facts count (None: count none)."""
        return None

    def facts_under_lock(self, host: Host) -> str:
        return facts_command(StatePath.from_host(host), self.flows_of())

    def facts(self, ctx: HostContext) -> FirewallFacts:
        with ctx.step("facts") as step:
            state = StatePath.from_host(ctx.host)
            # Under the lock the facts came with it (same round trip); in --check they are read here.
            prefetched = ctx.prefetched
            facts = (
                gather(ctx.remote, state, self.flows_of())
                if prefetched is None
                else parse_facts(prefetched, state)
            )
            if facts.error:
                step.done(Status.FAILED, facts.error)
                return facts
            ufw = "no ufw"
            if facts.ufw_installed:
                ufw = "ufw active" if facts.ufw_active else "ufw INACTIVE"
            docker = f"{DOCKER_CHAIN} present" if facts.docker4 or facts.docker6 else f"no {DOCKER_CHAIN}"
            step.done(
                Status.OK,
                f"{ufw}, {len(facts.rules4) + len(facts.rules6)} ufw rules, {docker}, "
                f"{len(facts.records)} recorded block(s)",
                controller=str(facts.controller) if facts.controller else None,
                ssh_port=facts.ssh_port,
            )
        return facts


def _target_from_flags(ip: str | None, port: str | int | None, proto: str | None) -> tuple[Target, str]:
    network, note = parse_network(ip)
    return Target(network, parse_port(port), parse_proto(proto)), note


class BlockIp(_Firewall):
    """Deny a source in ufw (above the allow rules) and in DOCKER-USER; record expiry and comment;
    with kill_established, drop the connections it already has open."""

    task: ClassVar[str] = "block-ip"

    def __init__(
        self,
        ip: str | None,
        port: str | int | None = None,
        proto: str | None = None,
        ttl: str | None = None,
        comment: str | None = None,
        enable: bool = False,
        kill_established: bool = False,
    ) -> None:
        target, note = _target_from_flags(ip, port, proto)
        self.request = BlockRequest(
            target,
            parse_ttl(ttl),
            parse_comment(comment),
            enable,
            (note,) if note else (),
            kill_established,
        )

    def arguments(self) -> dict[str, Any]:
        r = self.request
        return {
            **r.target.to_dict(),
            "ttl": r.ttl,
            "comment": r.comment,
            "enable": r.enable,
            "kill_established": r.kill_established,
        }

    def flows_of(self) -> Target | None:
        return self.request.target

    def validate(self, host: Host) -> None:
        super().validate(host)
        refusal = lockout_reason(self.request.target, None, allowlist_of(host))
        if refusal:
            raise UsageError(f"host {host.name}: {refusal}")

    def run(self, ctx: HostContext) -> None:
        before = self.facts(ctx)
        if before.error:
            return
        target = self.request.target
        plan = decide_block(self.request, before, allowlist_of(ctx.host))

        def check(after: FirewallFacts, output: str) -> str:
            _, problems = layers(target, after)
            if after.record(target) is None:
                problems.append("the block is not recorded in the state file")
            return "; ".join(problems)

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            dropped = flows_dropped(output) if plan.after else None
            message = describe(target, after)
            if dropped is not None:
                message += f"; dropped {dropped} tracked flow(s) from {target.label()} (conntrack)"
                if after.flows:
                    # not a failure: ufw accepts some traffic before its rules (ping, multicast), and
                    # conntrack tracks it again at once
                    message += f", {after.flows} tracked again since (traffic ufw accepts before its rules)"
            established = {
                "kill": self.request.kill_established,
                "conntrack": after.conntrack,
                "dropped": dropped,
                "open": after.flows,
            }
            return message, {"layers": layers(target, after)[0], "established": established}

        carry_out(ctx, plan, check, outcome, self.flows_of())


class UnblockIp(_Firewall):
    """Lift a block in every layer (ufw, DOCKER-USER) and forget its record."""

    task: ClassVar[str] = "unblock-ip"

    def __init__(self, ip: str | None, port: str | int | None = None, proto: str | None = None) -> None:
        self.target, _ = _target_from_flags(ip, port, proto)

    def arguments(self) -> dict[str, Any]:
        return self.target.to_dict()

    def run(self, ctx: HostContext) -> None:
        before = self.facts(ctx)
        if before.error:
            return
        targets = matching_targets(self.target, before)

        def check(after: FirewallFacts, output: str) -> str:
            left = [t.label() for t in targets if layers(t, after)[0] or after.record(t) is not None]
            return f"still blocked: {', '.join(left)}" if left else ""

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            return f"{self.target.label()} unblocked in every layer", {"lifted": [t.label() for t in targets]}

        carry_out(ctx, decide_unblock(self.target, before), check, outcome)


class UnblockExpired(_Firewall):
    """Lift every recorded block whose expiry has passed (by the host's clock); cron-safe."""

    task: ClassVar[str] = "unblock-expired"
    cron_safe: ClassVar[bool] = True

    def run(self, ctx: HostContext) -> None:
        before = self.facts(ctx)
        if before.error:
            return
        expired = [r.target for r in before.records if r.expired(before.now)]

        def check(after: FirewallFacts, output: str) -> str:
            left = [t.label() for t in expired if layers(t, after)[0] or after.record(t) is not None]
            return f"still blocked: {', '.join(left)}" if left else ""

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            labels = [t.label() for t in expired]
            return f"lifted {len(labels)} expired block(s): {', '.join(labels)}; {len(after.records)} left", {
                "lifted": labels
            }

        carry_out(ctx, decide_expired(before), check, outcome)


@dataclass(frozen=True)
class Unrecorded:
    """A ufw deny or a DOCKER-USER DROP for a source that no record of block-ip accounts for."""

    label: str
    layer: str  # "ufw" or DOCKER_CHAIN
    hand_made: bool  # without block-ip's comment: someone typed it
    problems: tuple[str, ...] = ()  # why it does not deny all of that source's traffic

    def line(self) -> str:
        origin = (
            "hand-made (not created by block-ip)" if self.hand_made else "made by block-ip, but not recorded"
        )
        text = f"{self.label} [{self.layer} only: {origin}]"
        return text + (f" ({'; '.join(self.problems)})" if self.problems else "")


def unrecorded(facts: FirewallFacts) -> list[Unrecorded]:
    """The denies of a source in ufw (and block-ip's DROPs in DOCKER-USER) that no record covers."""
    recorded = {r.target for r in facts.records}
    found: list[Unrecorded] = []
    for v6 in (False, True):
        rules = facts.rules(v6)
        for index, rule in enumerate(rules):
            if not rule.inbound or rule.verdict != DENY or rule.src in _ANY_DST:
                continue
            target = rule.as_target()
            if target is not None and target in recorded:
                continue
            problems: tuple[str, ...] = ()
            if target is not None:
                problems = tuple(ufw_order_problems(target, facts, index))
            label = target.label() if target is not None else rule.text()
            found.append(Unrecorded(label, "ufw", rule.comment != UFW_COMMENT, problems))
    for docker in facts.docker_rules:
        target = Target(docker.network, docker.port, docker.proto)
        if target in recorded or Target(docker.network, docker.port) in recorded:
            continue
        found.append(Unrecorded(target.label(), DOCKER_CHAIN, hand_made=False))
    return found


class ListBlocks(_Firewall):
    """Each recorded block with the layers that hold it, its comment and its expiry, and the denies no
    record accounts for. Changes nothing; fails the host when a recorded block lacks a layer."""

    task: ClassVar[str] = "list-blocks"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def run(self, ctx: HostContext) -> None:
        facts = self.facts(ctx)
        if facts.error:
            return
        broken = []
        for record in facts.records:
            holding, problems = layers(record.target, facts)
            if problems:
                broken.append(record)
            ctx.record(
                "block",
                Status.FAILED if problems else Status.OK,
                block_line(record, facts),
                **record.to_dict(),
                layers=holding,
                problems=problems,
                expired=record.expired(facts.now),
            )
        others = unrecorded(facts)
        for other in others:
            ctx.record(
                "unrecorded",
                Status.OK,
                other.line(),
                label=other.label,
                layer=other.layer,
                hand_made=other.hand_made,
                problems=list(other.problems),
            )
        expired = sum(r.expired(facts.now) for r in facts.records)
        summary = f"{len(facts.records)} block(s)" + (f", {expired} expired" if expired else "")
        if broken:
            summary += f", {len(broken)} NOT held in every layer"
        if facts.records:
            summary += ": " + "; ".join(block_line(r, facts) for r in facts.records)
        if others:
            summary += f"; and {len(others)} deny rule(s) without a record"
        ctx.record("list", Status.FAILED if broken else Status.OK, summary)


def block_line(record: BlockRecord, facts: FirewallFacts) -> str:
    holding, problems = layers(record.target, facts)
    text = f"{record.target.label()} [{', '.join(holding) or 'in no layer'}]"
    if problems:
        text += " (" + "; ".join(problems) + ")"
    text += f", {record.expiry_text(facts.now)}"
    if record.comment:
        text += f", comment {record.comment!r}"
    return text


def listing(run_hosts: Iterable[HostResult]) -> str:
    """The blocks of a list-blocks run, one line each under its host, for a person to read."""
    lines = []
    for host in run_hosts:
        blocks = [s for s in host.steps if s.step == "block"]
        others = [s for s in host.steps if s.step == "unrecorded"]
        failed = host.status == Status.FAILED
        lines.append(f"{host.host}: {host.message}" if failed else f"{host.host}: {len(blocks)} block(s)")
        lines += [f"  {s.message}" for s in blocks]
        lines += [f"  {s.message}" for s in others]
    return "\n".join(lines)
