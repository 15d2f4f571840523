"""restart-api: restart the api service of a compose project and wait until it is healthy.

facts   the service's containers (docker inspect), its Docker health and its HTTP health URL,
        checked from the host itself;
decide  restart, or (with if_unhealthy) nothing when it is healthy; recreate when no container exists;
apply   `compose restart -t STOP SERVICE`, then wait for health; if it stays unhealthy, escalate once
        to `compose up -d --force-recreate --no-deps SERVICE` and wait again;
verify  the containers started anew and are healthy, or fail with the last health output and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from remediations import images, interrupt, validate
from remediations.compose import (
    Project,
    ProjectFacts,
    ServiceFacts,
    compose_run,
    container_logs,
    gather,
    gather_project,
    health_urls,
)
from remediations.connection import Remote
from remediations.engine import HostContext, Remediation
from remediations.errors import HostError
from remediations.inventory import Host
from remediations.results import Status

POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class Plan:
    action: str  # "none" | "restart" | "recreate"
    reason: str


@dataclass(frozen=True)
class ServiceSettings:
    """What every compose-service remediation reads from a host's vars, read in one place."""

    project: Project
    urls: dict[str, str]  # service -> HTTP health URL
    timeout: float  # seconds to wait for health after a restart or recreate
    stop_timeout: int
    probe: float  # timeout of one HTTP probe

    @classmethod
    def of(cls, host: Host, services: Sequence[str] = ()) -> ServiceSettings:
        """Settings for `host`; with `services`, only their health URLs are probed."""
        urls = health_urls(host)
        if services:
            urls = {k: v for k, v in urls.items() if k in services}
        timeout = float(validate.value(host, "health_timeout"))
        stop_timeout = int(validate.value(host, "stop_timeout"))
        return cls(Project.from_host(host), urls, timeout, stop_timeout, min(timeout, 10.0))

    def gather(self, remote: Remote, known: Sequence[str] = ()) -> ProjectFacts:
        """The project's facts; a HostError when they cannot be had or a `known` service is not in it."""
        facts = gather_project(remote, self.project, self.urls, self.probe)
        if facts.error:
            raise HostError(facts.error)
        unknown = facts.unknown(known)
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise HostError(f"unknown service {names}: the project has {', '.join(facts.services)}")
        return facts

    def facts_of(self, remote: Remote, service: str) -> Callable[[], ServiceFacts]:
        """A re-reader of one service's facts, for waiting on it."""
        return lambda: self.gather(remote).facts[service]


def service_deadline(host: Host) -> float:
    """A bound on one compose-service recovery: facts, a restart and a recreate (each up to the stop
    timeout plus a minute to start), two health waits, the logs; `run_deadline` overrides it."""
    configured = validate.value(host, "run_deadline")
    if configured is not None:
        return float(configured)
    settings = ServiceSettings.of(host)
    return 120.0 + 2 * (settings.timeout + settings.stop_timeout + 60.0)


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


def recover(
    ctx: HostContext,
    project: Project,
    service: str,
    before: ServiceFacts,
    action: str,
    facts: Callable[[], ServiceFacts],
    timeout: float,
    stop_timeout: int,
    step_prefix: str = "",
) -> bool:
    """Bring a service back: `restart` (escalating once to a recreate), `recreate`, or `start`
    (`up -d` of a missing or stopped container). Records its steps; True when healthy at the end.

    Every container replacement is written to the host's image record (see `images`), so that
    rollback knows what ran before.
    """

    def wait(after: ServiceFacts) -> tuple[ServiceFacts, float]:
        """Re-read the facts until the service started anew and is healthy, or `timeout` passed:
        the last facts read either way. A stop request wakes the sleep; the next read refuses."""
        start = time.monotonic()
        retrying = Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(POLL_INTERVAL),
            retry=retry_if_result(lambda current: not (current.restarted_since(after) and current.healthy)),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else after,
            sleep=interrupt.sleep,
        )
        current: ServiceFacts = retrying(facts)
        return current, time.monotonic() - start

    if action == "restart":
        with ctx.step(f"{step_prefix}restart") as step:
            compose_run(ctx.remote, project, before.variant, f"compose restart {service}",
                        "restart", "-t", str(stop_timeout), service, timeout=stop_timeout + 120)  # fmt: skip
            current, waited = wait(before)
            ok, why = current.verdict()
            if ok and current.restarted_since(before):
                step.done(Status.CHANGED, f"restarted {service}; healthy after {waited:.1f}s ({why})")
                return True
            step.done(
                Status.CHANGED,
                f"restarted {service}; still unhealthy after {waited:.0f}s ({why}); escalating to recreate",
            )
        before = current
    step_name = "start" if action == "start" else "recreate"
    if action == "start":
        verb, args = "started", ["up", "-d", "--no-deps", service]
    else:
        verb = "recreated"
        args = ["up", "-d", "--force-recreate", "--no-deps", "-t", str(stop_timeout), service]
    with ctx.step(f"{step_prefix}{step_name}") as step:
        compose_run(ctx.remote, project, before.variant, f"compose {' '.join(args[:-1])} {service}", *args,
                    timeout=stop_timeout + 300)  # fmt: skip
        current, waited = wait(before)
        note_replacement(ctx, project, service, before, current)
        ok, why = current.verdict()
        if ok and current.restarted_since(before):
            step.done(Status.CHANGED, f"{verb} {service}; healthy after {waited:.1f}s ({why})")
            return True
        logs = container_logs(ctx.remote, current.containers)
        tried = {"restart": "restart and recreate", "recreate": "recreate", "start": "start"}[action]
        step.done(
            Status.FAILED,
            f"{service} still unhealthy after {tried} ({waited:.0f}s): {why}"
            + (f"; last logs: {logs}" if logs else ""),
        )
        return False


def note_replacement(
    ctx: HostContext, project: Project, service: str, before: ServiceFacts, after: ServiceFacts
) -> None:
    """Record which image the service ran before its container was replaced (for rollback)."""
    old = {c.name: c for c in before.containers}
    for container in after.containers:
        previous = old.get(container.name) or (before.containers[0] if before.containers else None)
        if previous is None or previous.id == container.id:
            continue  # a new service, or the same container (restarted, not replaced)
        images.record(ctx.remote, ctx.host, project.name, service, ctx.task,
                      previous.image_id, container.image_id, container.image_ref)  # fmt: skip
        return
