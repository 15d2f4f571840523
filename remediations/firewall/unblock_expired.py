"""unblock-expired: lift every recorded block whose --ttl has passed, by the host's clock.

facts   as block-ip's (`facts.firewall`), under the host lock;
decide  `rules.decide_expired`: the expired blocks' deletes and the state file without them, or
        "no expired blocks" (with the next expiry);
apply   one round trip (`actions.firewall`); the facts afterwards must show none of them left.
"""

from __future__ import annotations

from typing import Any, ClassVar

from remediations.actions.firewall import plan_of, read_facts
from remediations.actions.firewall_rules import decide_expired, layers
from remediations.core.context import HostContext
from remediations.core.inventory import Host
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.facts.firewall import FirewallFacts, StatePath, facts_command


class UnblockExpired(Remediation):
    """Lift every block whose --ttl has passed (by the host's clock); nothing expired: ok. Cron-safe."""

    task: ClassVar[str] = "unblock-expired"
    cron_safe: ClassVar[bool] = True

    def facts_under_lock(self, host: Host) -> str:
        return facts_command(StatePath.from_host(host))

    def gather(self, ctx: HostContext) -> FirewallFacts | None:
        return read_facts(ctx)

    def decide(self, ctx: HostContext, facts: FirewallFacts) -> Plan:
        expired = [r.target for r in facts.records if r.expired(facts.now)]

        def check(after: FirewallFacts, output: str) -> str:
            left = [t.label() for t in expired if layers(t, after)[0] or after.record(t) is not None]
            return f"still blocked: {', '.join(left)}" if left else ""

        def outcome(after: FirewallFacts, output: str) -> tuple[str, dict[str, Any]]:
            labels = [t.label() for t in expired]
            return f"lifted {len(labels)} expired block(s): {', '.join(labels)}; {len(after.records)} left", {
                "lifted": labels
            }

        return plan_of(ctx, decide_expired(facts), check, outcome)
