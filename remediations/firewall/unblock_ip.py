"""unblock-ip: lift a block in every layer (ufw, DOCKER-USER) and remove its record.

facts   as block-ip's (`facts.firewall`), under the host lock;
decide  `rules.decide_unblock`: the ufw deletes, the DOCKER-USER deletes and the state file without
        the block, or "not blocked";
apply   one round trip (`actions.firewall`); the facts afterwards must show it in no layer and no record.
"""

from __future__ import annotations

from typing import Any, ClassVar

from remediations.actions.firewall import plan_of, read_facts
from remediations.actions.firewall_rules import decide_unblock, layers, matching_targets
from remediations.core.args import args
from remediations.core.context import HostContext
from remediations.core.inventory import Host
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.facts.firewall import FirewallFacts, StatePath, facts_command
from remediations.facts.ufw import Network
from remediations.firewall.params import TARGET, target_of


class UnblockIp(Remediation):
    """Lift a block in every layer (ufw, DOCKER-USER) and remove its record; not blocked: ok.

    Without --port/--proto every block of that exact address or range is lifted, whatever port or
    protocol it was narrowed to.
    """

    task: ClassVar[str] = "unblock-ip"
    params = args(TARGET)

    def __init__(
        self, ip: tuple[Network, str] | None = None, port: int | None = None, proto: str | None = None
    ) -> None:
        self.target, _ = target_of(ip, port, proto)

    def facts_under_lock(self, host: Host) -> str:
        return facts_command(StatePath.from_host(host))

    def gather(self, ctx: HostContext) -> FirewallFacts | None:
        return read_facts(ctx)

    def decide(self, ctx: HostContext, facts: FirewallFacts) -> Plan:
        targets = matching_targets(self.target, facts)

        def check(after: FirewallFacts, output: str) -> str:
            left = [t.label() for t in targets if layers(t, after)[0] or after.record(t) is not None]
            return f"still blocked: {', '.join(left)}" if left else ""

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            return f"{self.target.label()} unblocked in every layer", {"lifted": [t.label() for t in targets]}

        return plan_of(ctx, decide_unblock(self.target, facts), check, outcome)
