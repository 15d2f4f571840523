"""deploy's apply: pull, record, pin, recreate and wait; not healthy → pin back, recreate, wait again.

Every step is its own result line. The deploy marker (`actions.deploy_pin`) is written before the
first change and removed once the service is healthy on the new image or back on the recorded one;
a run that stops in between (SIGTERM, a lost connection) leaves it for the next run to act on.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from remediations.actions import deploy_pin as pins
from remediations.actions import image_record as images
from remediations.actions import remote_write
from remediations.actions.compose_service import recover
from remediations.actions.image_history import short
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.results import Status
from remediations.facts import envfile
from remediations.facts.compose import ServiceFacts

if TYPE_CHECKING:
    from remediations.docker.deploy import Decision, Facts, Situation


def run(ctx: HostContext, facts: Facts, pull: bool, decide: Callable[[Situation], Decision]) -> None:
    """Apply a "deploy" decision, recording its own steps (`decide`: deploy's own, asked again once a
    pull showed what the image is)."""
    s, decision = facts.situation, facts.decision
    if pull:
        target_id, ref_id = _pulled(ctx, s.target, s.current[1], s.ref_id)
        s = replace(s, pull=False, target_id=target_id, ref_id=ref_id)
        decision = decide(s)
        if decision.action != "deploy":
            _after_pull(ctx, facts, decision)
            return
        facts = replace(facts, situation=s, decision=decision)
    _record(ctx, facts)
    back = f"{decision.back_ref} ({short(decision.back_id)})"
    try:
        if _forward(ctx, facts):
            return
        _roll_back(ctx, facts)
    except Exception:
        ctx.record("deploy", Status.FAILED,
                   f"the deploy stopped before it ended; {facts.marker_path} is kept: the next deploy run "
                   f"keeps {s.target} if it then runs healthy (rolled forward), else goes back to {back} "
                   "(rolled back)")  # fmt: skip
        raise


def _pulled(ctx: HostContext, target: str, ref: str, ref_id: str) -> tuple[str, str]:
    """`docker pull TARGET` (before any change): what it names now, and what the service's name does."""
    with ctx.step("pull") as step:
        result = ctx.remote.run(
            shlex.join(["docker", "pull", "-q", target]) + " 2>&1", timeout=pins.PULL_TIMEOUT
        )
        if result.exit_code != 0:
            said = " ".join(result.stdout.strip().splitlines()[-2:])[-300:] or f"exit {result.exit_code}"
            raise HostError(f"docker pull {target} failed: {said}; nothing was changed", result)
        inspect = ctx.remote.run(shlex.join(["docker", "image", "inspect", "--format", "{{.Id}}", target]),
                                 timeout=60)  # fmt: skip
        new = inspect.stdout.strip()
        if inspect.exit_code != 0 or not new.startswith("sha256:"):
            raise HostError(f"docker pull {target} succeeded but the image cannot be inspected: "
                            f"{inspect.tail()}", inspect)  # fmt: skip
        step.done(Status.OK, f"pulled {target}: {short(new)}")
    return new, new if target == ref else ref_id


def _after_pull(ctx: HostContext, facts: Facts, decision: Decision) -> None:
    """The pull showed there is nothing to deploy (or it cannot be): say so in a step of its own."""
    with ctx.step("decide") as step:
        if decision.action == "fail":
            raise HostError(decision.reason)
        if decision.action == "finish":
            drop_marker(ctx, facts.marker_path)
            step.done(Status.CHANGED, decision.reason)
            return
        step.done(Status.OK, decision.reason)


def _record(ctx: HostContext, facts: Facts) -> None:
    """Write the deploy marker (kept as it is after an interrupted deploy: it names the image to go
    back to)."""
    s, d = facts.situation, facts.decision
    with ctx.step("record") as step:
        if s.marker:
            step.done(
                Status.OK, f"{s.marker.describe()}: its record of {d.back_ref} ({short(d.back_id)}) is kept"
            )
            return
        marker = pins.Marker(d.back_id, d.back_ref, s.target, s.target_id, s.pin.variable, d.back_env,
                             images.now(), ctx.holder)  # fmt: skip
        remote_write.write(ctx.remote, remote_write.Write(facts.marker_path, marker.render().encode(),
                                                          mode="600", make_dir=True))  # fmt: skip
        step.done(Status.CHANGED, f"recorded {d.back_ref} ({short(d.back_id)}) as the image to go back to "
                  f"({facts.marker_path})")  # fmt: skip


