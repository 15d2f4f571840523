"""rollback: put a service back on the image it ran just before the current one, whoever deployed it.

facts   the service's container(s) and the image they run; in a second round trip the host's image
        record, every image and container Docker has, and what `--to IMAGE` names. What runs now is
        noted in the record (a deploy by CI or by hand is noticed because the running image is not
        the one the record ends on; not in check mode or with --list);
decide  the previous image: the record's one before the current one; without a record, the only
        other image Docker ties to the service (another tag of its repository, an old container of
        the service, another service still running an image under the same name); else fail, naming
        the candidates (`--to IMAGE` picks one). Already back on it (a rollback put it there) → ok.
        The image gone from the host → fail, naming the candidates still there. Other services whose
        containers were created from the same image name would move with the retag: refused unless
        `--also-move`, and named either way. `--list` shows the candidates and changes nothing;
apply   tag that image id as the image name compose uses for the service (there is no registry to
        pull from; a later `up -d` keeps it), then `up -d --force-recreate --no-deps SERVICE` and
        wait until healthy; the replacement is recorded as a rollback (a second rollback is a no-op);
verify  the container runs the image gone back to, and is healthy.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.actions import image_history as known
from remediations.actions import image_record as images
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.actions.image_history import short
from remediations.core.args import Arg, args, one_service
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import check_service, shown
from remediations.facts.compose import Project, ServiceFacts

IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "rollback" | "fail"
    reason: str
    target: str = ""  # the image id to go back to
    candidates: tuple[known.Candidate, ...] = ()
    moves: tuple[str, ...] = ()  # other services the retag moves at their next recreate


@dataclass(frozen=True)
class Situation:
    """What decide reads: the service, what it runs, its history, what Docker knows, the arguments."""

    project: str
    service: str
    running: frozenset[str]  # image ids its containers run
    ref: str  # the image name compose creates it from
    history: list[images.Sighting]
    docker: known.DockerKnowledge
    to: str | None = None
    also_move: bool = False
    options: list[known.Candidate] = field(default_factory=list)


def situation(
    project: str,
    service: str,
    facts: ServiceFacts,
    records: images.Record,
    docker: known.DockerKnowledge,
    to: str | None = None,
    also_move: bool = False,
    at: str = "",
) -> Situation:
    """Pure (given `at`, the time to note a sighting at): the history once what runs now is noted,
    and the candidates."""
    running = frozenset(c.image_id for c in facts.containers if c.image_id)
    current, ref = images.running_image(facts.containers)
    ref = ref or next((c.image_ref for c in facts.containers if c.image_ref), "")
    history = images.noticed(records, project, {service: facts.containers}, at or images.now()).get(
        images.key(project, service), [])  # fmt: skip
    options = known.candidates(history, current, ref, docker, project, service)
    return Situation(project, service, running, ref, history, docker, to, also_move, options)


def listing(s: Situation) -> str:
    """In words: the candidates, newest first."""
    now = ", ".join(sorted(short(i) for i in s.running)) or "nothing"
    if not s.options:
        return f"{s.service} runs {now}; no other image of it is known"
    lines = [f"{n}. {c.describe()}" for n, c in enumerate(s.options, 1)]
    return f"{s.service} runs {now}; candidates, newest first: " + " ".join(lines)


def decide(s: Situation) -> Decision:
    """Pure: what to go back to, or why not."""
    service, present = s.service, tuple(c for c in s.options if c.present)
    if not s.running:
        return Decision("fail", f"no {service} container runs: nothing to roll back from")
    if len(s.running) > 1:
        ids = ", ".join(sorted(map(short, s.running)))
        return Decision("fail", f"{service}'s containers run different images ({ids}): a deploy under way? "
                        "try again when they agree")  # fmt: skip
    (current,) = s.running
    if s.to is not None:
        code, text = s.docker.to or (1, "not looked up")
        if code != 0 or not text.startswith("sha256:"):
            said = text.splitlines()[-1][:120] if text else "no answer"
            names = "; ".join(c.describe() for c in present) or "none"
            return Decision("fail", f"--to {s.to}: no such image on the host ({said}); candidates: {names}",
                            candidates=present)  # fmt: skip
        if text == current:
            return Decision("none", f"{service} already runs {short(current)} (--to {s.to})", current)
        return _retag(s, current, text, f"{short(text)} (--to {s.to})")
    last = s.history[-1] if s.history else None
    if last and last.by == images.ROLLBACK_TASK and last.image_id == current:
        when = f" at {last.seen}" if last.seen else ""
        return Decision("none", f"{service} already runs the previous image {short(current)} (rolled back "
                        f"to it{when}); --list shows the others, --to IMAGE picks one", current)  # fmt: skip
    found = known.previous(service, s.history, current, s.options, s.docker.images)
    if not found.image_id:
        return Decision("fail", found.reason, candidates=found.listed)
    return _retag(s, current, found.image_id, found.reason)


def _retag(s: Situation, current: str, target: str, what: str) -> Decision:
    """Pure: the rollback to `target`, or a refusal when the retag cannot be done or would move others."""
    if not s.ref or "@" in s.ref or s.ref.startswith("sha256:"):
        return Decision("fail", f"{s.service} is created from {s.ref or 'no image name'}: cannot retag it")
    moves = tuple(sorted({
        f"{c.project}/{c.service}" if c.service else c.name
        for c in s.docker.containers
        if c.ref == s.ref and (c.project, c.service) != (s.project, s.service) and c.image_id != target
    }))  # fmt: skip
    reason = f"{s.service} runs {short(current)}; going back to {what}"
    if moves and not s.also_move:
        return Decision("fail", f"{s.ref} is also the image name of {', '.join(moves)}: retagging it to "
                        f"{short(target)} would move them too at their next recreate; nothing was changed "
                        "(--also-move accepts that)", target, moves=moves)  # fmt: skip
    if moves:
        reason += (f"; {s.ref} is also the image name of {', '.join(moves)}: they keep what they run now and "
                   f"move to {short(target)} at their next recreate (--also-move)")  # fmt: skip
    return Decision("rollback", reason, target, moves=moves)


def required_service(value: Any, flag: str) -> str | None:
    """A compose service name; "" counts as not given (the task then says --service is required)."""
    return one_service(value, flag) if value else None


def image_name(value: Any, flag: str) -> str | None:
    """An image name or id as Docker writes them (`local/api:1.4`, `sha256:…`, `3f2a9c1b`)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not IMAGE_NAME.fullmatch(value):
        raise UsageError(f"{flag} {shown(value)}: not an image name or id (e.g. local/api:1.4, 3f2a9c1b04de)")
    return value


