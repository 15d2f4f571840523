"""Pure parts of the firewall remediations: argument parsing, ufw tuples, DOCKER-USER rules, the
lockout guard and the decisions. No host: table-driven cases and hypothesis properties."""

from __future__ import annotations

import ipaddress
import json
import shlex

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from remediations import firewall as fw
from remediations.errors import UsageError

CONTROLLER = ipaddress.ip_address("198.18.0.1")
NOW = 1_700_000_000


def target(text: str, port: int | None = None, proto: str | None = None) -> fw.Target:
    return fw.Target(ipaddress.ip_network(text), port, proto)


def tuple_line(action: str, proto: str, dport: str, src: str, v6: bool = False, comment: str = "") -> str:
    dst = "::/0" if v6 else "0.0.0.0/0"
    line = f"### tuple ### {action} {proto} {dport} {dst} any {src} in"
    return line + (f" comment={comment.encode().hex()}" if comment else "")


def rules_file(*lines: str) -> str:
    """A user.rules as ufw writes it: iptables-restore text with the tuples as comments."""
    body = "\n".join(f"\n{line}\n-A ufw-user-input -j ACCEPT" for line in lines)
    return f"*filter\n:ufw-user-input - [0:0]\n### RULES ###\n{body}\n### END RULES ###\nCOMMIT\n"


def facts(**overrides: object) -> fw.FirewallFacts:
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
    return fw.FirewallFacts(**base)  # type: ignore[arg-type]


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
    parsed, got_note = fw.parse_network(text)
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
        fw.parse_network(text)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("22", 22), (443, 443), ("1", 1), ("65535", 65535)]
)
def test_parse_port_accepts(value: str | int | None, expected: int | None) -> None:
    assert fw.parse_port(value) == expected


@pytest.mark.parametrize("value", ["0", "65536", "70000", "-1", "22/tcp", "http", "1e3"])
def test_parse_port_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--port"):
        fw.parse_port(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), (None, None)],
)
def test_parse_ttl(value: str | None, seconds: int | None) -> None:
    assert fw.parse_ttl(value) == seconds


@pytest.mark.parametrize("value", ["5x", "24", "h", "0s", "1h 30m", "-1h", "1.5h"])
def test_parse_ttl_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--ttl"):
        fw.parse_ttl(value)


@pytest.mark.parametrize("value", ["it's", 'say "hi"', "a\\b", "line\nbreak", "x" * 201])
def test_parse_comment_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="--comment"):
        fw.parse_comment(value)


def test_parse_proto() -> None:
    assert fw.parse_proto("TCP") == "tcp"
    assert fw.parse_proto(None) is None
    with pytest.raises(UsageError, match="--proto"):
        fw.parse_proto("icmp")


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
    parsed, note = fw.parse_network(str(address))
    expected = mapped if mapped is not None else address
    assert parsed == ipaddress.ip_network(expected)
    assert bool(note) == (mapped is not None)


@given(networks)
def test_any_network_round_trips(network: fw.Network) -> None:
    assume(not (network.version == 6 and network.network_address.ipv4_mapped is not None))
    parsed, _ = fw.parse_network(str(network))
    assert parsed == network
    # and in the compressed form ufw writes into its tuples
    assert fw.parse_network(fw.Target(network).source)[0] == network


@given(networks, st.data())
def test_host_bits_are_refused_and_named(network: fw.Network, data: st.DataObject) -> None:
    assume(network.num_addresses > 1)
    offset = data.draw(st.integers(1, min(network.num_addresses - 1, 2**64)))
    address = network.network_address + offset
    with pytest.raises(UsageError) as err:
        fw.parse_network(f"{address}/{network.prefixlen}")
    message = str(err.value)
    assert "host bits" in message or "IPv4-mapped" in message


