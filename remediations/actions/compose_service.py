"""Bring a compose service back: restart, escalate once to a recreate, wait until healthy.

Also the settings every compose-service remediation reads from a host (`ServiceSettings`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_exponential

from remediations.actions import image_record as images
from remediations.core import interrupt, validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.facts.compose import (
    Project,
    ProjectFacts,
    ServiceFacts,
    compose_run,
    container_logs,
    gather_project,
    health_urls,
    parse_poll,
    poll,
    poll_command,
    unknown_service,
)

# The health wait polls on a short, bounded backoff: 0.1 s after the restart returns, each pause
# 1.5 times the one before, never more than 1 s (0.1, 0.15, 0.23, 0.34, 0.51, 0.76, 1, 1, …): a
# service that is back within a second is seen within about 0.2 s of it, and a slow one costs the
# host at most one cheap poll a second (`facts.compose.poll_command`: docker ps, docker inspect,
# the URL; no compose). The deadline is `health_timeout`, as it always was.
POLL_FIRST = 0.1
POLL_GROWTH = 1.5
POLL_MAX = 1.0


def poll_wait() -> wait_exponential:
    """The pause before each next health poll (tenacity's wait: attempt n waits FIRST * GROWTH^(n-1),
    at most MAX)."""
    return wait_exponential(multiplier=POLL_FIRST, exp_base=POLL_GROWTH, min=POLL_FIRST, max=POLL_MAX)


def wait_until(
    read: Callable[[], ServiceFacts], done: Callable[[ServiceFacts], bool], timeout: float
) -> ServiceFacts:
    """Read the facts until `done` says so or `timeout` seconds passed (the read that passes it is
    the last): the last facts read either way. A stop request wakes the pause; the next read refuses."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=poll_wait(),
        retry=retry_if_result(lambda current: not done(current)),
        retry_error_callback=_last_read,
        sleep=interrupt.sleep,
    )
    current: ServiceFacts = retrying(read)
    return current


def _last_read(state: RetryCallState) -> ServiceFacts:
    assert state.outcome is not None  # the deadline is looked at only after a read
    last: ServiceFacts = state.outcome.result()
    return last


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

    def gather(self, remote: Remote, known: Sequence[str] = (), record: str | None = None) -> ProjectFacts:
        """The project's facts (with `record`, that image record file's text too); a HostError when
        they cannot be had or a `known` service is not in it."""
        facts = gather_project(remote, self.project, self.urls, self.probe, record)
        if facts.error:
            raise HostError(facts.error)
        unknown = facts.unknown(known)
        if unknown:
            raise HostError(unknown_service(unknown, facts.services))
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


@dataclass(frozen=True)
class _Recovery:
    """One recovery of one service: where it is, how long to wait, how to re-read its facts."""

    ctx: HostContext
    project: Project
    service: str
    facts: Callable[[], ServiceFacts]
    timeout: float
    stop_timeout: int
    step_prefix: str

    def wait(self, after: ServiceFacts, first: ServiceFacts | None = None) -> tuple[ServiceFacts, float]:
        """Poll until the service started anew and is healthy, or `timeout` passed (`wait_until`):
        the last facts read either way. The poll is the cheap one (`facts.compose.poll`) when the
        project's compose label is known, else the full facts. `first`: the first poll, read
        already (by `_compose_then_poll`, in the round trip of the command waited on)."""
        start = time.monotonic()
        label = after.project_label(self.project)
        remote, probe = self.ctx.remote, min(self.timeout, 10.0)
        polled: Callable[[], ServiceFacts] = self.facts
        if label:
            polled = lambda: poll(remote, label, after, probe)  # noqa: E731
        pending = [first] if first is not None else []

        def read() -> ServiceFacts:
            return pending.pop() if pending else polled()

        current = wait_until(read, lambda now: now.restarted_since(after) and now.healthy, self.timeout)
        return current, time.monotonic() - start

    def _compose_then_poll(
        self, before: ServiceFacts, what: str, args: Sequence[str], timeout: float
    ) -> ServiceFacts | None:
        """Run compose `args` (failing as `compose_run` does), and in the same round trip, once it
        succeeded, the health wait's first poll (its facts returned) when the poll can be the cheap
        one (the project's compose label is known); else compose alone, and None. Compose's own
        output goes to stderr: the poll's sections are all of stdout."""
        label = before.project_label(self.project)
        if not label:
            compose_run(self.ctx.remote, self.project, before.variant, what, *args, timeout=timeout)
            return None
        probe = min(self.timeout, 10.0)
        compose = self.project.command(before.variant, *args)
        first_poll = poll_command(label, before.service, before.http_url, probe)
        command = f'{{ {compose}; }} >&2; rc=$?; [ "$rc" = 0 ] || exit "$rc"\n{first_poll}'
        result = must(self.ctx.remote.run(command, timeout=timeout + probe + 30), what)
        return parse_poll(before, result)

    def restart(self, before: ServiceFacts) -> tuple[bool, ServiceFacts]:
        """`compose restart`, waited on: (healthy, the facts to escalate from when not)."""
        service, stop = self.service, self.stop_timeout
        with self.ctx.step(f"{self.step_prefix}restart") as step:
            first = self._compose_then_poll(before, f"compose restart {service}",
                                            ("restart", "-t", str(stop), service), stop + 120)  # fmt: skip
            current, waited = self.wait(before, first)
            ok, why = current.verdict()
            if ok and current.restarted_since(before):
                step.done(Status.CHANGED, f"restarted {service}; healthy after {waited:.1f}s ({why})")
                return True, current
            step.done(
                Status.CHANGED,
                f"restarted {service}; still unhealthy after {waited:.0f}s ({why}); escalating to recreate",
            )
        return False, current

    def replace(self, before: ServiceFacts, action: str) -> bool:
        """`up -d` (start) or `up -d --force-recreate` (recreate, and a restart escalated), waited on."""
        service, stop = self.service, self.stop_timeout
        if action == "start":
            step_name, verb, args = "start", "started", ["up", "-d", "--no-deps", service]
        else:
            step_name, verb = "recreate", "recreated"
            args = ["up", "-d", "--force-recreate", "--no-deps", "-t", str(stop), service]
        with self.ctx.step(f"{self.step_prefix}{step_name}") as step:
            what = f"compose {' '.join(args[:-1])} {service}"
            first = self._compose_then_poll(before, what, args, stop + 300)
            current, waited = self.wait(before, first)
            note_replacement(self.ctx, self.project, service, before, current)
            ok, why = current.verdict()
            if ok and current.restarted_since(before):
                step.done(Status.CHANGED, f"{verb} {service}; healthy after {waited:.1f}s ({why})")
                return True
            logs = container_logs(self.ctx.remote, current.containers)
            tried = {"restart": "restart and recreate", "recreate": "recreate", "start": "start"}[action]
            step.done(
                Status.FAILED,
                f"{service} still unhealthy after {tried} ({waited:.0f}s): {why}"
                + (f"; last logs: {logs}" if logs else ""),
            )
            return False


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
    recovery = _Recovery(ctx, project, service, facts, timeout, stop_timeout, step_prefix)
    if action == "restart":
        healthy, before = recovery.restart(before)
        if healthy:
            return True
    return recovery.replace(before, action)


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
