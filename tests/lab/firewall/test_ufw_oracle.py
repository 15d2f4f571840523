"""ufw itself as the oracle of how block-ip reads the firewall: the rule tuples it parses from
/etc/ufw/user.rules and user6.rules (never `ufw status` text) must be, rule for rule and in order,
what `ufw status numbered` shows, and each block's deny must be in the chain ufw loaded, after
block-ip, unblock-ip and hand-made ufw rules (IPv4 and IPv6, comments, allow, limit, app and
interface rules), on a real lab host."""

from __future__ import annotations

import ipaddress
import re

from remediations.facts import firewall as fwfacts
from remediations.facts import ufw
from tests.lab.firewall.test_firewall import Firewall, api1, saved_firewall, sh  # noqa: F401 (fixtures)

STATE = fwfacts.StatePath(fwfacts.DEFAULT_STATE_DIR)
_ROW = re.compile(
    r"^\[\s*(\d+)\]\s+(?P<to>.+?)\s+(?P<action>ALLOW|DENY|REJECT|LIMIT)(?: (?P<dir>IN|OUT|FWD))?"
    r"\s+(?P<src>.+?)(?:\s+# (?P<comment>.*?))?\s*$"
)


def status_rows(text: str) -> list[tuple[str, str, str, str]]:
    """`ufw status numbered`, as (to, action, from, comment) in the order ufw numbers them."""
    rows = []
    for line in text.splitlines():
        found = _ROW.match(line)
        if found:
            action = found["action"] + (f" {found['dir']}" if found["dir"] else "")
            rows.append((found["to"].strip(), action, found["src"].strip(), found["comment"] or ""))
    return rows


def row_of(rule: ufw.UfwRule) -> tuple[str, str, str, str]:
    """A parsed tuple as ufw's status shows it (the rule shapes these tests make). A protocol without
    a port goes with the destination address if there is one, else with the source if there is one
    (`10.1.0.0/16/udp`), else `Anywhere/udp` on both sides: ufw's way."""
    v6 = " (v6)" if rule.v6 else ""
    dst = "" if rule.dst in ufw.ANY_DST else rule.dst
    src = "" if rule.src in ufw.ANY_DST else rule.src
    service = rule.dapp or ("" if rule.dport == "any" else rule.dport)
    if service and not rule.dapp and rule.proto != "any":
        service += f"/{rule.proto}"
    elif not service and rule.proto != "any":
        if dst:
            dst += f"/{rule.proto}"
        elif src:
            src += f"/{rule.proto}"
        else:  # on both sides
            service = src = f"Anywhere/{rule.proto}{v6}"
            v6 = ""
    to = " ".join(w for w in (dst, service) if w) or "Anywhere"
    to += v6 + (f" on {rule.iface}" if rule.iface else "")
    return to, f"{rule.action.upper()} IN", src or "Anywhere" + v6, rule.comment


def check_against_ufw(host: str, blocked: list[ufw.Target]) -> fwfacts.FirewallFacts:
    """Our reading of the host equals ufw's; every block is a DROP in the loaded chain."""
    facts = fwfacts.parse_facts(sh(host, fwfacts.facts_command(STATE)), STATE)
    assert not facts.error, facts.error
    ours = [row_of(r) for r in (*facts.rules4, *facts.rules6)]
    assert ours == status_rows(sh(host, "ufw status numbered")), "the tuples differ from ufw's own view"
    for target in blocked:
        assert any(r.blocks(target) for r in facts.rules(target.v6)), target
        chain = facts.chain(target.v6)
        assert chain is not None
        assert any(r.src == target.network and r.jump == "DROP" for r in chain), (target, chain)
    return facts


def test_the_rules_block_ip_reads_are_the_rules_ufw_shows(api1: Firewall) -> None:  # noqa: F811
    one = ufw.Target(ipaddress.ip_network("203.0.113.71"))
    web = ufw.Target(ipaddress.ip_network("198.51.100.0/24"), 443, "tcp")
    six = ufw.Target(ipaddress.ip_network("2001:db8::7"))
    udp = ufw.Target(ipaddress.ip_network("10.1.0.0/16"), None, "udp")
    check_against_ufw("api1", [])
    assert api1.status("block-ip", "--ip", "203.0.113.71", "--comment", "oracle one")[0] == "changed"
    ranged = api1.status("block-ip", "--ip", "198.51.100.0/24", "--port", "443", "--proto", "tcp")
    assert ranged[0] == "changed"
    assert api1.status("block-ip", "--ip", "2001:db8::7")[0] == "changed"
    assert api1.status("block-ip", "--ip", "10.1.0.0/16", "--proto", "udp")[0] == "changed"
    check_against_ufw("api1", [one, web, six, udp])
    sh("api1", "ufw allow from 192.0.2.0/24 to any port 8080 proto tcp comment 'hand allow' >/dev/null; "
               "ufw deny 2525/udp >/dev/null; ufw limit 2222/tcp >/dev/null; "
               "ufw allow in on lo to any port 9000 >/dev/null; ufw allow OpenSSH >/dev/null; "
               "ufw reject from 10.9.0.0/16 >/dev/null")  # fmt: skip
    facts = check_against_ufw("api1", [one, web, six, udp])
    assert [r.comment for r in facts.rules4 if r.blocks(one)] == [ufw.UFW_COMMENT]
    assert any(r.comment == "hand allow" and r.admits() for r in facts.rules4)
    assert any(r.dapp == "OpenSSH" for r in facts.rules6) and any(r.iface == "lo" for r in facts.rules4)
    assert api1.status("unblock-ip", "--ip", "203.0.113.71")[0] == "changed"
    assert api1.status("unblock-ip", "--ip", "2001:db8::7")[0] == "changed"
    facts = check_against_ufw("api1", [web, udp])
    assert not any(r.blocks(one) for r in facts.rules4) and not any(r.blocks(six) for r in facts.rules6)
    assert api1.status("block-ip", "--ip", "2001:db8::7")[0] == "changed"  # below the hand rules: at the top
    check_against_ufw("api1", [web, udp, six])