@given(st.text(max_size=60))
def test_any_text_is_a_network_or_one_usage_line(text: str) -> None:
    try:
        parsed, _ = fw.parse_network(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    # Whatever is accepted is plain address text: safe on a command line, even unquoted.
    assert set(str(parsed)) <= set("0123456789abcdef:./")
    assert shlex.quote(fw.Target(parsed).source) == fw.Target(parsed).source


@given(st.text(alphabet=st.characters(blacklist_characters="0123456789abcdefABCDEF:./"), min_size=1))
def test_text_with_a_foreign_character_is_refused(junk: str) -> None:
    with pytest.raises(UsageError):
        fw.parse_network("203.0." + junk + "113.7")  # (surrounding whitespace is stripped)


@given(st.integers())
def test_ports(value: int) -> None:
    if 1 <= value <= 65535:
        assert fw.parse_port(str(value)) == value
    else:
        with pytest.raises(UsageError):
            fw.parse_port(str(value))


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
    rules = fw.parse_user_rules(text, v6=False)
    assert [r.action for r in rules] == ["deny", "allow", "allow", "allow", "allow"]
    assert rules[0].comment == "remediations block-ip"
    assert rules[0].blocks(target("203.0.113.7/32"))
    assert rules[2].admits() and not rules[3].admits() and not rules[4].admits()


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
def test_tuple_matches_target(line: str, blocked: fw.Target, blocks: bool) -> None:
    (rule,) = fw.parse_user_rules(line, v6=blocked.v6)
    assert rule.blocks(blocked) is blocks


@given(networks, st.one_of(st.none(), st.integers(1, 65535)), st.sampled_from([None, "tcp", "udp"]))
def test_the_tuple_ufw_writes_for_a_target_matches_it(
    network: fw.Network, port: int | None, proto: str | None
) -> None:
    blocked = fw.Target(network, port, proto)
    line = tuple_line("deny", proto or "any", str(port) if port else "any", blocked.source, blocked.v6)
    (rule,) = fw.parse_user_rules(line, v6=blocked.v6)
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
    (rule,) = fw.parse_user_rules(tuple_line("allow", "tcp", dport, src), v6=False)
    assert rule.allows_tcp_port(22, CONTROLLER) is allows


def test_parse_docker_rules_keeps_only_ours_with_their_spec() -> None:
    ours = fw.docker_rule_spec(ipaddress.ip_network("203.0.113.0/24"), "tcp", 18080)
    text = "\n".join(
        [
            "-N DOCKER-USER",
            "-A DOCKER-USER " + shlex.join(ours).replace("'", '"'),
            "-A DOCKER-USER -s 10.0.0.0/8 -j DROP",
            '-A DOCKER-USER -s 10.0.0.1/32 -m comment --comment "someone else" -j DROP',
            "-A DOCKER-USER -j RETURN",
        ]
    )
    (rule,) = fw.parse_docker_rules(text, v6=False)
    assert (rule.network, rule.proto, rule.port) == (ipaddress.ip_network("203.0.113.0/24"), "tcp", 18080)
    assert list(rule.spec) == ours


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
    reason = fw.lockout_reason(target(blocked), CONTROLLER, allowed)
    assert (refused in reason) if refused else reason == ""


@given(networks, addresses)
def test_guard_refuses_exactly_the_ranges_holding_the_controller(
    network: fw.Network, controller: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    reason = fw.lockout_reason(fw.Target(network), controller, [])
    holds = controller.version == network.version and controller in network
    assert bool(reason) is holds


def test_allowlist_var() -> None:
    assert fw.parse_allowlist(["10.0.0.0/8", "2001:db8::/32"], "inv") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert fw.parse_allowlist("10.0.0.0/8, 192.0.2.1", "inv")[1] == ipaddress.ip_network("192.0.2.1/32")
    with pytest.raises(UsageError, match="firewall_allowlist"):
        fw.parse_allowlist(["10.0.0.300"], "inv")


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------

BLOCK = fw.BlockRequest(target("203.0.113.7/32"))
SSH_ALLOW = tuple_line("allow", "tcp", "22", "0.0.0.0/0")


def rules4(*lines: str) -> tuple[fw.UfwRule, ...]:
    return fw.parse_user_rules(rules_file(*lines), v6=False)


def docker_rule(blocked: fw.Target, proto: str | None = None, port: int | None = None) -> fw.DockerRule:
    spec = fw.docker_rule_spec(blocked.network, proto, port)
    return fw.DockerRule(blocked.v6, blocked.network, proto, port, tuple(spec))


def test_block_on_an_empty_rule_list_prepends_and_mirrors_into_docker() -> None:
    plan = fw.decide_block(BLOCK, facts(), [])
    assert plan.commands[0] == "ufw prepend deny from 203.0.113.7 comment 'remediations block-ip'"
    assert plan.commands[1].startswith("iptables -w 10 -I DOCKER-USER 1 -s 203.0.113.7/32 ")
    assert plan.state is not None and plan.state[0].target == BLOCK.target


def test_block_already_in_every_layer_is_ok() -> None:
    record = fw.BlockRecord(BLOCK.target, created=NOW - 60)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7"), SSH_ALLOW),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    plan = fw.decide_block(BLOCK, current, [])
    assert plan.nothing, plan
    assert "already blocked" in plan.reason and "ufw and DOCKER-USER" in plan.reason


def test_a_deny_below_an_allow_rule_is_moved_to_the_top() -> None:
    current = facts(rules4=rules4(SSH_ALLOW, tuple_line("deny", "any", "any", "203.0.113.7")))
    plan = fw.decide_block(BLOCK, current, [])
    assert plan.commands[:2] == (
        "ufw delete deny from 203.0.113.7",
        "ufw prepend deny from 203.0.113.7 comment 'remediations block-ip'",
    )
    assert "below an allow rule" in plan.changes[0]


def test_port_only_block_needs_tcp_and_udp_in_docker() -> None:
    request = fw.BlockRequest(target("203.0.113.7/32", 443))
    plan = fw.decide_block(request, facts(), [])
    assert (
        plan.commands[0]
        == "ufw prepend deny from 203.0.113.7 to any port 443 comment 'remediations block-ip'"
    )
    docker = [c for c in plan.commands if "DOCKER-USER" in c]
    assert len(docker) == 2 and {"-p tcp" in c for c in docker} == {True, False}
    assert all("--ctorigdstport 443" in c for c in docker)


def test_inactive_ufw_fails_unless_enable() -> None:
    inactive = facts(ufw_active=False)
    refused = fw.decide_block(BLOCK, inactive, [])
    assert "ufw is inactive" in refused.refused and not refused.commands
    plan = fw.decide_block(fw.BlockRequest(BLOCK.target, enable=True), inactive, [])
    assert plan.commands[0] == "ufw allow 22/tcp"
    assert plan.commands.index("ufw --force enable") > 0


def test_enable_keeps_an_existing_ssh_allow() -> None:
    inactive = facts(
        ufw_active=False, ssh_port=2222, rules4=rules4(tuple_line("allow", "tcp", "2222", "0.0.0.0/0"))
    )
    plan = fw.decide_block(fw.BlockRequest(BLOCK.target, enable=True), inactive, [])
    assert not any(c.startswith("ufw allow") for c in plan.commands)


def test_guard_wins_over_everything() -> None:
    plan = fw.decide_block(fw.BlockRequest(target("198.18.0.0/24"), enable=True), facts(ufw_active=False), [])
    assert "198.18.0.1" in plan.refused and not plan.commands


def test_ipv6_needs_ufw_ipv6() -> None:
    plan = fw.decide_block(fw.BlockRequest(target("2001:db8::/32")), facts(ipv6=False), [])
    assert "IPV6=no" in plan.refused


def test_ipv6_without_a_docker_ipv6_chain_is_ufw_only() -> None:
    plan = fw.decide_block(fw.BlockRequest(target("2001:db8::/32")), facts(), [])
    assert plan.commands == ("ufw prepend deny from 2001:db8::/32 comment 'remediations block-ip'",)
    assert any("ufw only" in n for n in plan.notes)


def test_same_ttl_keeps_the_expiry_a_new_ttl_sets_a_new_one() -> None:
    record = fw.BlockRecord(BLOCK.target, "ddos", NOW - 100, 3600, NOW + 3500)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7")),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    same = fw.BlockRequest(BLOCK.target, 3600, "ddos")
    assert fw.decide_block(same, current, []).nothing
    longer = fw.decide_block(fw.BlockRequest(BLOCK.target, 7200, "ddos"), current, [])
    assert not longer.commands and longer.state is not None
    assert longer.state[0].expires == NOW + 7200 and longer.state[0].created == NOW - 100


def test_unblock_removes_every_layer_and_the_record() -> None:
    record = fw.BlockRecord(BLOCK.target)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "any", "203.0.113.7"), SSH_ALLOW),
        docker_rules=(docker_rule(BLOCK.target),),
        records=(record,),
    )
    plan = fw.decide_unblock(BLOCK.target, current)
    assert plan.commands[0] == "ufw delete deny from 203.0.113.7"
    assert plan.commands[1].startswith("iptables -w 10 -D DOCKER-USER -s 203.0.113.7/32 ")
    assert plan.state == ()
    assert fw.decide_unblock(BLOCK.target, facts()).nothing


