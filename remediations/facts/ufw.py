"""What ufw matches, as data: the source a block is for (`Target`, sliced into `Traffic`), ufw's own
rule tuples (/etc/ufw/user.rules, user6.rules, app profiles resolved) to decide, and the chain it
loaded into iptables (ufw-user-input) to verify. Never `ufw status` text. Pure parsers, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UFW_COMMENT = "remediations block-ip"  # on every rule we add, so a reader of `ufw status` knows why
PROTOCOLS = ("tcp", "udp")
ANY_DST = ("0.0.0.0/0", "::/0")

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


# ---------------------------------------------------------------------------------------------
# ufw's rule tuples, and how much of a slice of traffic a rule matches
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
            and self.dst in ANY_DST
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
            or self.dst not in ANY_DST
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
        src = None if self.src in ANY_DST else self.src_network()
        if src is None and self.src not in ANY_DST:
            return SOME  # a source ufw wrote that we cannot read: assume it may match
        # an app rule matches the ports ufw resolved when it wrote the rule, and those the profile
        # lists now (a `ufw app update` or reload picks them up)
        services = [(self.proto, self.dport), *(profiles.get(self.dapp, ()) if self.dapp else ())]
        narrowed = self.iface or self.dst not in ANY_DST or self.sport != "any" or self.sapp
        return min(
            _source_match(src, network),
            max(_service_match(proto, ports, traffic) for proto, ports in services),
            SOME if narrowed else ALL,
        )

    def allows_tcp_port(self, port: int, source: Address | None) -> bool:
        """Admits every new tcp connection to `port` from `source` (on any interface)."""
        if not self.admits() or self.iface or self.dst not in ANY_DST or self.sport != "any":
            return False
        if source is None:  # not connected over SSH: only a rule for every source will do
            if self.src not in ANY_DST:
                return False
            source = ipaddress.IPv6Address(0) if self.v6 else ipaddress.IPv4Address(0)
        return self.match(ipaddress.ip_network(source), Traffic("tcp", port), {}) == ALL

    def text(self) -> str:
        """The rule as a person would type it after `ufw`."""
        words = [self.action]
        if self.iface:
            words += ["in", "on", self.iface]
        if self.src not in ANY_DST:
            words += ["from", self.src]
        if self.dst not in ANY_DST:
            words += ["to", self.dst]
        if self.dapp:
            words.append(f"{self.dapp} ({self.dport}/{self.proto})")
        elif self.dport != "any":
            words.append(self.dport + ("" if self.proto == "any" else f"/{self.proto}"))
        elif self.proto != "any":
            words += ["proto", self.proto]
        return " ".join(words)


# The parsers are cached: a run over many hosts set up alike reads the same text on each of them.


@functools.lru_cache(maxsize=64)
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


@functools.lru_cache(maxsize=64)
def parse_app_profiles(text: str) -> Profiles:
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
    return MappingProxyType(profiles)  # shared through the cache: read-only


class Judged(Protocol):
    """A rule in evaluation order: what it does with the traffic it matches, and how much it matches."""

    @property
    def verdict(self) -> str: ...

    def match(self, network: Network, traffic: Traffic, profiles: Profiles) -> int: ...

    def text(self) -> str: ...


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


@functools.lru_cache(maxsize=64)
def parse_chain(text: str, chain: str) -> tuple[ChainRule, ...]:
    """The `-A CHAIN ...` lines of `iptables -S [CHAIN]`, in order. What this parser does not know
    narrows the rule (matches SOME): never read as a deny of everything."""
    rules = []
    head = f"-A {chain} "
    for line in text.splitlines():
        if not line.startswith(head):
            continue  # another chain of the table (`iptables -S` of all of it): not split
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
