"""ensure-healthy: every service of the compose project (or the named ones) running and healthy.

facts   the project's services (`compose config --services`) and all its containers (docker inspect),
        plus each configured HTTP health URL, in one round trip;
decide  per service: healthy or still starting → left alone; missing, exited or created → start
        (`up -d --no-deps`); running but unhealthy → restart, escalating once to a recreate;
apply   one service at a time, each waited on until healthy;
verify  each acted-on service is healthy afterwards, or its step fails with the last health output
        and log lines. The other services are still seen to.

Cron-safe: a healthy service is never touched, so running it every few minutes is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.core.args import SERVICES, args
from remediations.core.context import HostContext
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import check_services
from remediations.facts.compose import Project, ProjectFacts, ServiceFacts

STOPPED = ("exited", "created", "dead")


@dataclass(frozen=True)
class ServicePlan:
    service: str
    action: str  # "none" | "start" | "restart"
    reason: str


def decide(facts: ServiceFacts) -> ServicePlan:
    """Pure: what to do about one service, and why."""
    name = facts.service
    healthy, why = facts.verdict()
    if healthy:
        return ServicePlan(name, "none", f"{name} is healthy ({why})")
    if not facts.containers:
        return ServicePlan(name, "start", f"{name} has no container")
    stopped = [c for c in facts.containers if c.state in STOPPED]
    if stopped:
        return ServicePlan(name, "start", f"container {stopped[0].name} is {stopped[0].state}")
    if any(c.health == "starting" for c in facts.containers) and all(
        c.state == "running" and c.health in ("starting", "healthy") for c in facts.containers
    ):
        return ServicePlan(name, "none", f"{name} is still starting; left alone")
    return ServicePlan(name, "restart", why)


@dataclass(frozen=True)
class Facts:
    settings: ServiceSettings
    project: ProjectFacts
    plans: list[ServicePlan]


class EnsureHealthy(Remediation):
    """Start missing or exited services, restart (then recreate) unhealthy ones; leave healthy ones alone.

    Cron-safe: a healthy service is never touched.
    """

    task: ClassVar[str] = "ensure-healthy"
    params = args(replace(SERVICES, example="",
                          help="only this service (repeatable; default: every service of the project)"))
    cron_safe: ClassVar[bool] = True
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, services: Sequence[str] = ()) -> None:
        self.services = list(dict.fromkeys(check_services(services)))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> EnsureHealthy:
        return cls(values["service"])

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    def gather(self, ctx: HostContext) -> Facts:
        settings = ServiceSettings.of(ctx.host)
        with ctx.step("facts") as step:
            pf = settings.gather(ctx.remote, self.services, record=images.state_path(ctx.host))
            noted = images.observe_quietly(ctx.remote, ctx.host, settings.project.name,
                                           {s: f.containers for s, f in pf.facts.items()}, ctx.options.check,
                                           pf.record)  # fmt: skip
            wanted = self.services or list(pf.services)
            plans = [decide(pf.facts[s]) for s in wanted]
            bad = [p.service for p in plans if p.action != "none"]
            step.done(
                Status.OK,
                f"{len(wanted) - len(bad)} of {len(wanted)} service(s) healthy"
                + (f"; not healthy: {', '.join(bad)}" if bad else ""),
                services={p.service: p.action for p in plans},
                **({"image_record": noted} if noted else {}),
            )
        # Each healthy service says so in its own ok step; when none needs anything, the last one's
        # step is the plan's "nothing to do".
        shown = plans if bad else plans[:-1]
        for plan in shown:
            if plan.action == "none":
                ctx.record(plan.service, Status.OK, plan.reason)
        return Facts(settings, pf, plans)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        acting = [p for p in facts.plans if p.action != "none"]
        if not acting:
            last = facts.plans[-1] if facts.plans else None
            return Plan.nothing(last.reason, step=last.service) if last else Plan.nothing("no service")
        return Plan.of(*(self._change(facts, p) for p in acting))

    @staticmethod
    def _change(facts: Facts, plan: ServicePlan) -> Change:
        settings, service = facts.settings, plan.service

        def apply(ctx: HostContext) -> None:
            recover(ctx, settings.project, service, facts.project.facts[service], plan.action,
                    settings.facts_of(ctx.remote, service), settings.timeout, settings.stop_timeout,
                    step_prefix=f"{service}: ")  # fmt: skip

        return Change(service, f"{plan.action} {service} ({plan.reason})", apply, own_steps=True)
