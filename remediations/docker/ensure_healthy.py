"""ensure-healthy: every service of the compose project (or the named ones) running and healthy, and
every systemd service the host lists (`systemd_units`, or the named ones) active and healthy.

facts   the project's services (`compose config --services`) and all its containers (docker inspect),
        plus each configured HTTP health URL, in one round trip;
decide  per service: healthy or still starting → left alone; missing, exited or created → start
        (`up -d --no-deps`); running but unhealthy → restart, escalating once to a recreate;
apply   one service at a time, each waited on until healthy;
verify  each acted-on service is healthy afterwards, or its step fails with the last health output
        and log lines. The other services are still seen to.

systemd units (facts.systemd, one more round trip): healthy (active, its URL answers) or still
starting → left alone; inactive or failed → `systemctl start`; active but its URL failing, or crashed
and waiting to be restarted → the unit's escalation (restart, then stop-start), waited on; a unit
still unhealthy fails its step with its last journal lines (actions.systemd_unit). A host may have
units only (no compose_project_dir). With --service alone only those services are seen to, with
--unit alone only those units.

Cron-safe: a healthy service is never touched, so running it every few minutes is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import image_record as images
from remediations.actions import systemd_unit
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.core.args import SERVICES, UNITS, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import check_services
from remediations.facts.compose import Project, ProjectFacts, ServiceFacts
from remediations.facts.systemd import UnitFacts, UnitSettings, listed_units

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


Unit = tuple[UnitSettings, UnitFacts]  # a systemd unit's settings and facts


def _unit_plan(facts: UnitFacts) -> ServicePlan:
    action, reason = systemd_unit.decide(facts)
    return ServicePlan(facts.unit, action, reason)


@dataclass(frozen=True)
class Facts:
    settings: ServiceSettings | None
    project: ProjectFacts | None
    plans: list[ServicePlan]
    units: dict[str, Unit]


class EnsureHealthy(Remediation):
    """Start missing or exited services, restart (then recreate) unhealthy ones; leave healthy ones alone.

    The host's systemd units (systemd_units) too: an inactive or failed unit is started, an active but
    unhealthy one restarted through its escalation (restart, stop-start). --unit narrows to those units,
    --service alone to those compose services.

    Cron-safe: a healthy service is never touched.
    """

    task: ClassVar[str] = "ensure-healthy"
    params = args(replace(SERVICES, example="",
                          help="only this service (repeatable; default: every service of the project)"),
                  replace(UNITS, example="",
                          help="only this systemd service (repeatable; default: every one in systemd_units)"))
    cron_safe: ClassVar[bool] = True

    def __init__(self, services: Sequence[str] = (), units: Sequence[str] = ()) -> None:
        self.services = list(dict.fromkeys(check_services(services)))
        self.units = list(units)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> EnsureHealthy:
        return cls(values["service"], values["unit"])

    def _compose(self, host: Host) -> bool:
        """Whether the compose project is seen to on `host` (not when only --unit was given)."""
        return bool(self.services) or (not self.units and bool(host.get("compose_project_dir")))

    def _units(self, host: Host) -> list[UnitSettings]:
        if self.units:
            return [UnitSettings.of(host, u) for u in self.units]
        return [] if self.services else listed_units(host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        units = self._units(host)
        if self._compose(host) or not units:
            Project.from_host(host)  # a host with neither: compose_project_dir is the var it lacks

    def gather(self, ctx: HostContext) -> Facts:
        compose = self._compose(ctx.host)
        units = self._gather_units(ctx, self._units(ctx.host))
        if not compose:
            plans = [_unit_plan(facts) for _, facts in units.values()]
            acting = [p for p in plans if p.action != "none"]
            for plan in plans if acting else plans[:-1]:
                if plan.action == "none":
                    ctx.record(plan.service, Status.OK, plan.reason)
            return Facts(None, None, plans, units)
        return self._gather_compose(ctx, units)

    @staticmethod
    def _gather_units(ctx: HostContext, wanted: list[UnitSettings]) -> dict[str, Unit]:
        if not wanted:
            return {}
        with ctx.step("units") as step:
            found = systemd_unit.gather(ctx.remote, wanted)
            missing = [f.unit for f in found if not f.exists]
            if missing:
                raise HostError(f"not a unit on this host: {', '.join(missing)} (LoadState=not-found)")
            healthy = [f.unit for f in found if f.healthy]
            bad = [f.unit for f in found if not f.healthy]
            step.done(Status.OK, f"{len(healthy)} of {len(found)} unit(s) healthy"
                      + (f"; not healthy: {', '.join(bad)}" if bad else ""),
                      units={f.unit: f.summary() for f in found})  # fmt: skip
        return {s.unit: (s, f) for s, f in zip(wanted, found, strict=True)}

    def _gather_compose(self, ctx: HostContext, units: dict[str, Unit]) -> Facts:
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
        plans += [_unit_plan(facts) for _, facts in units.values()]
        bad = [p.service for p in plans if p.action != "none"]
        # Each healthy service says so in its own ok step; when none needs anything, the last one's
        # step is the plan's "nothing to do".
        shown = plans if bad else plans[:-1]
        for plan in shown:
            if plan.action == "none":
                ctx.record(plan.service, Status.OK, plan.reason)
        return Facts(settings, pf, plans, units)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        acting = [p for p in facts.plans if p.action != "none"]
        if not acting:
            last = facts.plans[-1] if facts.plans else None
            return Plan.nothing(last.reason, step=last.service) if last else Plan.nothing("no service")
        return Plan.of(*(self._change(facts, p) for p in acting))

    @staticmethod
    def _change(facts: Facts, plan: ServicePlan) -> Change:
        if plan.service in facts.units:
            unit_settings, before = facts.units[plan.service]

            def apply_unit(ctx: HostContext) -> None:
                systemd_unit.recover(ctx, unit_settings, before, plan.action, step_prefix=f"{plan.service}: ")

            return Change(plan.service, f"{plan.action} {plan.service} ({plan.reason})", apply_unit,
                          own_steps=True)  # fmt: skip
        settings, project, service = facts.settings, facts.project, plan.service
        assert settings is not None and project is not None  # a compose service's plan

        def apply(ctx: HostContext) -> None:
            recover(ctx, settings.project, service, project.facts[service], plan.action,
                    settings.facts_of(ctx.remote, service), settings.timeout, settings.stop_timeout,
                    step_prefix=f"{service}: ")  # fmt: skip

        return Change(service, f"{plan.action} {service} ({plan.reason})", apply, own_steps=True)
