"""rollback: put a service back on the image it ran before the last change a remediation made.

facts   the service's container(s) and the image they run; the host's image record (`images`); whether
        the image to go back to is still on the host;
decide  no record, or no image change recorded → fail: nothing to go back to; already on that
        image → ok; the image is gone (pruned) → fail;
apply   tag that image id as the image name compose uses for the service (there is no registry to
        pull from; a later `up -d` keeps it), then `up -d --force-recreate --no-deps SERVICE` and
        wait until healthy; the replacement is recorded as a rollback (a second rollback is a no-op);
verify  the container runs the image gone back to, and is healthy.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.core.args import Arg, args, one_service
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import check_service
from remediations.facts.compose import Project, ServiceFacts


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def decide(
    service: str, facts: ServiceFacts, history: list[images.Replacement], target_present: bool
) -> tuple[str, str, images.Replacement | None]:
    """Pure: ("none" | "rollback" | "fail", reason, the change being undone)."""
    change = images.rollback_target(history)
    if change is None:
        return "fail", (
            f"no previous image known for {service}: no remediation has replaced it with a different "
            "image since records began"
        ), None
    current = {c.image_id for c in facts.containers}
    when = f"before {change.task} at {change.at}"
    if current == {change.before}:
        return "none", f"{service} already runs {short(change.before)} (the image {when})", change
    if not target_present:
        return "fail", f"image {short(change.before)} ({when}) is no longer on the host", change
    now = ", ".join(sorted(short(i) for i in current)) or "nothing"
    return "rollback", f"{service} runs {now}; going back to {short(change.before)} ({when})", change


def required_service(value: Any, flag: str) -> str | None:
    """A compose service name; "" counts as not given (the task then says --service is required)."""
    return one_service(value, flag) if value else None


@dataclass(frozen=True)
class Facts:
    before: ServiceFacts
    history: list[images.Replacement]
    action: str  # "none" | "rollback"
    reason: str
    change: images.Replacement
    ref: str  # the image name to tag the image gone back to as
    settings: ServiceSettings


class Rollback(Remediation):
    """Put a service back on the image it ran before the last change a remediation made."""

    task: ClassVar[str] = images.ROLLBACK_TASK
    params = args(Arg("service", "the compose service to put back on its previous image",
                      parse=required_service))  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, service: str) -> None:
        self.service = check_service(service)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Rollback:
        if not values.get("service"):
            raise UsageError("--service is required: the compose service to roll back")
        return cls(values["service"])

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    def gather(self, ctx: HostContext) -> Facts | None:
        service = self.service
        settings = ServiceSettings.of(ctx.host, [service])
        with ctx.step("facts") as step:
            before = settings.gather(ctx.remote, [service]).facts[service]
            records, on_host = images.read_with_images(ctx.remote, ctx.host)
            history = records.get(f"{settings.project.name}/{service}", [])
            change = images.rollback_target(history)
            present = change is not None and change.before in on_host
            action, reason, change = decide(service, before, history, present)
            if action == "fail":
                step.done(Status.FAILED, reason, record=images.state_path(ctx.host))
            else:
                step.done(Status.OK, f"{len(history)} recorded replacement(s) of {service}",
                          record=images.state_path(ctx.host))  # fmt: skip
        if action == "fail" or change is None:
            return None
        ref = change.ref or (before.containers[0].image_ref if before.containers else "")
        if action == "rollback" and (not ref or "@" in ref):
            source = ref or "no image name"
            ctx.record("decide", Status.FAILED, f"{service} is created from {source}: cannot retag it")
            return None
        return Facts(before, history, action, reason, change, ref, settings)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        if facts.action == "none":
            return Plan.nothing(facts.reason)
        summary = f"roll back: {facts.reason}; tag it {facts.ref} and recreate"
        tag = shlex.join(["docker", "tag", facts.change.before, facts.ref])
        return Plan.of(Change("rollback", summary, lambda ctx: self._apply(ctx, facts), commands=(tag,),
                              own_steps=True), check_step="decide")  # fmt: skip

    def _apply(self, ctx: HostContext, facts: Facts) -> None:
        """Tag the image gone back to, recreate, and check the container runs it (own steps)."""
        service, change, settings = self.service, facts.change, facts.settings
        with ctx.step("tag") as step:
            tag = shlex.join(["docker", "tag", change.before, facts.ref])
            result = ctx.remote.run(tag, timeout=60)
            if result.exit_code != 0:
                what = f"docker tag {short(change.before)} {facts.ref}"
                raise HostError(f"{what} failed: {result.tail()}", result)
            step.done(Status.CHANGED, f"{facts.ref} now names {short(change.before)}")
        reread = settings.facts_of(ctx.remote, service)
        if not recover(ctx, settings.project, service, facts.before, "recreate", reread, settings.timeout,
                       settings.stop_timeout):  # fmt: skip
            return
        with ctx.step("verify") as step:
            running = {c.image_id for c in reread().containers}
            if running == {change.before}:
                step.done(Status.CHANGED, f"rolled back: {service} runs {short(change.before)} again "
                          f"(the image before {change.task} at {change.at}) and is healthy")  # fmt: skip
            else:
                step.done(Status.FAILED, f"{service} runs {', '.join(sorted(map(short, running)))}, "
                          f"not {short(change.before)}")  # fmt: skip
