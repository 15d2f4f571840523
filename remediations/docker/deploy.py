"""deploy: put a compose service on a new image, behind a health gate, and go back if it is not healthy.

facts   the service's containers and health (as restart-api reads them), the compose files' `image:`
        for it (how it is pinned: `actions.deploy_pin`), the image record, what the new image name
        is on the host (`docker image inspect`), the marker of an interrupted deploy, the `.env`
        variable when the image is pinned by one;
decide  nothing when the service already runs the new image, pinned, and is healthy; else fail
        when it cannot be done (the image not on the host without --pull, a name the compose file
        cannot take, other services that a retag would move, without --also-move); else deploy;
        after an interrupted deploy that had got the new image running and healthy: keep it
        (rolled forward);
apply   [`docker pull`], note the image running now (the image record and the deploy marker),
        pin the new image (`.env` variable or `docker tag`), `compose up -d --force-recreate
        --no-deps SERVICE` and the same health wait as restart-api (`actions.compose_service`);
        not healthy: pin the recorded image back, recreate, wait again;
verify  the container runs the new image and is healthy; or, after a rollback, the recorded one
        (the host fails either way: the deploy did not take).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import deploy_pin as pins
from remediations.actions import image_history as known
from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, service_deadline
from remediations.actions.env_files import compose_services, compose_texts
from remediations.actions.image_history import short
from remediations.core import validate
from remediations.core.args import SERVICE, Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.docker import deploy_apply
from remediations.facts import envfile
from remediations.facts.compose import Project, ServiceFacts, record_path
from remediations.facts.sections import MARK, sections_by_name

IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")


def image_arg(value: Any, flag: str) -> str | None:
    """An image name or tag as Docker writes them (`local/api:2.4`, `2.4`, `sha256:…`)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not IMAGE_NAME.fullmatch(value) or ".." in value:
        raise UsageError(f"{flag} {validate.shown(value)}: not an image name or tag (e.g. local/api:2.4, "
                         "or 2.4 for the service's own repository)")  # fmt: skip
    return value


@dataclass(frozen=True)
class Situation:
    """What decide reads (pure data)."""

    service: str
    facts: ServiceFacts
    pin: pins.Pin
    target: str  # the image name to deploy
    target_id: str  # what it names on the host, "" when it is not there
    looked_up: str  # Docker's words when it is not
    ref_id: str  # what the name the service runs under names now
    env_value: str | None  # pinned by a variable: its value in .env (None: not set there)
    marker: pins.Marker | None = None
    marker_error: str = ""
    shared: tuple[str, ...] = ()  # other services created from the same image name
    pull: bool = False
    also_move: bool = False

    @property
    def current(self) -> tuple[str, str]:
        return images.running_image(self.facts.containers)


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "deploy" | "finish" | "fail"
    reason: str
    back_id: str = ""  # the image to go back to
    back_ref: str = ""
    back_env: str | None = None
    env_value: str | None = None  # the variable's value to set (env pin)
    retag: bool = False  # point the service's image name at the new image


def decide(s: Situation) -> Decision:
    """Pure: deploy, nothing (and why), or fail (and why)."""
    service, facts = s.service, s.facts
    if facts.error:
        return Decision("fail", f"cannot deploy: {facts.error}")
    if not facts.containers:
        return Decision("fail", f"no {service} container exists: deploy replaces a running service "
                        "(start it first: restart-api, ensure-healthy)")  # fmt: skip
    current, ref = s.current
    if not current:
        ids = ", ".join(sorted({short(c.image_id) for c in facts.containers}))
        return Decision("fail", f"{service}'s containers run different images ({ids}): a deploy under way? "
                        "try again when they agree")  # fmt: skip
    if s.marker_error:
        return Decision("fail", s.marker_error)
    if s.pin.error:
        return Decision("fail", f"{service}: {s.pin.error}")
    value = s.pin.value_for(s.target) if s.pin.by_env else None
    if s.pin.by_env and value is None:
        return Decision("fail", f"{s.target} does not fit the compose file's image {s.pin.template!r} "
                        f"({service} is pinned by ${s.pin.variable}): give a tag, or a name of that "
                        "form")  # fmt: skip
    retag = not s.pin.by_env and s.target != ref
    if retag and ("@" in ref or ref.startswith("sha256:")):
        return Decision(
            "fail", f"{service} is created from {ref}: a digest cannot be pointed at another image"
        )
    if not s.target_id and not s.pull:
        return Decision("fail", f"{s.target} is not on the host ({s.looked_up or 'no such image'}): build or "
                        "load it there, or give --pull; nothing was changed")  # fmt: skip
    healthy, why = facts.verdict()
    pinned = s.env_value == value and ref == s.target if s.pin.by_env else s.ref_id == s.target_id
    if not s.pull and current == s.target_id and pinned and healthy:
        if s.marker:
            return Decision("finish", f"{s.marker.describe()} had got {service} running {s.target} "
                            f"({short(current)}) and it is healthy ({why}): kept, rolled "
                            "forward")  # fmt: skip
        return Decision(
            "none", f"{service} already runs {s.target} ({short(current)}) and is healthy ({why})"
        )
    if not s.pull and current == s.target_id and pinned and not s.marker:
        return Decision("fail", f"{service} already runs {s.target} ({short(current)}) but is not healthy "
                        f"({why}): a deploy would change nothing; restart-api or rollback")  # fmt: skip
    if retag and s.shared and not s.also_move:
        return Decision("fail", f"{ref} is also the image name of {', '.join(s.shared)}: pointing it at "
                        f"{s.target} would move them too at their next recreate; nothing was changed "
                        "(--also-move accepts that)")  # fmt: skip
    back_id, back_ref, back_env = current, ref, s.env_value
    if s.marker:
        back_id, back_ref, back_env = s.marker.from_id, s.marker.from_ref, s.marker.env_before
    reason = f"{service} runs {ref} ({short(current)}, {'healthy' if healthy else 'unhealthy'})"
    if s.marker:
        reason += f"; {s.marker.describe()} found: on failure back to {short(back_id)}, the image it recorded"
    return Decision("deploy", reason, back_id, back_ref, back_env, value, retag)


