"""restart-api: restart the api service of a compose project and wait until it is healthy.

facts   the service's containers (docker inspect), its Docker health and its own HTTP health URL
        (api_health_url for the api service, health_urls for any other), checked from the host itself;
decide  restart, or (with --if-unhealthy) nothing when it is healthy; recreate when no container exists;
apply   `compose restart -t STOP SERVICE`, then wait for health; if it stays unhealthy, escalate once
        to `compose up -d --force-recreate --no-deps SERVICE` and wait again (`actions.compose_service`);
verify  the containers started anew and are healthy, or fail with the last health output and logs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, recover, service_deadline
from remediations.core import validate
from remediations.core.args import SERVICE, Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import CommandResult, HostError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.compose import Project, ServiceFacts, facts_command, gather, parse_facts, record_path


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "restart" | "recreate"
    reason: str


def decide(facts: ServiceFacts, if_unhealthy: bool) -> Decision:
    """Pure: what to do about the service, and why."""
    healthy, why = facts.verdict()
    if facts.error:
        return Decision("none", f"cannot act: {facts.error}")
    if if_unhealthy and healthy:
        return Decision("none", f"{facts.service} is healthy ({why}); not restarted")
    if not facts.containers:
        return Decision("recreate", f"{why}; it will be created")
    state = "healthy" if healthy else f"unhealthy: {why}"
    return Decision("restart", f"{facts.service} is {state}")


@dataclass(frozen=True)
class Facts:
    service: str
    before: ServiceFacts
    settings: ServiceSettings


class RestartApi(Remediation):
    """Restart the api service of each host's compose project and wait until it is healthy.

    Health is the service's own: its container's Docker health status and its URL (api_health_url for
    the api, health_urls for another service), checked from the host. If a restart does not bring it
    back, the container is recreated once; if it is still unhealthy the host fails with the last
    health output and log lines, and the rollout stops. Hosts are restarted one at a time unless
    --serial says otherwise.
    """

    task: ClassVar[str] = "restart-api"
    params = args(
        replace(SERVICE, help="compose service to restart (default: the host's api_service var)"),
        Arg("if_unhealthy", kind="flag",
            help="restart only hosts whose service is not healthy (the idempotent, cron-safe form)"),
    )  # fmt: skip
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

    def gather(self, ctx: HostContext) -> Facts | None:
        settings = ServiceSettings.of(ctx.host)
        service = str(self.service or ctx.var("api_service"))
        with ctx.step("facts") as step:
            before = self._first_facts(ctx, settings, service)
            noted = images.observe_quietly(ctx.remote, ctx.host, settings.project.name,
                                           {service: before.containers}, ctx.options.check, before.record)
            healthy, why = before.verdict()
            step.done(
                Status.FAILED if before.error else Status.OK,
                before.error or f"{service}: {'healthy' if healthy else 'unhealthy'} ({why})",
                healthy=healthy,
                compose=before.variant,
                started_at=[c.started_at for c in before.containers],
                **({"image_record": noted} if noted else {}),
            )
        return None if before.error else Facts(service, before, settings)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        decision = decide(facts.before, self.if_unhealthy)
        if decision.action == "none":
            return Plan.nothing(decision.reason)
        settings, service = facts.settings, facts.service

        def apply(ctx: HostContext) -> None:
            reread = lambda: self._facts(ctx, settings, service)  # noqa: E731
            recover(ctx, settings.project, service, facts.before, decision.action, reread,
                    settings.timeout, settings.stop_timeout)  # fmt: skip

        summary = f"{decision.action} {service} ({decision.reason})"
        return Plan.of(Change(decision.action, summary, apply, own_steps=True), check_step="decide")

    def facts_under_lock(self, host: Host) -> str:
        """The facts, the image record with them, run as soon as the host lock is held (one round
        trip for lock, facts and record); stderr is not read, so it is dropped."""
        settings = ServiceSettings.of(host)
        service = str(self.service or host.get("api_service"))
        command = facts_command(settings.project, service, settings.urls.get(service), settings.probe,
                                record_path(host))  # fmt: skip
        return "exec 2>/dev/null\n" + command

    def _first_facts(self, ctx: HostContext, settings: ServiceSettings, service: str) -> ServiceFacts:
        """The facts before acting: read under the lock when it was taken, else now (with the record)."""
        if ctx.prefetched is None:
            url = settings.urls.get(service)
            return gather(ctx.remote, settings.project, service, url, settings.probe, record_path(ctx.host))
        if "@@" not in ctx.prefetched:
            raise HostError(f"gathering facts failed: {ctx.prefetched.strip()[-300:] or 'no output'}")
        result = CommandResult("facts (under the host lock)", 0, ctx.prefetched, "")
        return parse_facts(service, settings.urls.get(service), result)

    @staticmethod
    def _facts(ctx: HostContext, settings: ServiceSettings, service: str) -> ServiceFacts:
        """One service only: cheaper than the whole project's facts. Judged by its own health: its
        Docker health, its own URL (`health_urls`; `api_health_url` is the api's), else running."""
        url = settings.urls.get(service)
        return gather(ctx.remote, settings.project, service, url, settings.probe)
