"""restart-api: restart the api service of a compose project and wait until it is healthy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from remediations.actions.compose_service import ServiceSettings, recover, service_deadline
from remediations.core import validate
from remediations.core.engine import HostContext, Remediation
from remediations.core.inventory import Host
from remediations.core.results import Status
from remediations.facts.compose import (
    Project,
    ServiceFacts,
    gather,
)


@dataclass(frozen=True)
class Plan:
    action: str  # "none" | "restart" | "recreate"
    reason: str


def decide(facts: ServiceFacts, if_unhealthy: bool) -> Plan:
    """Pure: what to do about the service, and why."""
    healthy, why = facts.verdict()
    if facts.error:
        return Plan("none", f"cannot act: {facts.error}")
    if if_unhealthy and healthy:
        return Plan("none", f"{facts.service} is healthy ({why}); not restarted")
    if not facts.containers:
        return Plan("recreate", f"{why}; it will be created")
    state = "healthy" if healthy else f"unhealthy: {why}"
    return Plan("restart", f"{facts.service} is {state}")


class RestartApi(Remediation):
    task: ClassVar[str] = "restart-api"
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)
    default_serial: ClassVar[int | None] = 1

    def __init__(self, service: str | None = None, if_unhealthy: bool = False) -> None:
        self.service = None if service is None else validate.check_service(service)
        self.if_unhealthy = if_unhealthy

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)
        if not (self.service or host.get("api_service")):
            host.require("api_service")

    def deadline(self, host: Host) -> float:
        return service_deadline(host)

    def run(self, ctx: HostContext) -> None:
        settings = ServiceSettings.of(ctx.host)
        project = settings.project
        service = str(self.service or ctx.var("api_service"))
        url = ctx.var("api_health_url") or None

        def facts() -> ServiceFacts:  # one service only: cheaper than the whole project's facts
            return gather(ctx.remote, project, service, url, settings.probe)

        with ctx.step("facts") as step:
            before = facts()
            healthy, why = before.verdict()
            step.done(
                Status.FAILED if before.error else Status.OK,
                f"{service}: {'healthy' if healthy else 'unhealthy'} ({why})",
                healthy=healthy,
                compose=before.variant,
                started_at=[c.started_at for c in before.containers],
            )
        if before.error:
            return  # the facts step failed and says why
        plan = decide(before, self.if_unhealthy)
        if plan.action == "none":
            ctx.record("decide", Status.OK, plan.reason)
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would {plan.action} {service} ({plan.reason})")
            return

        recover(ctx, project, service, before, plan.action, facts, settings.timeout, settings.stop_timeout)