def test_unblock_without_port_lifts_the_port_blocks_of_that_source() -> None:
    narrowed = target("203.0.113.7/32", 443)
    current = facts(
        rules4=rules4(tuple_line("deny", "any", "443", "203.0.113.7")),
        docker_rules=(docker_rule(narrowed, "tcp", 443), docker_rule(narrowed, "udp", 443)),
        records=(fw.BlockRecord(narrowed),),
    )
    plan = fw.decide_unblock(BLOCK.target, current)
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
            fw.BlockRecord(old, ttl=60, expires=NOW - 1),
            fw.BlockRecord(fresh, ttl=3600, expires=NOW + 60),
        ),
    )
    plan = fw.decide_expired(current)
    assert plan.commands == ("ufw delete deny from 203.0.113.7",)
    assert plan.state is not None and [r.target for r in plan.state] == [fresh]
    later = facts(records=(fw.BlockRecord(fresh, ttl=3600, expires=NOW + 60),))
    assert fw.decide_expired(later).nothing


# ---------------------------------------------------------------------------------------------
# Facts parser and the state file
# ---------------------------------------------------------------------------------------------


def test_parse_facts_from_marked_sections() -> None:
    state = fw.StatePath("/var/lib/remediations")
    record = fw.BlockRecord(target("203.0.113.7/32"), "ddos", NOW, 60, NOW + 60)
    output = "\n".join(
        [
            f"@@now {NOW}",
            "@@ssh ::ffff:198.18.0.1 51234 198.18.0.11 22",
            "@@ufw yes",
            "@@active 0",
            "@@conf",
            "ENABLED=yes",
            "@@default",
            'IPV6="yes"',
            "@@rules4",
            rules_file(tuple_line("deny", "any", "any", "203.0.113.7")),
            "@@rules6",
            "@@docker4 0",
            "-N DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
            "@@docker6 1",
            "@@state present",
            fw.render_state([record]),
            "@@end",
        ]
    )
    parsed = fw.parse_facts(output, state)
    assert parsed.controller == CONTROLLER and parsed.ssh_port == 22
    assert parsed.ufw_active and parsed.ufw_enabled_conf and parsed.ipv6
    assert parsed.docker4 and not parsed.docker6
    assert parsed.records == (record,)
    assert fw.layers(record.target, parsed) == (["ufw"], ["no DOCKER-USER rule"])


def test_unreadable_state_file_is_an_error_not_an_empty_list() -> None:
    output = "@@now 1\n@@state present\n{not json\n@@end\n"
    assert "is not what block-ip writes" in fw.parse_facts(output, fw.StatePath("/x")).error
    assert fw.parse_facts("@@now 1\n", fw.StatePath("/x")).error


def test_state_round_trip() -> None:
    records = (
        fw.BlockRecord(target("203.0.113.0/24", 443, "tcp"), "c", NOW, None, None),
        fw.BlockRecord(target("2001:db8::/32"), "", NOW, 60, NOW + 60),
    )
    assert fw.parse_state(fw.render_state(records)) == records
    assert json.loads(fw.render_state(records))["blocks"][0]["ip"] == "203.0.113.0/24"
