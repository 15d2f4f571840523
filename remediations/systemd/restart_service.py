"""restart-service: restart a systemd service and wait until it is healthy, escalating as its var says.

facts   `systemctl show` of the unit (LoadState, ActiveState, SubState, MainPID, NRestarts,
        InvocationID, ExecMainStartTimestamp, …) and its health URL (`systemd_units`), fetched on the
        host, in one round trip run as soon as the host lock is held;
decide  restart, or (with --if-unhealthy) nothing when it is healthy; nothing for a unit the host
        does not have (that host fails);
apply   the unit's escalation (`restart`, then `stop-start`, by default), each waited on until the
        unit started anew, is active and its URL answers (`actions.systemd_unit`);
verify  healthy with a new MainPID, or fail with the unit's last 50 journal lines, secrets masked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from remediations.actions.systemd_unit import gather, recover
from remediations.core.args import UNIT, Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import CommandResult, HostError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import check_unit, value
from remediations.facts.systemd import UnitFacts, UnitSettings, facts_command, parse_facts


def decide(facts: UnitFacts, if_unhealthy: bool) -> tuple[str, str]:
    """Pure: (action, reason); action is "none" or "restart"."""
    healthy, why = facts.verdict()
    if not facts.exists:
        return "none", f"cannot act: {why}"
    if if_unhealthy and healthy:
        return "none", f"{facts.unit} is healthy ({why}); not restarted"
    return "restart", f"{facts.unit} is {'healthy' if healthy else 'unhealthy'}: {why}"


class RestartService(Remediation):
    """Restart a systemd service on each host and wait until it is healthy.

    Healthy: ActiveState=active, started anew (another InvocationID, a new MainPID) and its health
    URL answering, when the unit has one (`systemd_units: {NAME: {health_url: URL}}`), fetched on the
    host. If a restart does not bring it back, the unit's `escalate` list goes on (default: restart,
    then stop, reset-failed and start); if it is still unhealthy the host fails with the last 50
    journal lines (secrets masked) and the rollout stops. Hosts go one at a time unless --serial.
    """

    task: ClassVar[str] = "restart-service"
    params = args(
        replace(UNIT, required=True),
        Arg("if_unhealthy", kind="flag",
            help="restart only hosts where the unit is not healthy (the idempotent, cron-safe form)"),
    )  # fmt: skip
    default_serial: ClassVar[int | None] = 1

    def __init__(self, unit: str, if_unhealthy: bool = False) -> None:
        self.unit = check_unit(unit)
        self.if_unhealthy = if_unhealthy

    def validate(self, host: Host) -> None:
        super().validate(host)
        UnitSettings.of(host, self.unit)

    def deadline(self, host: Host) -> float:
        """Facts, each escalation step with its wait, the journal."""
        configured = value(host, "run_deadline")
        if configured is not None:
            return float(configured)
        settings = UnitSettings.of(host, self.unit)
        return 120.0 + len(settings.escalate) * (settings.health_timeout + 180.0)

    def facts_under_lock(self, host: Host) -> str:
        return "exec 2>/dev/null\n" + facts_command([UnitSettings.of(host, self.unit)])

    def gather(self, ctx: HostContext) -> tuple[UnitSettings, UnitFacts] | None:
        settings = UnitSettings.of(ctx.host, self.unit)
        with ctx.step("facts") as step:
            if ctx.prefetched is None:
                before = gather(ctx.remote, [settings])[0]
            else:
                before = parse_facts([settings], ctx.prefetched)[0]
                if before.error:
                    result = CommandResult("facts (under the host lock)", 0, ctx.prefetched, "")
                    raise HostError(f"reading the unit failed: {before.error}", result)
            for secret in before.secret_values():
                ctx.redactor.add_value(secret)
            healthy, why = before.verdict()
            status = Status.OK if before.exists else Status.FAILED
            said = f"{self.unit}: {'healthy' if healthy else 'not healthy'} ({why})" if before.exists else why
            step.done(status, said,
                      healthy=healthy, **before.summary())  # fmt: skip
        return (settings, before) if before.exists else None

    def decide(self, ctx: HostContext, facts: tuple[UnitSettings, UnitFacts]) -> Plan:
        settings, before = facts
        action, reason = decide(before, self.if_unhealthy)
        if action == "none":
            return Plan.nothing(reason)

        def apply(ctx: HostContext) -> None:
            recover(ctx, settings, before, "restart")

        steps = " → ".join(settings.escalate)
        return Plan.of(Change("restart", f"restart {self.unit} ({reason}; escalation: {steps})", apply,
                              own_steps=True), check_step="decide")  # fmt: skip