@dataclass(frozen=True)
class Facts:
    situation: Situation
    decision: Decision
    settings: ServiceSettings
    marker_path: str
    env_path: str
    env_text: str


class Deploy(Remediation):
    """Deploy a compose service's new image behind a health gate; go back to the recorded one if not healthy.

    --image names the image (local/api:2.4, or a tag alone: 2.4 in the service's own repository);
    without it, the image the compose file names (with --pull: pulled anew, as `compose pull` does).
    The image must be on the host (built or loaded), or pulled with --pull. How it is pinned follows
    the compose file, which is never edited: `image: name:${VAR}` sets VAR in the project's .env; a
    fixed name is pointed at the new image (`docker tag`). The service is recreated and waited on as
    restart-api does; not healthy in time, it goes back to the image it ran before (recorded on the
    host first) and the host fails. Hosts go one at a time (--serial N: N at a time); the first
    failure stops the rollout and the remaining hosts are skipped.
    """

    task: ClassVar[str] = "deploy"
    params = args(
        replace(SERVICE, help="compose service to deploy (default: the host's api_service var)"),
        Arg("image", "the image to deploy: a name (local/api:2.4) or a tag of the service's repository (2.4)",
            parse=image_arg, example="local/api:2.4"),
        Arg("pull", kind="flag", help="docker pull the image first (else it must be on the host already)"),
        Arg("also_move", kind="flag",
            help="retag even when other services use the same image name (they move at their next recreate)"),
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)
    default_serial: ClassVar[int | None] = 1

    def __init__(self, service: str | None = None, image: str | None = None, pull: bool = False,
                 also_move: bool = False) -> None:  # fmt: skip
        self.service = None if service is None else validate.check_service(service)
        self.image = image_arg(image, "--image")
        self.pull = pull
        self.also_move = also_move
        self._order: list[str] = []

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)
        if not (self.service or host.get("api_service")):
            host.require("api_service")
        if host.name not in self._order:
            self._order.append(host.name)  # the engine validates every host, in rollout order

    def deadline(self, host: Host) -> float:
        return service_deadline(host) + (pins.PULL_TIMEOUT if self.pull else 0.0)

    def gather(self, ctx: HostContext) -> Facts | None:
        service = str(self.service or ctx.var("api_service"))
        settings = ServiceSettings.of(ctx.host, [service])
        with ctx.step("facts") as step:
            project = settings.gather(ctx.remote, [service], record_path(ctx.host))
            before = project.facts[service]
            noted = images.observe_quietly(
                ctx.remote,
                ctx.host,
                settings.project.name,
                {service: before.containers},
                ctx.options.check,
                project.record,
            )
            s, paths = self._situation(ctx, settings, service, before)
            decision = decide(s)
            now, ref = s.current
            data: dict[str, Any] = {
                "image_now": {"ref": ref, "id": now}, "image_to_be": {"ref": s.target, "id": s.target_id},
                "pin": f"${s.pin.variable} in {paths[1]}" if s.pin.by_env else f"docker tag ({ref})",
                **({"image_record": noted} if noted else {}),
            }  # fmt: skip
            if decision.action == "fail":
                step.done(Status.FAILED, decision.reason, **data)
                return None
            found = f"; {s.marker.describe()} found" if s.marker else ""
            new = short(s.target_id) if s.target_id else "not on the host yet"
            step.done(Status.OK, f"{service} runs {ref or '?'} ({short(now)}); to be {s.target} "
                      f"({new}){found}", **data)  # fmt: skip
        return Facts(s, decision, settings, paths[0], paths[1], paths[2])

    def _situation(
        self, ctx: HostContext, settings: ServiceSettings, service: str, before: ServiceFacts
    ) -> tuple[Situation, tuple[str, str, str]]:
        """The rest of the facts (the compose files' image, Docker's view of the names, the marker,
        the .env variable) in two more round trips."""
        template = pins.image_template(compose_services(compose_texts(ctx.remote, settings.project)), service)
        _, ref = images.running_image(before.containers)
        pin = pins.pin_of(template or ref)
        target = pins.target_ref(self.image, ref)
        marker = pins.marker_path(ctx.host, settings.project.name, service)
        env_path = posixpath.join(settings.project.directory, ".env")
        q = shlex.quote
        lines = [
            f"echo '{MARK}marker'; cat {q(marker)} 2>/dev/null",
            f"echo '{MARK}refid'; docker image inspect --format '{{{{.Id}}}}' {q(ref or 'none')} 2>/dev/null",
        ]
        if pin.by_env:
            lines.append(f"echo '{MARK}dotenv'; cat {q(env_path)} 2>/dev/null")
        result = ctx.remote.run(known.facts_command(ctx.host, target) + "\n" + "\n".join(lines), timeout=60)
        if result.exit_code != 0:
            raise HostError(f"reading Docker's images and the deploy marker failed: {result.tail()}", result)
        docker, found = known.parse_facts(result.stdout), sections_by_name(result.stdout)
        code, said = docker.to or (1, "")
        target_id = said if code == 0 and said.startswith("sha256:") else ""
        env_text = found.get("dotenv", ("", ""))[1]
        env_value = envfile.parse(env_text).get(pin.variable) if pin.by_env else None
        parsed, marker_error = pins.parse_marker(found.get("marker", ("", ""))[1])
        if marker_error:
            marker_error += f": check what {service} runs, then remove {marker}"
        shared = tuple(sorted({
            f"{c.project}/{c.service}" if c.service else c.name for c in docker.containers
            if c.ref == ref and (c.project, c.service) != (settings.project.name, service)
        }))  # fmt: skip
        looked_up = "" if target_id or not said else said.splitlines()[-1]
        ref_id = found.get("refid", ("", ""))[1].strip()
        s = Situation(service, before, pin, target, target_id, looked_up, ref_id, env_value, parsed,
                      marker_error, shared, self.pull, self.also_move)  # fmt: skip
        return s, (marker, env_path, env_text)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        decision, s = facts.decision, facts.situation
        if decision.action == "none":
            return Plan.nothing(decision.reason)
        if decision.action == "finish":
            summary = f"remove {facts.marker_path}: {decision.reason}"
            return Plan.of(Change("recover", summary, lambda c: self._finish(c, facts)))
        if s.pin.by_env:
            pin = f"set ${s.pin.variable}={decision.env_value} in {facts.env_path}"
        else:
            pin = (
                f"docker tag {s.target} {s.current[1]}" if decision.retag else f"{s.target} is compose's name"
            )
        new = short(s.target_id) if s.target_id else "pulled first"
        summary = (f"deploy {s.target} ({new}): {decision.reason}; {'pull it, ' if self.pull else ''}{pin}, "
                   f"recreate {s.service}, wait until healthy; not healthy: back to {short(decision.back_id)}"
                   f"{self._position(ctx)}")  # fmt: skip
        commands = ([shlex.join(["docker", "pull", s.target])] if self.pull else []) + (
            [shlex.join(["docker", "tag", s.target, s.current[1]])] if decision.retag else [])  # fmt: skip
        return Plan.of(Change("deploy", summary, lambda c: self._apply(c, facts), commands=tuple(commands),
                              own_steps=True, data={"back_to": decision.back_id}),
                       check_step="decide")  # fmt: skip

    def _position(self, ctx: HostContext) -> str:
        if ctx.host.name not in self._order or len(self._order) < 2:
            return ""
        index, serial = self._order.index(ctx.host.name), ctx.options.serial or self.default_serial or 1
        batches = -(-len(self._order) // serial)
        return f"; host {index + 1} of {len(self._order)}, batch {index // serial + 1} of {batches}"

    def _finish(self, ctx: HostContext, facts: Facts) -> str:
        deploy_apply.drop_marker(ctx, facts.marker_path)
        return facts.decision.reason

    def _apply(self, ctx: HostContext, facts: Facts) -> None:
        deploy_apply.run(ctx, facts, self.pull, decide)
