"""list-blocks: each recorded block with the layers that hold it, its comment and its expiry, and the
denies no record accounts for. Changes nothing (no host lock); fails the host when a recorded block
lacks a layer. The listing is printed after the run (`report`), unless --json.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from remediations.actions.firewall import read_facts
from remediations.actions.firewall_rules import layers, ufw_order_problems
from remediations.core.context import HostContext
from remediations.core.remediation import Remediation
from remediations.core.results import HostResult, Status
from remediations.facts.firewall import DOCKER_CHAIN, BlockRecord, FirewallFacts
from remediations.facts.ufw import ANY_DST, DENY, UFW_COMMENT, Target

if TYPE_CHECKING:
    from remediations.core.results import RunResult


class ListBlocks(Remediation):
    """Show each recorded block: the layers that hold it (ufw, DOCKER-USER), its expiry and comment.

    Also shows the ufw denies (and block-ip's DOCKER-USER rules) no record accounts for, hand-made
    ones marked as such. Exit 1 when a recorded block is missing a layer (no ufw deny, a deny that
    an allow rule comes before, ufw inactive, no DOCKER-USER rule): re-run block-ip to repair it.
    """

    task: ClassVar[str] = "list-blocks"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def run(self, ctx: HostContext) -> None:
        facts = read_facts(ctx)
        if facts is None:
            return
        broken = [r for r in facts.records if record_block(ctx, r, facts)]
        others = unrecorded(facts)
        for other in others:
            ctx.record("unrecorded", Status.OK, other.line(), label=other.label, layer=other.layer,
                       hand_made=other.hand_made, problems=list(other.problems))  # fmt: skip
        expired = sum(r.expired(facts.now) for r in facts.records)
        summary = f"{len(facts.records)} block(s)" + (f", {expired} expired" if expired else "")
        if broken:
            summary += f", {len(broken)} NOT held in every layer"
        if facts.records:
            summary += ": " + "; ".join(block_line(r, facts) for r in facts.records)
        if others:
            summary += f"; and {len(others)} deny rule(s) without a record"
        ctx.record("list", Status.FAILED if broken else Status.OK, summary)

    @classmethod
    def report(cls, run: RunResult, as_json: bool) -> None:
        if not as_json:
            print(listing(run.hosts))


def record_block(ctx: HostContext, record: BlockRecord, facts: FirewallFacts) -> bool:
    """Record the "block" step of one recorded block; True when a layer is missing."""
    holding, problems = layers(record.target, facts)
    ctx.record(
        "block",
        Status.FAILED if problems else Status.OK,
        block_line(record, facts),
        **record.to_dict(),
        layers=holding,
        problems=problems,
        expired=record.expired(facts.now),
    )
    return bool(problems)


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
            if not rule.inbound or rule.verdict != DENY or rule.src in ANY_DST:
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
