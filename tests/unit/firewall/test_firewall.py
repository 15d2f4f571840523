"""Pure parts of the firewall remediations: argument parsing, ufw tuples, DOCKER-USER rules, the
lockout guard and the decisions. No host: table-driven cases and hypothesis properties."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from remediations.actions import firewall_rules as fwrules
from remediations.core.errors import UsageError
from remediations.facts import firewall as fwfacts
from remediations.facts import ufw
from remediations.firewall import list_blocks
from remediations.firewall import params as fwargs

CONTROLLER = ipaddress.ip_address("198.18.0.1")
NOW = 1_700_000_000


def target(text: str, port: int | None = None, proto: str | None = None) -> ufw.Target:
    return ufw.Target(ipaddress.ip_network(text), port, proto)


def tuple_line(action: str, proto: str, dport: str, src: str, v6: bool = False, comment: str = "") -> str:
    dst = "::/0" if v6 else "0.0.0.0/0"
    line = f"### tuple ### {action} {proto} {dport} {dst} any {src} in"
    return line + (f" comment={comment.encode().hex()}" if comment else "")


def rules_file(*lines: str) -> str:
    """A user.rules as ufw writes it: iptables-restore text with the tuples as comments."""
    body = "\n".join(f"\n{line}\n-A ufw-user-input -j ACCEPT" for line in lines)
    return f"*filter\n:ufw-user-input - [0:0]\n### RULES ###\n{body}\n### END RULES ###\nCOMMIT\n"


def facts(**overrides: object) -> fwfacts.FirewallFacts:
    base: dict[str, object] = {
        "now": NOW,
        "controller": CONTROLLER,
        "ssh_port": 22,
        "ufw_installed": True,
        "ufw_active": True,
        "ufw_enabled_conf": True,
        "ipv6": True,
        "docker4": True,
    }
    base.update(overrides)
    return fwfacts.FirewallFacts(**base)  # type: ignore[arg-type]


def chain(*lines: str, v6: bool = False) -> tuple[ufw.ChainRule, ...]:
    name = ufw.chain_name(v6)
    return ufw.parse_chain("\n".join([f"-N {name}", *(f"-A {name} {line}" for line in lines)]), name)


OPENSSH_PROFILE = """[OpenSSH]
title=Secure shell server, an rshd replacement
description=OpenSSH is a free implementation of the Secure Shell protocol.
ports=22/tcp
"""

# Recorded on the lab host api1 (Debian 12's ufw, iptables 1.8.9 nf_tables) after
#   ufw allow OpenSSH; ufw allow in on eth0 to any port 22; ufw limit 2222/tcp; ufw allow log 80/tcp;
#   ufw allow 'WWW Full'; ufw deny from 198.18.0.200; ufw allow from 10.0.0.0/8 to any port 53
RECORDED_TUPLES = """\
### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in
### tuple ### allow any 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0
### tuple ### limit tcp 2222 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow_log tcp 80 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow tcp 80,443 0.0.0.0/0 any 0.0.0.0/0 WWW%20Full - in
### tuple ### deny any any 0.0.0.0/0 any 198.18.0.200 in
### tuple ### allow any 53 0.0.0.0/0 any 10.0.0.0/8 in
"""  # the tuple lines of /etc/ufw/user.rules
RECORDED_CHAIN = r"""-N ufw-user-input
-A ufw-user-input -p tcp -m tcp --dport 22 -m comment --comment "\'dapp_OpenSSH\'" -j ACCEPT
-A ufw-user-input -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw-user-input -i eth0 -p udp -m udp --dport 22 -j ACCEPT
-A ufw-user-input -p tcp -m tcp --dport 2222 -m conntrack --ctstate NEW -m recent --set --name DEFAULT --mask 255.255.255.255 --rsource
-A ufw-user-input -p tcp -m tcp --dport 2222 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j ufw-user-limit
-A ufw-user-input -p tcp -m tcp --dport 2222 -j ufw-user-limit-accept
-A ufw-user-input -p tcp -m tcp --dport 80 -j ufw-user-logging-input
-A ufw-user-input -p tcp -m tcp --dport 80 -j ACCEPT
-A ufw-user-input -p tcp -m multiport --dports 80,443 -m comment --comment "\'dapp_WWW%20Full\'" -j ACCEPT
-A ufw-user-input -s 198.18.0.200/32 -j DROP
-A ufw-user-input -s 10.0.0.0/8 -p tcp -m tcp --dport 53 -j ACCEPT
-A ufw-user-input -s 10.0.0.0/8 -p udp -m udp --dport 53 -j ACCEPT
"""  # noqa: E501


# ---------------------------------------------------------------------------------------------
# Addresses: table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "network", "note"),
    [
        ("203.0.113.7", "203.0.113.7/32", ""),
        (" 203.0.113.7 ", "203.0.113.7/32", ""),
        ("203.0.113.0/24", "203.0.113.0/24", ""),
        ("10.0.0.0/8", "10.0.0.0/8", ""),
        ("203.0.113.7/32", "203.0.113.7/32", ""),
        ("2001:db8::/32", "2001:db8::/32", ""),
        ("2001:DB8:0::1", "2001:db8::1/128", ""),
        ("::ffff:203.0.113.7", "203.0.113.7/32", "IPv4-mapped"),
    ],
)
def test_parse_network_accepts(text: str, network: str, note: str) -> None:
    parsed, got_note = fwargs.parse_network(text)
    assert parsed == ipaddress.ip_network(network)
    assert note in got_note and bool(note) == bool(got_note)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("300.1.1.1", "not an IPv4 or IPv6 address"),
        ("1.2.3.4/33", "prefix length"),
        ("1.2.3.4/-1", "not an IPv4 or IPv6 address or CIDR range"),
        ("1.2.3.4/", "prefix length"),
        ("1.2.3.4; rm -rf /", "not an IPv4 or IPv6 address or CIDR range"),
        ("$(reboot)", "not an IPv4 or IPv6 address or CIDR range"),
        ("", "--ip is required"),
        ("   ", "--ip is required"),
        (None, "--ip is required"),
        ("1.2.3.5/24", "host bits set: give 1.2.3.0/24 for the whole range, or 1.2.3.5"),
        ("2001:db8::1/32", "host bits set"),
        ("0.0.0.0/0", "every IPv4 address"),
        ("::/0", "every IPv6 address"),
        ("01.2.3.4", "not an IPv4 or IPv6 address"),
        ("1.2.3.4/24/8", "not an IPv4 or IPv6 address or CIDR range"),
        ("fe80::1%eth0", "not an IPv4 or IPv6 address or CIDR range"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6 range"),
    ],
)
def test_parse_network_refuses(text: str | None, says: str) -> None:
    with pytest.raises(UsageError) as err:
        fwargs.parse_network(text)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("22", 22), (443, 443), ("1", 1), ("65535", 65535)]
)
def test_parse_port_accepts(value: str | int | None, expected: int | None) -> None:
    assert fwargs.parse_port(value) == expected


@pytest.mark.parametrize("value", ["0", "65536", "70000", "-1", "22/tcp", "http", "1e3", "²", "1" * 100_000])
def test_parse_port_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--port"):
        fwargs.parse_port(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    # the one duration grammar (core/units.py): spaces, unit words and decimals too, but a unit is needed
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), (None, None),
     ("1h 30m", 5400), ("1.5h", 5400), ("2 hours", 7200)],
)
def test_parse_ttl(value: str | None, seconds: int | None) -> None:
    assert fwargs.parse_ttl(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["5x", "24", "h", "0s", "-1h", "1h30", "999999999d", "36601d", "1" * 100_000 + "s", "2 fortnights"],
)
def test_parse_ttl_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--ttl"):
        fwargs.parse_ttl(value)


@pytest.mark.parametrize("value", ["it's", 'say "hi"', "a\\b", "line\nbreak", "x" * 201])
def test_parse_comment_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--comment"):
        fwargs.parse_comment(value)


def test_parse_proto() -> None:
    assert fwargs.parse_proto("TCP") == "tcp"
    assert fwargs.parse_proto(None) is None
    with pytest.raises(UsageError, match="--proto"):
        fwargs.parse_proto("icmp")


# ---------------------------------------------------------------------------------------------
# Addresses: properties
# ---------------------------------------------------------------------------------------------

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
networks = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).flatmap(
    lambda a: st.integers(1, a.max_prefixlen).map(lambda p: ipaddress.ip_network((a, p), strict=False))
)


@given(addresses)
def test_any_address_parses_to_itself(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    mapped = getattr(address, "ipv4_mapped", None)
    parsed, note = fwargs.parse_network(str(address))
    expected = mapped if mapped is not None else address
    assert parsed == ipaddress.ip_network(expected)
    assert bool(note) == (mapped is not None)


@given(networks)
def test_any_network_round_trips(network: ufw.Network) -> None:
    assume(not (network.version == 6 and network.network_address.ipv4_mapped is not None))
    parsed, _ = fwargs.parse_network(str(network))
    assert parsed == network
    # and in the compressed form ufw writes into its tuples
    assert fwargs.parse_network(ufw.Target(network).source)[0] == network


@given(networks, st.data())
def test_host_bits_are_refused_and_named(network: ufw.Network, data: st.DataObject) -> None:
    assume(network.num_addresses > 1)
    offset = data.draw(st.integers(1, min(network.num_addresses - 1, 2**64)))
    address = network.network_address + offset
    with pytest.raises(UsageError) as err:
        fwargs.parse_network(f"{address}/{network.prefixlen}")
    message = str(err.value)
    assert "host bits" in message or "IPv4-mapped" in message


@given(st.text(max_size=60))
def test_any_text_is_a_network_or_one_usage_line(text: str) -> None:
    try:
        parsed, _ = fwargs.parse_network(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    # Whatever is accepted is plain address text: safe on a command line, even unquoted.
    assert set(str(parsed)) <= set("0123456789abcdef:./")
    assert shlex.quote(ufw.Target(parsed).source) == ufw.Target(parsed).source


@given(st.text(alphabet=st.characters(blacklist_characters="0123456789abcdefABCDEF:./"), min_size=1))
def test_text_with_a_foreign_character_is_refused(junk: str) -> None:
    with pytest.raises(UsageError):
        fwargs.parse_network("203.0." + junk + "113.7")  # (surrounding whitespace is stripped)


@given(st.integers())
def test_ports(value: int) -> None:
    if 1 <= value <= 65535:
        assert fwargs.parse_port(str(value)) == value
    else:
        with pytest.raises(UsageError):
            fwargs.parse_port(str(value))


# ---------------------------------------------------------------------------------------------
# ufw tuples and DOCKER-USER rules
# ---------------------------------------------------------------------------------------------


def test_parse_user_rules_reads_tuples_in_order_with_comments() -> None:
    text = rules_file(
        tuple_line("deny", "any", "any", "203.0.113.7", comment="remediations block-ip"),
        tuple_line("allow", "tcp", "22", "0.0.0.0/0"),
        "### tuple ### allow_log tcp 80 0.0.0.0/0 any 0.0.0.0/0 in",
        "### tuple ### route:allow any any 0.0.0.0/0 any 0.0.0.0/0 in_eth0!out_eth1",
        "### tuple ### allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 Apache - in",
        "### tuple ### bad",
    )
    rules = ufw.parse_user_rules(text, v6=False)
    assert [r.action for r in rules] == ["deny", "allow", "allow", "allow", "allow"]
    assert rules[0].comment == "remediations block-ip"
    assert rules[0].blocks(target("203.0.113.7/32"))
    assert rules[2].admits() and not rules[3].admits()  # a route rule is not traffic to the host
    assert rules[4].admits() and rules[4].dapp == "Apache" and not rules[4].incoming


@pytest.mark.parametrize(
    ("line", "blocked", "blocks"),
    [
        (tuple_line("deny", "any", "any", "203.0.113.7"), target("203.0.113.7/32"), True),
        (tuple_line("deny", "any", "any", "203.0.113.0/24"), target("203.0.113.0/24"), True),
        (tuple_line("deny", "any", "any", "203.0.113.0/24"), target("203.0.113.7/32"), False),
        (tuple_line("deny", "tcp", "443", "203.0.113.7"), target("203.0.113.7/32", 443, "tcp"), True),
        (tuple_line("deny", "any", "443", "203.0.113.7"), target("203.0.113.7/32", 443), True),
        (tuple_line("deny", "any", "443", "203.0.113.7"), target("203.0.113.7/32", 443, "tcp"), False),
        (tuple_line("deny", "tcp", "443", "203.0.113.7"), target("203.0.113.7/32"), False),
        (tuple_line("reject", "any", "any", "203.0.113.7"), target("203.0.113.7/32"), False),
        (tuple_line("allow", "any", "any", "203.0.113.7"), target("203.0.113.7/32"), False),
        (tuple_line("deny", "any", "any", "2001:db8::1", v6=True), target("2001:db8::1/128"), True),
    ],
)
def test_tuple_matches_target(line: str, blocked: ufw.Target, blocks: bool) -> None:
    (rule,) = ufw.parse_user_rules(line, v6=blocked.v6)
    assert rule.blocks(blocked) is blocks


@given(networks, st.one_of(st.none(), st.integers(1, 65535)), st.sampled_from([None, "tcp", "udp"]))
def test_the_tuple_ufw_writes_for_a_target_matches_it(
    network: ufw.Network, port: int | None, proto: str | None
) -> None:
    blocked = ufw.Target(network, port, proto)
    line = tuple_line("deny", proto or "any", str(port) if port else "any", blocked.source, blocked.v6)
    (rule,) = ufw.parse_user_rules(line, v6=blocked.v6)
    assert rule.blocks(blocked)
    assert rule.as_target() == blocked


@pytest.mark.parametrize(
    ("dport", "src", "allows"),
    [
        ("22", "0.0.0.0/0", True),
        ("any", "0.0.0.0/0", True),
        ("20:30", "0.0.0.0/0", True),
        ("80,22", "0.0.0.0/0", True),
        ("2222", "0.0.0.0/0", False),
        ("22", "198.18.0.0/24", True),
        ("22", "10.0.0.0/8", False),
    ],
)
def test_allow_rule_for_the_ssh_port(dport: str, src: str, allows: bool) -> None:
    (rule,) = ufw.parse_user_rules(tuple_line("allow", "tcp", dport, src), v6=False)
    assert rule.allows_tcp_port(22, CONTROLLER) is allows


def test_parse_docker_rules_keeps_only_ours_with_their_spec() -> None:
    ours = fwfacts.docker_rule_spec(ipaddress.ip_network("203.0.113.0/24"), "tcp", 18080)
    text = "\n".join(
        [
            "-N DOCKER-USER",
            "-A DOCKER-USER " + shlex.join(ours).replace("'", '"'),
            "-A DOCKER-USER -s 10.0.0.0/8 -j DROP",
            '-A DOCKER-USER -s 10.0.0.1/32 -m comment --comment "someone else" -j DROP',
            "-A DOCKER-USER -j RETURN",
        ]
    )
    (rule,) = fwfacts.parse_docker_rules(text, v6=False)
    assert (rule.network, rule.proto, rule.port) == (ipaddress.ip_network("203.0.113.0/24"), "tcp", 18080)
    assert list(rule.spec) == ours


# ---------------------------------------------------------------------------------------------
# What ufw matches: tuples with app profiles and interfaces, and the chain it loaded
# ---------------------------------------------------------------------------------------------

OUTSIDER = target("198.18.0.200/32")


@pytest.mark.parametrize(
    ("text", "profiles"),
    [
        (OPENSSH_PROFILE, {"OpenSSH": (("tcp", "22"),)}),
        ("[WWW Full]\ntitle=Web Server\nports=80,443/tcp\n", {"WWW Full": (("tcp", "80,443"),)}),
        ("[Samba]\nports=137,138/udp|139,445/tcp\n", {"Samba": (("udp", "137,138"), ("tcp", "139,445"))}),
        ("[DNS]\nports=53\n", {"DNS": (("any", "53"),)}),
        (
            "[A]\nports=1/tcp\n\n[B]\nports=60000:61000/udp\n",
            {"A": (("tcp", "1"),), "B": (("udp", "60000:61000"),)},
        ),
        ("ports=22/tcp\n[Empty]\ntitle=x\n", {}),
    ],
)
def test_parse_app_profiles(text: str, profiles: dict[str, tuple[tuple[str, str], ...]]) -> None:
    assert ufw.parse_app_profiles(text) == profiles


def test_recorded_tuples_read_app_interface_limit_and_log_rules() -> None:
    rules = ufw.parse_user_rules(RECORDED_TUPLES, v6=False)
    assert [(r.action, r.dapp, r.iface) for r in rules] == [
        ("allow", "OpenSSH", ""),
        ("allow", "", "eth0"),
        ("limit", "", ""),
        ("allow", "", ""),
        ("allow", "WWW Full", ""),
        ("deny", "", ""),
        ("allow", "", ""),
    ]
    assert all(r.admits() for r in rules if r.action != "deny")
    assert [r.text() for r in rules[:2]] == ["allow OpenSSH (22/tcp)", "allow in on eth0 22"]


T22, U22, T80, TANY, UANY, OTHER = (
    ufw.Traffic("tcp", 22),
    ufw.Traffic("udp", 22),
    ufw.Traffic("tcp", 80),
    ufw.Traffic("tcp"),
    ufw.Traffic("udp"),
    ufw.Traffic(ufw.OTHER),
)


@pytest.mark.parametrize(
    ("line", "traffic", "matched"),
    [
        ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in", T22, ufw.ALL),
        ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in", U22, ufw.NONE),
        ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in", TANY, ufw.SOME),
        ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in", OTHER, ufw.NONE),
        ("### tuple ### allow any 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0", T22, ufw.SOME),  # on eth0 only
        ("### tuple ### allow any 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0", U22, ufw.SOME),
        ("### tuple ### allow any 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0", T80, ufw.NONE),
        ("### tuple ### allow any any 0.0.0.0/0 any 0.0.0.0/0 in", OTHER, ufw.ALL),
        ("### tuple ### allow any 53 0.0.0.0/0 any 10.0.0.0/8 in", ufw.Traffic("udp", 53), ufw.NONE),
        ("### tuple ### allow any any 0.0.0.0/0 any 198.18.0.0/16 in", T22, ufw.ALL),
        ("### tuple ### allow tcp 22 198.18.0.11 any 0.0.0.0/0 in", T22, ufw.SOME),  # to one address
        ("### tuple ### allow tcp 22 0.0.0.0/0 1024:65535 0.0.0.0/0 in", T22, ufw.SOME),
        ("### tuple ### allow tcp 20:30 0.0.0.0/0 any 0.0.0.0/0 in", T22, ufw.ALL),
        ("### tuple ### allow esp any 0.0.0.0/0 any 0.0.0.0/0 in", OTHER, ufw.SOME),
        ("### tuple ### allow esp any 0.0.0.0/0 any 0.0.0.0/0 in", TANY, ufw.NONE),
        ("### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 out", T22, ufw.NONE),
        ("### tuple ### route:allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0!out_eth1", T22, ufw.NONE),
    ],
)
def test_tuple_match(line: str, traffic: ufw.Traffic, matched: int) -> None:
    (rule,) = ufw.parse_user_rules(line, v6=False)
    assert rule.match(OUTSIDER.network, traffic, {}) == matched


def test_an_app_rule_matches_the_profiles_ports_as_well_as_the_ones_ufw_wrote() -> None:
    line = "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in"
    (rule,) = ufw.parse_user_rules(line, v6=False)
    moved = {"OpenSSH": (("tcp", "2222"),)}  # the profile was edited since the rule was written
    assert rule.match(OUTSIDER.network, ufw.Traffic("tcp", 2222), {}) == ufw.NONE
    assert rule.match(OUTSIDER.network, ufw.Traffic("tcp", 2222), moved) == ufw.ALL
    assert rule.match(OUTSIDER.network, T22, moved) == ufw.ALL


def test_recorded_chain_is_read_in_order_with_verdicts() -> None:
    rules = ufw.parse_chain(RECORDED_CHAIN, "ufw-user-input")
    assert [(r.proto, r.dports, r.narrowed, r.verdict) for r in rules] == [
        ("tcp", "22", False, ufw.ADMIT),
        ("tcp", "22", True, ufw.ADMIT),  # -i eth0
        ("udp", "22", True, ufw.ADMIT),
        ("tcp", "2222", True, ufw.PASS),  # recent --set: no jump
        ("tcp", "2222", True, ufw.DENY),  # over the rate: ufw-user-limit rejects
        ("tcp", "2222", False, ufw.ADMIT),  # ufw-user-limit-accept
        ("tcp", "80", False, ufw.PASS),  # ufw-user-logging-input logs and returns
        ("tcp", "80", False, ufw.ADMIT),
        ("tcp", "80,443", False, ufw.ADMIT),
        ("any", "any", False, ufw.DENY),
        ("tcp", "53", False, ufw.ADMIT),
        ("udp", "53", False, ufw.ADMIT),
    ]
    assert rules[9].src == ipaddress.ip_network("198.18.0.200/32")
    assert rules[0].text().startswith("-p tcp -m tcp --dport 22")


@pytest.mark.parametrize(
    ("lines", "matched"),
    [
        (["-s 198.18.0.200/32 -j DROP"], ufw.ALL),
        (["-s 198.18.0.200/32 -j REJECT --reject-with icmp-port-unreachable"], ufw.ALL),  # a target option
        (["! -s 10.0.0.0/8 -j DROP"], ufw.SOME),  # a negation: never read as "all"
        (["-s 198.18.0.200/32 -m conntrack --ctstate NEW -j DROP"], ufw.SOME),
        (["-s 198.18.0.200/32 -m frobnicate --wibble -j DROP"], ufw.SOME),  # a module we do not know
        (["-s 198.18.0.0/24 -d 198.18.0.11/32 -j DROP"], ufw.SOME),
        (["-s 10.0.0.0/8 -j DROP"], ufw.NONE),
        (["-s 198.18.0.128/25 -j DROP"], ufw.ALL),
        (["-s 198.18.0.0/25 -j DROP"], ufw.NONE),
    ],
)
def test_chain_match(lines: list[str], matched: int) -> None:
    (rule,) = chain(*lines)
    assert rule.match(OUTSIDER.network, TANY, {}) == matched


@pytest.mark.parametrize(
    ("blocked", "admitted"),
    [
        # everything from 198.18.0.200 but its tcp to 22, 2222, 80, 443 and udp to 22 meets the DROP
        (target("198.18.0.200/32"), [(0, [ufw.Traffic("tcp")]), (2, [ufw.Traffic("udp")])]),
        (target("198.18.0.200/32", 443, "tcp"), [(8, [ufw.Traffic("tcp", 443)])]),
        (target("198.18.0.200/32", 2222, "tcp"), [(5, [ufw.Traffic("tcp", 2222)])]),
        (target("198.18.0.200/32", 25), []),  # no allow rule for port 25 before the DROP
        (target("10.1.2.3/32", 53, "udp"), [(11, [ufw.Traffic("udp", 53)])]),
    ],
)
def test_admitted_first_by_the_recorded_chain(
    blocked: ufw.Target, admitted: list[tuple[int, list[ufw.Traffic]]]
) -> None:
    rules = ufw.parse_chain(RECORDED_CHAIN, "ufw-user-input")
    assert fwrules.admitted_first(rules, blocked, {}) == admitted


def test_decide_traffic_a_narrower_deny_lets_the_rest_on() -> None:
    rules = chain("-s 198.18.0.200/32 -p tcp -m tcp --dport 22 -j DROP", "-p tcp -m tcp --dport 22 -j ACCEPT")
    assert fwrules.decide_traffic(rules, OUTSIDER.network, T22, {}) == fwrules.Decision(T22, ufw.DENY, 0)
    assert fwrules.decide_traffic(rules, OUTSIDER.network, TANY, {}) == fwrules.Decision(TANY, ufw.ADMIT, 1)
    assert fwrules.decide_traffic(rules, OUTSIDER.network, UANY, {}) == fwrules.Decision(UANY, ufw.PASS)


@given(networks, st.one_of(st.none(), st.integers(1, 65535)), st.sampled_from([None, "tcp", "udp"]))
def test_a_deny_above_every_rule_decides_all_traffic_and_an_allow_above_it_admits_first(
    network: ufw.Network, port: int | None, proto: str | None
) -> None:
    blocked = ufw.Target(network, port, proto)
    deny = tuple_line("deny", proto or "any", str(port) if port else "any", blocked.source, blocked.v6)
    anything = tuple_line("allow", "any", "any", "::/0" if blocked.v6 else "0.0.0.0/0", blocked.v6)
    first = ufw.parse_user_rules(rules_file(deny, anything), blocked.v6)
    assert fwrules.admitted_first(first, blocked, {}) == []
    last = ufw.parse_user_rules(rules_file(anything, deny), blocked.v6)
    assert fwrules.admitted_first(last, blocked, {}) == [(0, list(blocked.traffic()))]


# ---------------------------------------------------------------------------------------------
# Lockout guard
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocked", "allowlist", "refused"),
    [
        ("198.18.0.1/32", [], "contains 198.18.0.1"),
        ("198.18.0.0/24", [], "contains 198.18.0.1"),
        ("198.18.0.0/15", [], "contains 198.18.0.1"),
        ("198.18.0.200/32", [], ""),
        ("2001:db8::/32", [], ""),
        ("203.0.113.7/32", ["203.0.113.0/24"], "overlaps 203.0.113.0/24"),
        ("203.0.0.0/16", ["203.0.113.5/32"], "overlaps 203.0.113.5/32"),
        ("203.0.114.0/24", ["203.0.113.0/24"], ""),
        ("2001:db8::/32", ["2001:db8:1::/48"], "overlaps"),
    ],
)
def test_lockout_guard(blocked: str, allowlist: list[str], refused: str) -> None:
    allowed = [ipaddress.ip_network(a) for a in allowlist]
    reason = fwrules.lockout_reason(target(blocked), CONTROLLER, allowed)
    assert (refused in reason) if refused else reason == ""


@given(networks, addresses)
def test_guard_refuses_exactly_the_ranges_holding_the_controller(
    network: ufw.Network, controller: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    reason = fwrules.lockout_reason(ufw.Target(network), controller, [])
    holds = controller.version == network.version and controller in network
    assert bool(reason) is holds


def test_allowlist_var() -> None:
    assert fwargs.parse_allowlist(["10.0.0.0/8", "2001:db8::/32"], "inv") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert fwargs.parse_allowlist("10.0.0.0/8, 192.0.2.1", "inv")[1] == ipaddress.ip_network("192.0.2.1/32")
    with pytest.raises(UsageError, match="firewall_allowlist"):
        fwargs.parse_allowlist(["10.0.0.300"], "inv")


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------

BLOCK = fwrules.BlockRequest(target("203.0.113.7/32"))
SSH_ALLOW = tuple_line("allow", "tcp", "22", "0.0.0.0/0")


def rules4(*lines: str) -> tuple[ufw.UfwRule, ...]:
    return ufw.parse_user_rules(rules_file(*lines), v6=False)


def docker_rule(blocked: ufw.Target, proto: str | None = None, port: int | None = None) -> fwfacts.DockerRule:
    spec = fwfacts.docker_rule_spec(blocked.network, proto, port)
    return fwfacts.DockerRule(blocked.v6, blocked.network, proto, port, tuple(spec))


def test_block_on_an_empty_rule_list_prepends_and_mirrors_into_docker() -> None:
    plan = fwrules.decide_block(BLOCK, facts(), [])
    assert plan.commands[0] == "ufw prepend deny from 203.0.113.7 comment 'remediations block-ip'"
    assert plan.commands[1].startswith("iptables -w 10 -I DOCKER-USER 1 -s 203.0.113.7/32 ")
    assert plan.state is not None and plan.state[0].target == BLOCK.target


def test_block_already_in_every_layer_is_ok() -> None:
    record = fwfacts.BlockRecord(BLOCK.target, created=NOW - 60)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7"), SSH_ALLOW),
        chain4=chain("-s 203.0.113.7/32 -j DROP", "-p tcp -m tcp --dport 22 -j ACCEPT"),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    plan = fwrules.decide_block(BLOCK, current, [])
    assert plan.nothing, plan
    assert "already blocked" in plan.reason and "ufw and DOCKER-USER" in plan.reason


def test_a_deny_below_an_allow_rule_is_moved_to_the_top() -> None:
    current = facts(rules4=rules4(SSH_ALLOW, tuple_line("deny", "any", "any", "203.0.113.7")))
    plan = fwrules.decide_block(BLOCK, current, [])
    assert plan.commands[:2] == (
        "ufw delete deny from 203.0.113.7",
        "ufw prepend deny from 203.0.113.7 comment 'remediations block-ip'",
    )
    assert "below an allow rule" in plan.changes[0]


HAND_DENY = tuple_line("deny", "any", "any", "203.0.113.7")
OPENSSH_ALLOW = "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in"
IFACE_ALLOW = "### tuple ### allow any 22 0.0.0.0/0 any 0.0.0.0/0 in_eth0"
DROP_FIRST = chain("-s 203.0.113.7/32 -j DROP", "-p tcp -m tcp --dport 22 -j ACCEPT")
DROP_LAST = chain("-p tcp -m tcp --dport 22 -j ACCEPT", "-s 203.0.113.7/32 -j DROP")


@pytest.mark.parametrize(
    ("lines", "loaded", "blocked", "moved"),
    [
        ([OPENSSH_ALLOW, HAND_DENY], DROP_LAST, BLOCK.target,
         "rule 1 (allow OpenSSH (22/tcp)) admits its tcp"),
        ([IFACE_ALLOW, HAND_DENY], DROP_LAST, BLOCK.target,
         "rule 1 (allow in on eth0 22) admits its tcp, udp"),
        ([SSH_ALLOW, HAND_DENY], DROP_LAST, BLOCK.target, "rule 1 (allow 22/tcp) admits its tcp"),
        # an allow for another source, or for another port than the block's, does not get first
        ([tuple_line("allow", "any", "any", "10.0.0.0/8"), HAND_DENY], DROP_FIRST, BLOCK.target, ""),
        ([OPENSSH_ALLOW, tuple_line("deny", "tcp", "443", "203.0.113.7")], DROP_FIRST,
         target("203.0.113.7/32", 443, "tcp"), ""),
        ([OPENSSH_ALLOW, tuple_line("deny", "tcp", "22", "203.0.113.7")], DROP_FIRST,
         target("203.0.113.7/32", 22, "tcp"), "admits its tcp port 22"),
        # a broader deny above the allow decides the traffic first
        ([tuple_line("deny", "any", "any", "203.0.113.0/24"), SSH_ALLOW, HAND_DENY], DROP_FIRST,
         BLOCK.target, ""),
        # the files are right but the chain ufw loaded is not: the chain is what ufw matches
        ([HAND_DENY, SSH_ALLOW], DROP_LAST, BLOCK.target, "ufw's loaded ufw-user-input chain: rule 1"),
        ([HAND_DENY, SSH_ALLOW], chain("-p tcp -m tcp --dport 22 -j ACCEPT"), BLOCK.target, "has no DROP"),
    ],
)  # fmt: skip
def test_a_deny_is_moved_only_when_an_allow_rule_gets_its_traffic_first(
    lines: list[str], loaded: tuple[ufw.ChainRule, ...], blocked: ufw.Target, moved: str
) -> None:
    current = facts(rules4=rules4(*lines), chain4=loaded, profiles={"OpenSSH": (("tcp", "22"),)})
    plan = fwrules.decide_block(fwrules.BlockRequest(blocked), current, [])
    deletes = [c for c in plan.commands if c.startswith("ufw delete")]
    if moved:
        assert deletes == [f"ufw delete deny {shlex.join(blocked.ufw_args())}"]
        assert plan.commands.index(deletes[0]) + 1 == plan.commands.index(
            f"ufw prepend deny {shlex.join(blocked.ufw_args())} comment 'remediations block-ip'"
        )
        assert moved in plan.changes[0], plan.changes
        assert "ufw" not in fwrules.layers(blocked, current)[0]
    else:
        assert not deletes and not any(c.startswith("ufw") for c in plan.commands), plan
        assert "ufw" in fwrules.layers(blocked, current)[0]


def test_already_blocked_needs_the_effective_order() -> None:
    record = fwfacts.BlockRecord(BLOCK.target, created=NOW - 60)
    held = facts(
        rules4=rules4(HAND_DENY, OPENSSH_ALLOW),
        chain4=DROP_FIRST,
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    assert fwrules.decide_block(BLOCK, held, []).nothing
    shadowed = facts(
        rules4=rules4(OPENSSH_ALLOW, HAND_DENY),
        chain4=DROP_LAST,
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    plan = fwrules.decide_block(BLOCK, shadowed, [])
    assert not plan.nothing and "move the ufw deny" in plan.changes[0]
    holding, problems = fwrules.layers(BLOCK.target, shadowed)
    assert holding == ["DOCKER-USER"] and "below an allow rule" in problems[0]


@pytest.mark.parametrize(
    ("kill", "conntrack", "flows", "blocked_already", "after", "says"),
    [
        (False, True, 2, True, 0, "2 tracked flow(s) from 203.0.113.7 left open"),
        (False, True, 0, True, 0, "no tracked connections from 203.0.113.7"),
        (False, False, None, True, 0, "conntrack is not installed"),
        (True, True, 2, True, 1, ""),
        (True, True, 0, True, 0, "no tracked connections from 203.0.113.7 to drop"),
        (True, True, 0, False, 1, ""),  # a new block drops whatever opened meanwhile
        (True, False, None, True, 0, "conntrack is not installed"),
    ],
)
def test_kill_established(
    kill: bool, conntrack: bool, flows: int | None, blocked_already: bool, after: int, says: str
) -> None:
    record = fwfacts.BlockRecord(BLOCK.target, created=NOW - 60)
    current = facts(
        conntrack=conntrack,
        flows=flows,
        rules4=rules4(HAND_DENY) if blocked_already else (),
        chain4=DROP_FIRST if blocked_already else None,
        docker_rules=(docker_rule(BLOCK.target),) if blocked_already else (),
        records=(record,) if blocked_already else (),
    )
    plan = fwrules.decide_block(fwrules.BlockRequest(BLOCK.target, kill_established=kill), current, [])
    assert len(plan.after) == after
    if after:
        assert plan.after[0].startswith("out=$(conntrack -D -f ipv4 -s 203.0.113.7 2>&1 >/dev/null)")
        assert "drop the tracked flows" in plan.changes[-1]
    assert plan.nothing is (blocked_already and not after)
    assert says in " ".join([plan.reason, *plan.notes])


def test_conntrack_filters_follow_the_block() -> None:
    assert target("2001:db8::/32").conntrack_filters() == [["-f", "ipv6", "-s", "2001:db8::/32"]]
    assert target("203.0.113.7/32", 443).conntrack_filters() == [
        ["-f", "ipv4", "-s", "203.0.113.7", "-p", "tcp", "--dport", "443"],
        ["-f", "ipv4", "-s", "203.0.113.7", "-p", "udp", "--dport", "443"],
    ]
    assert target("203.0.113.7/32", None, "udp").conntrack_filters() == [
        ["-f", "ipv4", "-s", "203.0.113.7", "-p", "udp"]
    ]


@pytest.mark.parametrize(
    ("prints", "code", "fails", "dropped"),
    [
        ("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.", 0, False, 3),
        ("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.", 1, False, 0),
        ("conntrack v1.4.7 (conntrack-tools): Operation not permitted", 1, True, 0),
    ],
)
def test_conntrack_delete_in_a_real_shell(
    tmp_path: Path, prints: str, code: int, fails: bool, dropped: int
) -> None:
    """The wrapper around conntrack -D under `set -e`, run by sh with a conntrack that prints what
    conntrack 1.4.7 prints (its count on stderr, exit 1 for none deleted)."""
    fake = tmp_path / "conntrack"
    fake.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/argv\necho {shlex.quote(prints)} >&2\nexit {code}\n')
    fake.chmod(0o755)
    deletes = fwrules.conntrack_delete(target("203.0.113.7/32", 22, "tcp"))
    script = "\n".join(["set -e", *deletes, "echo finished"])
    path = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=path, check=False)
    assert (done.returncode != 0) is fails
    assert ("finished" in done.stdout) is not fails
    assert fwrules.flows_dropped(done.stdout + done.stderr) == dropped
    argv = (tmp_path / "argv").read_text().split()
    assert argv == ["-D", "-f", "ipv4", "-s", "203.0.113.7", "-p", "tcp", "--dport", "22"]


def test_unrecorded_denies_are_listed_hand_made_or_not() -> None:
    recorded = fwfacts.BlockRecord(target("203.0.113.7/32"))
    current = facts(
        rules4=rules4(
            SSH_ALLOW,
            tuple_line("deny", "any", "any", "203.0.113.7", comment="remediations block-ip"),
            tuple_line("deny", "any", "any", "203.0.113.8"),
            tuple_line("deny", "tcp", "25", "203.0.113.9", comment="remediations block-ip"),
            tuple_line("deny", "tcp", "25", "0.0.0.0/0"),  # a port policy, not a block of a source
            "### tuple ### deny any any 0.0.0.0/0 any 203.0.113.10 in_eth1",
        ),
        chain4=chain(
            "-p tcp -m tcp --dport 22 -j ACCEPT",
            "-s 203.0.113.7/32 -j DROP",
            "-s 203.0.113.8/32 -j DROP",
            "-s 203.0.113.9/32 -p tcp -m tcp --dport 25 -j DROP",
        ),
        docker_rules=(docker_rule(target("198.51.100.0/24")),),
        records=(recorded,),
    )
    found = list_blocks.unrecorded(current)
    assert [(u.label, u.layer, u.hand_made) for u in found] == [
        ("203.0.113.8", "ufw", True),
        ("203.0.113.9 port 25/tcp", "ufw", False),
        ("deny in on eth1 from 203.0.113.10", "ufw", True),
        ("198.51.100.0/24", "DOCKER-USER", False),
    ]
    assert "below an allow rule: rule 1 (allow 22/tcp) admits its tcp" in found[0].problems[0]
    assert not found[1].problems  # nothing admits tcp 25 before it
    assert "hand-made (not created by block-ip)" in found[0].line()


def test_port_only_block_needs_tcp_and_udp_in_docker() -> None:
    request = fwrules.BlockRequest(target("203.0.113.7/32", 443))
    plan = fwrules.decide_block(request, facts(), [])
    assert (
        plan.commands[0]
        == "ufw prepend deny from 203.0.113.7 to any port 443 comment 'remediations block-ip'"
    )
    docker = [c for c in plan.commands if "DOCKER-USER" in c]
    assert len(docker) == 2 and {"-p tcp" in c for c in docker} == {True, False}
    assert all("--ctorigdstport 443" in c for c in docker)


def test_inactive_ufw_fails_unless_enable() -> None:
    inactive = facts(ufw_active=False)
    refused = fwrules.decide_block(BLOCK, inactive, [])
    assert "ufw is inactive" in refused.refused and not refused.commands
    plan = fwrules.decide_block(fwrules.BlockRequest(BLOCK.target, enable=True), inactive, [])
    assert plan.commands[0] == "ufw allow 22/tcp"
    assert plan.commands.index("ufw --force enable") > 0


def test_enable_keeps_an_existing_ssh_allow() -> None:
    inactive = facts(
        ufw_active=False, ssh_port=2222, rules4=rules4(tuple_line("allow", "tcp", "2222", "0.0.0.0/0"))
    )
    plan = fwrules.decide_block(fwrules.BlockRequest(BLOCK.target, enable=True), inactive, [])
    assert not any(c.startswith("ufw allow") for c in plan.commands)


def test_guard_wins_over_everything() -> None:
    request = fwrules.BlockRequest(target("198.18.0.0/24"), enable=True)
    plan = fwrules.decide_block(request, facts(ufw_active=False), [])
    assert "198.18.0.1" in plan.refused and not plan.commands


def test_ipv6_needs_ufw_ipv6() -> None:
    plan = fwrules.decide_block(fwrules.BlockRequest(target("2001:db8::/32")), facts(ipv6=False), [])
    assert "IPV6=no" in plan.refused


def test_ipv6_without_a_docker_ipv6_chain_is_ufw_only() -> None:
    plan = fwrules.decide_block(fwrules.BlockRequest(target("2001:db8::/32")), facts(), [])
    assert plan.commands == ("ufw prepend deny from 2001:db8::/32 comment 'remediations block-ip'",)
    assert any("ufw only" in n for n in plan.notes)


def test_same_ttl_keeps_the_expiry_a_new_ttl_sets_a_new_one() -> None:
    record = fwfacts.BlockRecord(BLOCK.target, "ddos", NOW - 100, 3600, NOW + 3500)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7")),
        chain4=chain("-s 203.0.113.7/32 -j DROP"),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    same = fwrules.BlockRequest(BLOCK.target, 3600, "ddos")
    assert fwrules.decide_block(same, current, []).nothing
    longer = fwrules.decide_block(fwrules.BlockRequest(BLOCK.target, 7200, "ddos"), current, [])
    assert not longer.commands and longer.state is not None
    assert longer.state[0].expires == NOW + 7200 and longer.state[0].created == NOW - 100


def test_unblock_removes_every_layer_and_the_record() -> None:
    record = fwfacts.BlockRecord(BLOCK.target)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7"), SSH_ALLOW),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    plan = fwrules.decide_unblock(BLOCK.target, current)
    assert plan.commands[0] == "ufw delete deny from 203.0.113.7"
    assert plan.commands[1].startswith("iptables -w 10 -D DOCKER-USER -s 203.0.113.7/32 ")
    assert plan.state == ()
    assert fwrules.decide_unblock(BLOCK.target, facts()).nothing


def test_unblock_without_port_lifts_the_port_blocks_of_that_source() -> None:
    narrowed = target("203.0.113.7/32", 443)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "443", "203.0.113.7")),
        docker_rules=(docker_rule(narrowed, "tcp", 443), docker_rule(narrowed, "udp", 443)),
        records=(fwfacts.BlockRecord(narrowed),),
    )
    plan = fwrules.decide_unblock(BLOCK.target, current)
    assert plan.commands[0] == "ufw delete deny from 203.0.113.7 to any port 443"
    assert sum("-D DOCKER-USER" in c for c in plan.commands) == 2
    assert plan.state == ()


def test_unblock_expired_lifts_only_expired_blocks() -> None:
    old, fresh = target("203.0.113.7/32"), target("203.0.113.8/32")
    current = facts(
        rules4=rules4(
            tuple_line("deny", "any", "any", "203.0.113.7"), tuple_line("deny", "any", "any", "203.0.113.8")
        ),
        records=(
            fwfacts.BlockRecord(old, ttl=60, expires=NOW - 1),
            fwfacts.BlockRecord(fresh, ttl=3600, expires=NOW + 60),
        ),
    )
    plan = fwrules.decide_expired(current)
    assert plan.commands == ("ufw delete deny from 203.0.113.7",)
    assert plan.state is not None and [r.target for r in plan.state] == [fresh]
    later = facts(records=(fwfacts.BlockRecord(fresh, ttl=3600, expires=NOW + 60),))
    assert fwrules.decide_expired(later).nothing


# ---------------------------------------------------------------------------------------------
# Facts parser and the state file
# ---------------------------------------------------------------------------------------------


def test_parse_facts_from_marked_sections() -> None:
    state = fwfacts.StatePath("/var/lib/remediations")
    record = fwfacts.BlockRecord(target("203.0.113.7/32"), "ddos", NOW, 60, NOW + 60)
    output = "\n".join(
        [
            f"@@now {NOW}",
            "@@conf",
            "ENABLED=yes",
            "@@default",
            'IPV6="yes"',
            "@@rules4",
            rules_file(tuple_line("deny", "any", "any", "203.0.113.7")),
            "@@state",
            fwfacts.render_state([record]),
            "@@apps",
            OPENSSH_PROFILE,
            "@@files 0",
            "@@ssh ::ffff:198.18.0.1 51234 198.18.0.11 22",
            "@@ufw yes",
            "@@table4",
            "-P INPUT DROP",
            "-N DOCKER-USER",
            "-N ufw-user-input",
            "-A INPUT -j ufw-before-input",
            "-A DOCKER-USER -j RETURN",
            "-A ufw-user-input -s 203.0.113.7/32 -j DROP",
            "@@table4rc 0",
            "@@table6",
            "-P INPUT ACCEPT",
            "@@table6rc 0",
            "@@conntrack yes",
            "@@flows",
            "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.",
            "@@end",
        ]
    )
    parsed = fwfacts.parse_facts(output, state)
    assert parsed.now == NOW and not parsed.error
    assert parsed.controller == CONTROLLER and parsed.ssh_port == 22
    assert parsed.ufw_active and parsed.ufw_enabled_conf and parsed.ipv6
    assert parsed.chain4 is not None and [r.jump for r in parsed.chain4] == ["DROP"] and parsed.chain6 is None
    assert parsed.profiles == {"OpenSSH": (("tcp", "22"),)}
    assert parsed.docker4 and not parsed.docker6
    assert parsed.conntrack and parsed.flows == 3
    assert parsed.records == (record,)
    assert fwrules.layers(record.target, parsed) == (["ufw"], ["no DOCKER-USER rule"])
    inactive = fwfacts.parse_facts(output.replace("-N ufw-user-input\n", ""), state)
    assert not inactive.ufw_active and inactive.chain4 is None
    unread = fwfacts.parse_facts(output.replace("@@table4rc 0", "@@table4rc 1"), state)
    assert unread.chain4 is None and not unread.docker4  # iptables failed: nothing is known to be loaded
    assert "awk exit 2" in fwfacts.parse_facts(output.replace("@@files 0", "@@files 2"), state).error
    assert "not seconds" in fwfacts.parse_facts(output.replace(f"@@now {NOW}", "@@now x"), state).error


def test_unreadable_state_file_is_an_error_not_an_empty_list() -> None:
    output = "@@now 1\n@@state\n{not json\n@@files 0\n@@end\n"
    assert "is not what block-ip writes" in fwfacts.parse_facts(output, fwfacts.StatePath("/x")).error
    assert fwfacts.parse_facts("@@now 1\n", fwfacts.StatePath("/x")).error


def test_state_round_trip() -> None:
    records = (
        fwfacts.BlockRecord(target("203.0.113.0/24", 443, "tcp"), "c", NOW, None, None),
        fwfacts.BlockRecord(target("2001:db8::/32"), "", NOW, 60, NOW + 60),
    )
    assert fwfacts.parse_state(fwfacts.render_state(records)) == records
    assert json.loads(fwfacts.render_state(records))["blocks"][0]["ip"] == "203.0.113.0/24"


# ---------------------------------------------------------------------------------------------
# The pieces of decide_block, and the declared target arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "current", "says"),
    [
        (BLOCK, facts(), ""),
        (BLOCK, facts(error="the facts command did not finish"), "did not finish"),
        (BLOCK, facts(ufw_installed=False), "ufw is not installed"),
        (fwrules.BlockRequest(target("198.18.0.0/24")), facts(), "contains 198.18.0.1"),
        (fwrules.BlockRequest(target("2001:db8::/32")), facts(ipv6=False), "IPV6=no"),
        (BLOCK, facts(ufw_active=False), "ufw is inactive"),
        (fwrules.BlockRequest(BLOCK.target, enable=True), facts(ufw_active=False), ""),
        # the lockout guard comes before the inactive ufw, even with --enable
        (fwrules.BlockRequest(target("198.18.0.0/24"), enable=True), facts(ufw_active=False), "contains"),
    ],
)
def test_block_refusal(request_: fwrules.BlockRequest, current: fwfacts.FirewallFacts, says: str) -> None:
    refusal = fwrules.block_refusal(request_, current, [])
    assert (says in refusal) if says else refusal == "", refusal
    assert fwrules.decide_block(request_, current, []).refused == refusal


@pytest.mark.parametrize(
    ("current", "commands", "notes"),
    [
        (facts(), [], []),  # ufw active: nothing to allow
        (facts(ufw_active=False), ["ufw allow 22/tcp"], []),
        (facts(ufw_active=False, rules4=rules4(SSH_ALLOW)), [], []),  # a rule already admits it
        (facts(ufw_active=False, controller=None), [], ["not connected over SSH: no SSH allow rule needed"]),
    ],
)
def test_ssh_allow_before_enable(
    current: fwfacts.FirewallFacts, commands: list[str], notes: list[str]
) -> None:
    request = fwrules.BlockRequest(BLOCK.target, enable=True, notes=("given",))
    got_commands, changes, got_notes = fwrules.ssh_allow(request, current)
    assert (got_commands, got_notes) == (commands, ["given", *notes])
    assert len(changes) == len(commands)


def test_enable_comes_after_the_deny_and_before_docker() -> None:
    plan = fwrules.decide_block(fwrules.BlockRequest(BLOCK.target, enable=True), facts(ufw_active=False), [])
    assert [c.split()[:2] for c in plan.commands] == [
        ["ufw", "allow"], ["ufw", "prepend"], ["ufw", "--force"], ["iptables", "-w"]
    ]  # fmt: skip
    assert plan.changes[2] == "enable ufw"


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ({"ip": "203.0.113.7"}, (target("203.0.113.7/32"), "")),
        ({"ip": "203.0.113.0/24", "port": "443", "proto": "TCP"}, (target("203.0.113.0/24", 443, "tcp"), "")),
        ({"ip": "::ffff:203.0.113.7"}, (target("203.0.113.7/32"), "blocking 203.0.113.7")),
    ],
)
def test_target_args_parse_ip_port_proto(given: dict[str, str], want: tuple[ufw.Target, str]) -> None:
    from remediations.core.args import args

    values = args(fwargs.TARGET).parse(given)
    found, note = fwargs.target_of(values["ip"], values["port"], values["proto"])
    assert found == want[0] and want[1] in note


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({}, "--ip is required: an IPv4 or IPv6 address"),
        ({"ip": ""}, "--ip is required: an IPv4 or IPv6 address"),
        ({"ip": "1.2.3.4", "port": "0"}, "--port '0'"),
        ({"ip": "1.2.3.4", "proto": "icmp"}, "--proto 'icmp'"),
    ],
)
def test_target_args_refuse_with_the_old_messages(given: dict[str, str], says: str) -> None:
    from remediations.core.args import args

    with pytest.raises(UsageError, match=re.escape(says)):
        values = args(fwargs.TARGET).parse(given)
        fwargs.target_of(values["ip"], values["port"], values["proto"])
