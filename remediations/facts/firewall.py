"""The firewall facts of one host in one round trip, and pure parsers of what it prints.

`facts_command` prints, in marked sections: the host's clock, the SSH connection the controller came
in on, ufw's own rule tuples (/etc/ufw/user.rules, user6.rules) and app profiles, whether its chains
are loaded, IPV6= from /etc/default/ufw, `iptables -S DOCKER-USER` (and ip6tables), whether conntrack
is installed (and the flows a source opened), and the state file of recorded blocks (expiry and
comment). `parse_facts` turns that into `FirewallFacts`.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remediations.core.errors import HostError
from remediations.facts.sections import MARK
from remediations.facts.sections import sections_by_name as sections
from remediations.facts.ufw import (
    Address,
    ChainRule,
    Network,
    Profiles,
    Target,
    UfwRule,
    chain_name,
    parse_app_profiles,
    parse_chain,
    parse_user_rules,
)

if TYPE_CHECKING:
    from remediations.core.inventory import Host
    from remediations.core.remote import Remote

DEFAULT_STATE_DIR = "/var/lib/remediations"
STATE_FILE_NAME = "firewall-blocks.json"
DOCKER_COMMENT = "remediations block-ip"
DOCKER_CHAIN = "DOCKER-USER"
COMMAND_TIMEOUT = 120.0


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
# Docker's DOCKER-USER chain, from `iptables -S` (iptables' own rule syntax)
# ---------------------------------------------------------------------------------------------


def docker_rule_spec(network: Network, proto: str | None, port: int | None) -> list[str]:
    """An iptables rule spec for DOCKER-USER. After Docker's DNAT the destination port is the
    container's, so a published port is matched on the original destination port (conntrack)."""
    spec = ["-s", str(network)]
    if proto:
        spec += ["-p", proto]
    if port is not None:
        spec += ["-m", "conntrack", "--ctorigdstport", str(port), "--ctdir", "ORIGINAL"]
    return [*spec, "-m", "comment", "--comment", DOCKER_COMMENT, "-j", "DROP"]


@dataclass(frozen=True)
class DockerRule:
    """A DROP rule block-ip put in DOCKER-USER (recognised by its comment)."""

    v6: bool
    network: Network
    proto: str | None
    port: int | None
    spec: tuple[str, ...]  # as `iptables -S` prints it, after `-A DOCKER-USER`: what -D needs


@functools.lru_cache(maxsize=64)
def parse_docker_rules(text: str, v6: bool) -> tuple[DockerRule, ...]:
    """block-ip's DROPs in `iptables -S` output (cached: hosts set up alike print the same)."""
    rules = []
    for line in text.splitlines():
        if not line.startswith(f"-A {DOCKER_CHAIN} "):
            continue  # another chain of the table: not split (shlex is slow)
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


# The files the facts read, each printed under its section by one awk (below).
UFW_FILES = (
    ("conf", "/etc/ufw/ufw.conf"),
    ("default", "/etc/default/ufw"),
    ("rules4", "/etc/ufw/user.rules"),
    ("rules6", "/etc/ufw/user6.rules"),
)
APPS_DIR = "/etc/ufw/applications.d"

