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
from typing import ClassVar

from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.inventory import Host
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


class Rollback(Remediation):
    task: ClassVar[str] = images.ROLLBACK_TASK
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, service: str) -> None:
        self.service = check_service(service)

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    def run(self, ctx: HostContext) -> None:
        service = self.service
        settings = ServiceSettings.of(ctx.host, [service])
        project = settings.project
        facts = settings.facts_of(ctx.remote, service)

        with ctx.step("facts") as step:
            before = settings.gather(ctx.remote, [service]).facts[service]
            records, on_host = images.read_with_images(ctx.remote, ctx.host)
            history = records.get(f"{project.name}/{service}", [])
            change = images.rollback_target(history)
            present = change is not None and change.before in on_host
            action, reason, change = decide(service, before, history, present)
            if action == "fail":
                step.done(Status.FAILED, reason, record=images.state_path(ctx.host))
            else:
                step.done(Status.OK, f"{len(history)} recorded replacement(s) of {service}",
                          record=images.state_path(ctx.host))  # fmt: skip
        if action == "fail":
            return
        if action == "none" or change is None:
            ctx.record("decide", Status.OK, reason)
            return
        ref = change.ref or (before.containers[0].image_ref if before.containers else "")
        if not ref or "@" in ref:
            source = ref or "no image name"
            ctx.record("decide", Status.FAILED, f"{service} is created from {source}: cannot retag it")
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would roll back: {reason}; tag it {ref} and recreate")
            return
        with ctx.step("tag") as step:
            tag = shlex.join(["docker", "tag", change.before, ref])
            result = ctx.remote.run(tag, timeout=60)
            if result.exit_code != 0:
                raise HostError(f"docker tag {short(change.before)} {ref} failed: {result.tail()}", result)
            step.done(Status.CHANGED, f"{ref} now names {short(change.before)}")
        if not recover(ctx, project, service, before, "recreate", facts, settings.timeout,
                       settings.stop_timeout):  # fmt: skip
            return
        with ctx.step("verify") as step:
            after = facts()
            running = {c.image_id for c in after.containers}
            if running == {change.before}:
                step.done(Status.CHANGED, f"rolled back: {service} runs {short(change.before)} again "
                          f"(the image before {change.task} at {change.at}) and is healthy")  # fmt: skip
            else:
                step.done(Status.FAILED, f"{service} runs {', '.join(sorted(map(short, running)))}, "
                          f"not {short(change.before)}")  # fmt: skip
