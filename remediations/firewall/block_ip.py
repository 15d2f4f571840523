"""block-ip: deny a source address in ufw, above the allow rules, and in Docker's DOCKER-USER chain
(Docker-published ports bypass ufw), with an optional expiry recorded on the host.

facts   one round trip, with the host lock (`facts.firewall`): ufw's rule tuples and loaded chains,
        DOCKER-USER, the state file, the host's clock, the controller's SSH connection, the source's
        tracked flows;
decide  `rules.decide_block`: the commands and the new state file, "already blocked", or a refusal
        (lockout guard, ufw inactive without --enable) with nothing changed;
apply   one round trip: the commands, stopping at the first failure, then the facts again, which must
        show the block in every layer the host has (`actions.firewall`).

Every change runs under the engine's per-host lock: ufw is not safe to run concurrently.
"""

from __future__ import annotations

from typing import Any, ClassVar

from remediations.actions.firewall import Outcome, plan_of, read_facts
from remediations.actions.firewall_rules import (
    BlockRequest,
    decide_block,
    describe,
    flows_dropped,
    layers,
    lockout_reason,
)
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.facts.firewall import FirewallFacts, StatePath, facts_command
from remediations.facts.ufw import Network, Target
from remediations.firewall.params import TARGET, allowlist_of, parse_comment, parse_ttl, target_of


class BlockIp(Remediation):
    """Block a source address or range: a ufw deny above the allow rules, and a DROP in DOCKER-USER.

    Docker-published ports bypass ufw, so where the host runs Docker the block is mirrored into the
    DOCKER-USER chain (IPv4, and IPv6 when Docker has that chain). Already blocked: ok. Refused with
    nothing changed: a range containing the controller's address (as the host sees it) or
    overlapping the firewall_allowlist inventory var; an inactive ufw unless --enable. The deny must
    come before every allow rule that matches the source (app profiles such as OpenSSH and
    `allow in on IFACE` rules included): one below such a rule is moved to the top, and the result
    is checked against the order of ufw's loaded chain. The block, its comment and expiry are
    recorded on the host (firewall_state_dir, default /var/lib/remediations). Connections the source
    already has open survive the block unless --kill-established. Runs under the host lock.
    """

    task: ClassVar[str] = "block-ip"
    params = args(
        TARGET,
        Arg("ttl", "lift the block after this long (90s, 30m, 24h, 7d, 1h30m) with unblock-expired; "
            "default: no expiry", parse=parse_ttl),
        Arg("comment", "why, recorded on the host and shown by list-blocks (no quotes or backslashes)",
            parse=parse_comment, default=""),
        Arg("enable", "if ufw is inactive, allow the SSH port the controller is connected on, then enable "
            "ufw (without it an inactive ufw fails the host)", kind="flag"),
        Arg("kill_established", "once the block holds, drop the connections the source already has open "
            "(conntrack -D; ufw accepts their traffic before its rules, so they survive a block). Default: "
            "leave them, and say how many there are", kind="flag"),
    )  # fmt: skip

    def __init__(
        self,
        ip: tuple[Network, str] | None = None,
        port: int | None = None,
        proto: str | None = None,
        ttl: int | None = None,
        comment: str = "",
        enable: bool = False,
        kill_established: bool = False,
    ) -> None:
        target, note = target_of(ip, port, proto)
        notes = (note,) if note else ()
        self.request = BlockRequest(target, ttl, comment, enable, notes, kill_established)

    @property
    def target(self) -> Target:
        return self.request.target

    def validate(self, host: Host) -> None:
        super().validate(host)
        refusal = lockout_reason(self.target, None, allowlist_of(host))
        if refusal:
            raise UsageError(f"host {host.name}: {refusal}")

    def facts_under_lock(self, host: Host) -> str:
        return facts_command(StatePath.from_host(host), self.target)

    def gather(self, ctx: HostContext) -> FirewallFacts | None:
        return read_facts(ctx, self.target)

    def decide(self, ctx: HostContext, facts: FirewallFacts) -> Plan:
        plan = decide_block(self.request, facts, allowlist_of(ctx.host))
        return plan_of(ctx, plan, self._check, self._outcome(bool(plan.after)), self.target)

    def _check(self, after: FirewallFacts, output: str) -> str:
        """Why the block does not hold after the apply, "" when it does."""
        _, problems = layers(self.target, after)
        if after.record(self.target) is None:
            problems.append("the block is not recorded in the state file")
        return "; ".join(problems)

    def _outcome(self, killing: bool) -> Outcome:
        target = self.target

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            dropped = flows_dropped(output) if killing else None
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

        return outcome