# One process prints the host's clock and every file, where `date` and a `cat` per file (sixteen on
# a stock Ubuntu, most of them app profiles) cost about a millisecond of the host's CPU each. POSIX
# awk: srand() seeds from the time of day and returns the previous seed, so the second call returns
# the time in seconds; an operand `s=NAME` is an assignment made when awk reaches it, before the
# file after it is read; consecutive files of one section (the app profiles) print one marker; every
# line is printed with its newline (a profile without a final newline does not run into the next).
# The same awk counts the source's tracked flows (see `_FLOWS_AWK`) when the kernel's table is among
# its operands (`s=flows`): its lines are counted, not printed, and the count is printed at the end.
# /dev/null last: awk never reads its stdin (the state file's bytes, in the apply step).
PROC_CONNTRACK = "/proc/net/nf_conntrack"
# Counts, as `conntrack -L -f ipv4 -s NET [-p PROTO] [--dport PORT]` does, the tracked IPv4 flows whose
# original source is in NET (and protocol in `protos`, original destination port `port`, when
# given), from the kernel's own table as text, and says so in conntrack's words. The `conntrack` tool
# asks netlink for every flow of the host and filters them itself: about ten times the CPU of this
# read (11 ms against 1 ms for 1,500 flows), and a busy host tracks many more. net, bits, protos,
# port and counting=1 are operand assignments made just before the table is read.
_FLOWS_AWK = r"""
function number(address, part) {
  split(address, part, "."); return ((part[1] * 256 + part[2]) * 256 + part[3]) * 256 + part[4]
}
s == "flows" && !ready {
  size = 2 ^ (32 - bits); wanted = int(number(net) / size)
  split(protos, list, " "); for (i in list) ok[list[i]] = 1
  ready = 1
}
s == "flows" {
  if ($1 == "ipv4" && (protos == "" || ($3 in ok))) {
    src = ""; dport = ""
    for (i = 5; i <= NF && (src == "" || dport == ""); i++) {
      if (src == "" && substr($i, 1, 4) == "src=") src = substr($i, 5)
      else if (dport == "" && substr($i, 1, 6) == "dport=") dport = substr($i, 7)
    }
    if (src != "" && int(number(src) / size) == wanted && (port == "" || dport == port)) n++
  }
  next
}
"""
_FILES_AWK = (
    'BEGIN { srand(); print "@@now " srand() }\n'
    + _FLOWS_AWK
    + 'FNR == 1 && s != last { print "@@" s; last = s }\n{ print }\n'
    + 'END { if (counting) { print "@@flows"; printf "%d flow entries have been shown.\\n", n } }\n'
)
_READ_FILES = f'awk {shlex.quote(_FILES_AWK)} "$@" /dev/null 2>/dev/null'
_FLOWS_SHOWN_RE = re.compile(r"(\d+) flow entries have been shown")


def _operand(path: str) -> str:
    """A path as an awk file operand: never read as an option or an assignment."""
    return path if path.startswith("/") else f"./{path}"


def _chains_read(about: Target | None) -> tuple[bool, ...]:
    """The families whose netfilter tables the facts read (False: IPv4): both, or only IPv4 for
    an IPv4 block (ufw's IPv4 chain also says whether ufw is active)."""
    return (False, True) if about is None or about.v6 else (False,)


def _flows_commands(about: Target) -> tuple[str, str]:
    """How the facts count the source's tracked flows, where the conntrack tool is installed ($ct):
    shell text that, for an IPv4 block with the kernel's table readable, adds the table to the
    files awk reads (and sets flows=awk); and the fallback run after it otherwise, `conntrack -L`
    (its count on stderr)."""
    listing = "; ".join(shlex.join(["conntrack", "-L", *f]) for f in about.conntrack_filters())
    by_tool = (f'[ "$ct" = yes ] && [ "$flows" != awk ] && '
               f'{{ echo "{MARK}flows"; {{ {listing}; }} 2>&1 >/dev/null; }}')  # fmt: skip
    if about.v6:
        return "flows=tool", by_tool
    protos = about.proto or ("tcp udp" if about.port is not None else "")
    assigned = [f"net={about.network.network_address}", f"bits={about.network.prefixlen}",
                f"protos={protos}", f"port={'' if about.port is None else about.port}", "counting=1",
                "s=flows", PROC_CONNTRACK]  # fmt: skip
    by_proc = (f'flows=tool; [ "$ct" = yes ] && [ -r {PROC_CONNTRACK} ] && '
               f'set -- "$@" {shlex.join(assigned)} && flows=awk')  # fmt: skip
    return by_proc, by_tool


