"""Pure decisions of the firewall tasks: where a block holds, and what to run to block, unblock or lift
expired blocks, as a `FirewallPlan` (commands, the new state file, or nothing and why, or a refusal
with nothing changed). No I/O: functions of (request, facts).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from remediations.facts.firewall import (
    DOCKER_CHAIN,
    BlockRecord,
    DockerRule,
    FirewallFacts,
    docker_rule_spec,
    format_duration,
    format_time,
)
from remediations.facts.ufw import (
    ADMIT,
    ALL,
    DENY,
    NONE,
    PASS,
    UFW_COMMENT,
    Address,
    Judged,
    Network,
    Profiles,
    Target,
    Traffic,
    UfwRule,
    chain_name,
)


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
# What the rules, walked in order, do with a slice of the source's traffic
# ---------------------------------------------------------------------------------------------


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
    undecided = [t for t in target.traffic() if decide_traffic(chain, target.network, t, {}).verdict == PASS]
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
# Decide
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirewallPlan:
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


def decide_block(request: BlockRequest, facts: FirewallFacts, allowlist: Sequence[Network]) -> FirewallPlan:
    refusal = block_refusal(request, facts, allowlist)
    if refusal:
        return FirewallPlan(refused=refusal)
    target = request.target
    commands, changes, notes = ssh_allow(request, facts)
    ufw_commands, ufw_changes = _ufw_deny(target, facts)
    commands += ufw_commands
    changes += ufw_changes
    if not facts.ufw_active:  # with --enable (refused without): once the deny is in place
        commands.append(ufw_command("--force", "enable"))
        changes.append("enable ufw")
    docker_commands, docker_changes, docker_note = _docker_drops(target, facts)
    commands += docker_commands
    changes += docker_changes
    notes += [docker_note] if docker_note else []
    state = _block_state(request, facts)
    if state is not None:
        changes.append(_state_change(request, facts))
    after, note = _established(request, facts, changing=bool(commands or state is not None))
    if after:
        changes.append(f"drop the tracked flows {target.label()} has open (conntrack -D; {facts.flows} now)")
    if note:
        notes.append(note)
    if not commands and state is None and not after:
        return FirewallPlan(reason=f"already blocked: {describe(target, facts)}", notes=tuple(notes))
    return FirewallPlan(tuple(commands), tuple(changes), state, notes=tuple(notes), after=tuple(after))


def block_refusal(request: BlockRequest, facts: FirewallFacts, allowlist: Sequence[Network]) -> str:
    """Why the block is refused with nothing changed, or "" when it is not."""
    target = request.target
    if facts.error:
        return facts.error
    if not facts.ufw_installed:
        return "ufw is not installed on this host; nothing changed"
    refusal = lockout_reason(target, facts.controller, allowlist)
    if refusal:
        return refusal
    if target.v6 and not facts.ipv6:
        return "ufw has IPV6=no in /etc/default/ufw, so it cannot hold an IPv6 rule; nothing changed"
    if not facts.ufw_active and not request.enable:
        return (
            "ufw is inactive on this host, so a deny rule would not take effect; nothing "
            "changed. --enable first allows the SSH port the controller uses, then enables ufw"
        )
    return ""


def ssh_allow(request: BlockRequest, facts: FirewallFacts) -> tuple[list[str], list[str], list[str]]:
    """Before ufw is enabled: allow the SSH port the controller is connected on, unless a rule does;
    the commands, the changes in words, and the notes (the request's own first)."""
    commands: list[str] = []
    changes: list[str] = []
    notes = list(request.notes)
    if facts.ufw_active:
        return commands, changes, notes
    if facts.controller is None or facts.ssh_port is None:
        notes.append("not connected over SSH: no SSH allow rule needed")
    else:
        rules = facts.rules(facts.controller.version == 6)
        if not any(r.allows_tcp_port(facts.ssh_port, facts.controller) for r in rules):
            commands.append(ufw_command("allow", f"{facts.ssh_port}/tcp"))
            changes.append(f"allow SSH {facts.ssh_port}/tcp in ufw (the controller's connection)")
    return commands, changes, notes


def _ufw_deny(target: Target, facts: FirewallFacts) -> tuple[list[str], list[str]]:
    """Add the deny at the top, or move one that an allow rule comes before to the top."""
    family = f"IPv{target.network.version}"
    ours = ufw_deny_index(facts.rules(target.v6), target)
    deny = ufw_command("prepend", "deny", *target.ufw_args(), "comment", UFW_COMMENT)
    if ours is None:
        return [deny], [f"add a ufw deny for {target.label()} at the top of the {family} rules"]
    order = ufw_order_problems(target, facts, ours)
    if not order:
        return [], []
    # above every rule: the deny is then the first rule that matches the source's traffic
    return [ufw_command("delete", "deny", *target.ufw_args()), deny], [
        f"move the ufw deny for {target.label()} from rule {ours + 1} to the top ({'; '.join(order)})"
    ]


def _docker_drops(target: Target, facts: FirewallFacts) -> tuple[list[str], list[str], str]:
    """The DOCKER-USER DROPs the block lacks (Docker-published ports bypass ufw), or a note that the
    host has no such chain for the target's family."""
    family = f"IPv{target.network.version}"
    if not facts.has_docker(target.v6):
        return [], [], f"no {DOCKER_CHAIN} chain for {family} (no Docker): ufw only"
    commands, changes = [], []
    for proto, port in reversed(facts.docker_missing(target)):
        spec = docker_rule_spec(target.network, proto, port)
        commands.append(shlex.join([_iptables(target.v6), "-w", "10", "-I", DOCKER_CHAIN, "1", *spec]))
        changes.append(f"add a DROP for {target.label()} to {DOCKER_CHAIN} ({family}{_for(proto)})")
    return commands, changes, ""


def conntrack_delete(target: Target) -> list[str]:
    """`conntrack -D` for the source's flows, printing conntrack's count; "0 deleted" (exit 1) is no
    error, any other failure is."""
    return [
        f'out=$({shlex.join(["conntrack", "-D", *f])} 2>&1 >/dev/null) || case "$out" in '
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


def decide_unblock(target: Target, facts: FirewallFacts) -> FirewallPlan:
    if facts.error:
        return FirewallPlan(refused=facts.error)
    targets = matching_targets(target, facts)
    commands, changes = _removal(targets, facts)
    remaining = tuple(r for r in facts.records if r.target not in targets)
    state = remaining if len(remaining) != len(facts.records) else None
    if state is not None:
        changes.append("remove the record of the block from the host")
    if not commands and state is None:
        return FirewallPlan(
            reason=f"{target.label()} is not blocked (no ufw deny, no {DOCKER_CHAIN} rule, no record)"
        )
    return FirewallPlan(tuple(commands), tuple(changes), state)


def decide_expired(facts: FirewallFacts) -> FirewallPlan:
    if facts.error:
        return FirewallPlan(refused=facts.error)
    expired = [r for r in facts.records if r.expired(facts.now)]
    if not expired:
        pending = [r.expires for r in facts.records if r.expires is not None]
        when = f"; next expiry {format_time(min(pending))}" if pending else ""
        return FirewallPlan(reason=f"no expired blocks ({len(facts.records)} recorded{when})")
    commands, changes = _removal([r.target for r in expired], facts)
    remaining = tuple(r for r in facts.records if not r.expired(facts.now))
    lifted = ", ".join(r.target.label() for r in expired)
    changes.append(f"remove the record of {len(expired)} expired block(s): {lifted}")
    return FirewallPlan(tuple(commands), tuple(changes), remaining)