@dataclass(frozen=True)
class Facts:
    before: ServiceFacts
    situation: Situation
    decision: Decision
    settings: ServiceSettings


class Rollback(Remediation):
    """Put a service back on the image it ran just before the current one, whoever deployed it.

    The previous image comes from the host's image record (every run of this tool notes what each
    service runs) or, without one, from what Docker knows. --list shows the candidates; --to IMAGE
    picks one. Other services created from the same image name are named, and moved only with
    --also-move.
    """

    task: ClassVar[str] = images.ROLLBACK_TASK
    params = args(
        Arg("service", "the compose service to put back on its previous image", parse=required_service),
        Arg("to", "go back to this image (a name or id present on the host) instead of the previous one",
            parse=image_name, example="local/api:1.4"),
        Arg("list", kind="flag", help="show the images the service could go back to, and change nothing"),
        Arg("also_move", kind="flag",
            help="retag even when other services use the same image name (they move at their next recreate)"),
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, service: str, to: str | None = None, list_only: bool = False,
                 also_move: bool = False) -> None:  # fmt: skip
        self.service = check_service(service)
        self.to = image_name(to, "--to")
        self.list = list_only
        self.also_move = also_move

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Rollback:
        if not values.get("service"):
            raise UsageError("--service is required: the compose service to roll back")
        if values.get("list") and values.get("to"):
            raise UsageError("--list and --to: --list only shows the candidates; give one of them")
        return cls(
            values["service"], values.get("to"), bool(values.get("list")), bool(values.get("also_move"))
        )

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    def gather(self, ctx: HostContext) -> Facts | None:
        service = self.service
        settings = ServiceSettings.of(ctx.host, [service])
        project = settings.project.name
        with ctx.step("facts") as step:
            before = settings.gather(ctx.remote, [service]).facts[service]
            docker = known.gather(ctx.remote, ctx.host, self.to)
            s = situation(project, service, before, docker.records, docker, self.to, self.also_move)
            noted = s.history != docker.records.get(images.key(project, service), [])
            if noted and not (ctx.options.check or self.list):
                images.write(
                    ctx.remote, ctx.host, {**docker.records, images.key(project, service): s.history}
                )
            decision = decide(s)
            recorded = f"{len(s.history)} image(s) in the record of {service}"
            if noted:
                recorded += f" (now noted: it runs {short(s.history[-1].image_id)}, set outside this tool)"
            if self.list:
                step.done(Status.OK, recorded, record=images.state_path(ctx.host))
            elif decision.action == "fail":
                step.done(
                    Status.FAILED,
                    decision.reason,
                    record=images.state_path(ctx.host),
                    candidates=[c.to_dict() for c in decision.candidates],
                    moves=list(decision.moves),
                )
                return None
            else:
                step.done(Status.OK, recorded, record=images.state_path(ctx.host))
        return Facts(before, s, decision, settings)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        if self.list:
            return Plan.nothing(listing(facts.situation), step="list",
                                candidates=[c.to_dict() for c in facts.situation.options])  # fmt: skip
        decision = facts.decision
        if decision.action == "none":
            return Plan.nothing(decision.reason)
        ref = facts.situation.ref
        summary = f"roll back: {decision.reason}; tag it {ref} and recreate {self.service}"
        tag = shlex.join(["docker", "tag", decision.target, ref])
        return Plan.of(Change("rollback", summary, lambda ctx: self._apply(ctx, facts), commands=(tag,),
                              own_steps=True, data={"moves": list(decision.moves)}),
                       check_step="decide")  # fmt: skip

    def _apply(self, ctx: HostContext, facts: Facts) -> None:
        """Tag the image gone back to, recreate, and check the container runs it (own steps)."""
        service, target, settings, ref = (
            self.service,
            facts.decision.target,
            facts.settings,
            facts.situation.ref,
        )
        with ctx.step("tag") as step:
            result = ctx.remote.run(shlex.join(["docker", "tag", target, ref]), timeout=60)
            if result.exit_code != 0:
                raise HostError(f"docker tag {short(target)} {ref} failed: {result.tail()}", result)
            moved = f"; {', '.join(facts.decision.moves)} move to it at their next recreate" \
                if facts.decision.moves else ""  # fmt: skip
            step.done(
                Status.CHANGED, f"{ref} now names {short(target)}{moved}", moves=list(facts.decision.moves)
            )
        reread = settings.facts_of(ctx.remote, service)
        if not recover(ctx, settings.project, service, facts.before, "recreate", reread, settings.timeout,
                       settings.stop_timeout):  # fmt: skip
            return
        with ctx.step("verify") as step:
            running = {c.image_id for c in reread().containers}
            if running == {target}:
                step.done(Status.CHANGED, f"rolled back: {service} runs {short(target)} and is healthy")
            else:
                step.done(Status.FAILED, f"{service} runs {', '.join(sorted(map(short, running)))}, "
                          f"not {short(target)}")  # fmt: skip