def facts_command(state: StatePath, about: Target | None = None) -> str:
    """Shell text that prints every fact in marked sections; every value quoted. With `about` (the
    block a task acts on), also the number of tracked flows (conntrack) that source opened, and
    for an IPv4 block only the IPv4 tables (see `_chains_read`).

    Processes started on the host: one awk for the clock, the files and (IPv4, where the kernel's
    table is readable) the flows, one `iptables -S` per family (the whole filter table: ufw's chain
    and DOCKER-USER in one call), conntrack for an IPv6 block; the rest are shell builtins."""
    q = shlex.quote
    files = [f"[ -f {q(path)} ] && [ -r {q(path)} ] && set -- \"$@\" s={name} {q(_operand(path))}"
             for name, path in (*UFW_FILES, ("state", state.file))]  # fmt: skip
    tables = [
        f'echo "{MARK}table{6 if v6 else 4}"; {"ip6tables" if v6 else "iptables"} -w 10 -S 2>/dev/null; '
        f'echo "{MARK}table{6 if v6 else 4}rc $?"'
        for v6 in _chains_read(about)
    ]
    # counted where the conntrack tool is installed, as before
    flows_in_awk, flows_after = _flows_commands(about) if about is not None else ("", "")
    return "\n".join(
        [
            "set --",
            *files,
            f'for f in {APPS_DIR}/*; do [ -f "$f" ] && [ -r "$f" ] && set -- "$@" s=apps "$f"; done',
            "ct=no; command -v conntrack >/dev/null 2>&1 && ct=yes",
            *([flows_in_awk] if flows_in_awk else []),
            _READ_FILES,
            f'echo "{MARK}files $?"',
            _CONNECTION_SCRIPT.strip(),
            f'echo "{MARK}ssh $conn"',
            f'if command -v ufw >/dev/null 2>&1; then echo "{MARK}ufw yes"; else echo "{MARK}ufw no"; fi',
            *tables,
            f'echo "{MARK}conntrack $ct"',
            *([flows_after] if flows_after else []),
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


def _table(found: dict[str, tuple[str, str]], v6: bool) -> str:
    """`iptables -S` of one family (the filter table); "" when it was not read or iptables failed."""
    n = 6 if v6 else 4
    if found.get(f"table{n}rc", ("1", ""))[0] != "0":
        return ""
    return found.get(f"table{n}", ("", ""))[1]


def _chain_exists(text: str, chain: str) -> bool:
    return f"-N {chain}" in text.split("\n")


def _flows(found: dict[str, tuple[str, str]]) -> int | None:
    if "flows" not in found:
        return None
    shown = _FLOWS_SHOWN_RE.findall(found["flows"][1])
    return sum(int(n) for n in shown) if shown else None


def parse_facts(output: str, state: StatePath) -> FirewallFacts:
    """Pure parser of `facts_command` output."""
    found = sections(output)
    if "end" not in found:
        return FirewallFacts(error="the facts command did not finish: " + output.strip()[-300:])
    if found.get("files", ("", ""))[0] != "0":
        return FirewallFacts(
            error=f"reading the firewall files failed (awk exit {found.get('files', ('?', ''))[0] or '?'})"
        )
    now_text = found.get("now", ("", ""))[0]
    if not now_text.isdigit():
        return FirewallFacts(error=f"the host's clock (awk srand()) gave {now_text[:40]!r}, not seconds")
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
    if "state" in found:
        try:
            records = parse_state(found["state"][1])
        except ValueError as exc:
            return FirewallFacts(
                error=f"state file {state.file} is not what block-ip writes ({exc}); fix or remove it"
            )
    chains: dict[bool, tuple[ChainRule, ...] | None] = {}
    docker: dict[bool, bool] = {}
    docker_rules: tuple[DockerRule, ...] = ()
    for v6 in (False, True):
        text = _table(found, v6)
        name = chain_name(v6)
        chains[v6] = parse_chain(text, name) if _chain_exists(text, name) else None
        docker[v6] = _chain_exists(text, DOCKER_CHAIN)
        docker_rules += parse_docker_rules(text, v6=v6) if docker[v6] else ()
    return FirewallFacts(
        now=int(now_text),
        controller=controller,
        ssh_port=ssh_port,
        ufw_installed=found.get("ufw", ("no", ""))[0] == "yes",
        ufw_active=chains[False] is not None,  # ufw's chains are loaded only while it is active
        ufw_enabled_conf=_key_values(found.get("conf", ("", ""))[1]).get("ENABLED", "").lower() == "yes",
        ipv6=_key_values(found.get("default", ("", ""))[1]).get("IPV6", "").lower() == "yes",
        rules4=parse_user_rules(found.get("rules4", ("", ""))[1], v6=False),
        rules6=parse_user_rules(found.get("rules6", ("", ""))[1], v6=True),
        docker4=docker[False],
        docker6=docker[True],
        docker_rules=docker_rules,
        profiles=parse_app_profiles(found.get("apps", ("", ""))[1]),
        chain4=chains[False],
        chain6=chains[True],
        records=records,
        conntrack=found.get("conntrack", ("no", ""))[0] == "yes",
        flows=_flows(found),
    )


def gather(remote: Remote, state: StatePath, about: Target | None = None) -> FirewallFacts:
    result = remote.run(facts_command(state, about), timeout=COMMAND_TIMEOUT)
    if not result.ok:
        raise HostError(f"gathering firewall facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_facts(result.stdout, state)