def _pin(ctx: HostContext, facts: Facts, image_id: str, env_value: str | None, step_name: str) -> None:
    """Make compose create the service from `image_id`: the .env variable, or the name retagged."""
    s = facts.situation
    with ctx.step(step_name) as step:
        if s.pin.by_env:
            path = facts.env_path
            text = ctx.remote.run(f"cat {shlex.quote(path)} 2>/dev/null || true", timeout=30).stdout
            wanted = {s.pin.variable: env_value} if env_value is not None else {}
            new, changes = envfile.edit(text, wanted, [] if env_value is not None else [s.pin.variable])
            if changes:
                remote_write.write(ctx.remote, remote_write.Write(path, new.encode()))
            said = f"{s.pin.variable}={env_value}" if env_value is not None else f"{s.pin.variable} removed"
            step.done(Status.CHANGED if changes else Status.OK, f"{said} in {path}")
            return
        ref = s.current[1]
        result = ctx.remote.run(shlex.join(["docker", "tag", image_id, ref]), timeout=60)
        if result.exit_code != 0:
            raise HostError(f"docker tag {short(image_id)} {ref} failed: {result.tail()}", result)
        moved = f"; {', '.join(s.shared)} move to it at their next recreate" if s.shared else ""
        step.done(Status.CHANGED, f"{ref} now names {short(image_id)}{moved}")


def _recreate(ctx: HostContext, facts: Facts, before: ServiceFacts, prefix: str) -> ServiceFacts | None:
    """Recreate and wait as restart-api does: the facts once healthy, else None."""
    settings, service = facts.settings, facts.situation.service
    reread = settings.facts_of(ctx.remote, service)
    if not recover(ctx, settings.project, service, before, "recreate", reread, settings.timeout,
                   settings.stop_timeout, step_prefix=prefix):  # fmt: skip
        return None
    return reread()


def _forward(ctx: HostContext, facts: Facts) -> bool:
    """Pin the new image, recreate, wait: True when the service runs it healthy (the deploy is done)."""
    s, d = facts.situation, facts.decision
    _pin(ctx, facts, s.target_id, d.env_value, "pin")
    after = _recreate(ctx, facts, s.facts, "")
    if after is None:
        return False
    with ctx.step("verify") as step:
        running = {c.image_id for c in after.containers}
        if running != {s.target_id}:
            ids = ", ".join(sorted(map(short, running)))
            step.done(Status.FAILED, f"{s.service} is healthy but runs {ids}, not {s.target} "
                      f"({short(s.target_id)}): is the image pinned elsewhere too?")  # fmt: skip
            return False
        drop_marker(ctx, facts.marker_path)
        step.done(
            Status.CHANGED, f"deployed {s.target} ({short(s.target_id)}): {s.service} runs it and is healthy"
        )
    return True


def _roll_back(ctx: HostContext, facts: Facts) -> None:
    """The new image did not come up healthy: back to the recorded one, and fail the host."""
    s, d = facts.situation, facts.decision
    settings = facts.settings
    now = settings.facts_of(ctx.remote, s.service)()
    _pin(ctx, facts, d.back_id, d.back_env, "rollback pin")
    after = _recreate(ctx, facts, now, "rollback ")
    back = f"{d.back_ref} ({short(d.back_id)})"
    with ctx.step("verify") as step:
        running = {c.image_id for c in after.containers} if after else set()
        if after is None or running != {d.back_id}:
            why = after.verdict()[1] if after else "not healthy in time"
            step.done(Status.FAILED, f"deploy of {s.target} failed: not healthy; the rollback to {back} "
                      f"did not come up healthy either ({why}); {facts.marker_path} is kept (it names the "
                      "image to go back to)")  # fmt: skip
            return
        drop_marker(ctx, facts.marker_path)
        _forget(ctx, facts)
        step.done(Status.FAILED, f"deploy of {s.target} ({short(s.target_id)}) failed: not healthy within "
                  f"{settings.timeout:g}s; rolled back to {back}: it runs and is healthy")  # fmt: skip


def _forget(ctx: HostContext, facts: Facts) -> None:
    """The image record without the failed image: a later `rollback` must not go back to it."""
    s, d = facts.situation, facts.decision
    project = facts.settings.project.name
    records = images.read(ctx.remote, ctx.host)
    name = images.key(project, s.service)
    trimmed = pins.without_failed(records.get(name, []), d.back_id, s.target_id)
    if trimmed != records.get(name, []):
        images.write(ctx.remote, ctx.host, {**records, name: trimmed})


def drop_marker(ctx: HostContext, path: str) -> None:
    """The deploy ended (healthy on the new image, or back on the recorded one): its marker goes."""
    result = ctx.remote.run(f"rm -f {shlex.quote(path)}", timeout=30)
    if result.exit_code != 0:
        raise HostError(f"removing the deploy marker {path} failed: {result.tail()}", result)
