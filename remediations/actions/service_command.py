"""Run one command inside a compose service, gated and proven by a verify: what run-in-service and
migrate share.

facts   the service's containers (compose's configuration and labels, `docker inspect`), the env of
        its first container (its secret values are masked from here on), then the verify, run in
        the service: it decides whether the command is needed at all;
decide  nothing when the verify already holds (`alembic current` prints what `alembic heads`
        prints); else run the command (`compose exec -T` into the running container, or `compose
        run --rm --no-deps -T`);
apply   the command, its output captured on the host (the last OUTPUT_LINES lines) and masked, its
        exit status reported (not 0: the host fails with the last lines);
verify  the verify again: it must hold now.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from remediations.actions.env_files import running_envs
from remediations.actions.service_env import learn_env_secrets, shown_output
from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.remote import TIMED_OUT
from remediations.core.results import Status
from remediations.core.validate import shown
from remediations.facts import compose
from remediations.facts.compose import Project, ServiceFacts
from remediations.facts.service_run import (
    VIAS,
    Output,
    parse_outputs,
    run_command,
    same_output,
    verify_command,
)

if TYPE_CHECKING:
    from remediations.core.results import RunResult

MAX_COMMAND = 8192  # characters of one command, all its words together
VERIFY_TIMEOUT = 300.0
DEFAULT_TIMEOUT = 600.0
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is fine; a newline or an escape is not


def command_words(words: Sequence[Any], what: str) -> tuple[str, ...]:
    """An argv given on the command line, checked: words without control characters, not too long."""
    argv = tuple(str(w) for w in words)
    if not argv or not argv[0]:
        raise UsageError(f"{what}: give a command, e.g. -- alembic upgrade head")
    for index, word in enumerate(argv, 1):
        if _CONTROL.search(word):
            raise UsageError(f"{what}: word {index} {shown(word)} has a control character (a newline, an "
                             "escape); put a multi-line script in the image and run that")  # fmt: skip
    if sum(len(w) + 1 for w in argv) > MAX_COMMAND:
        raise UsageError(f"{what}: longer than {MAX_COMMAND} characters; put it in a script in the image")
    return argv


def split_command(text: Any, flag: str) -> tuple[str, ...]:
    """A command given as one flag value (`--verify 'alembic current'`): split as a shell would split
    it (quotes kept together), never run through a shell."""
    value = str(text)
    if _CONTROL.search(value):
        raise UsageError(f"{flag} {shown(value)}: one line, no control characters")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise UsageError(f"{flag} {shown(value)}: {exc} (quote it as a shell would)") from None
    return command_words(words, f"{flag} {shown(value)}")


def via_choice(value: Any, flag: str) -> str:
    text = str(value).strip().lower()
    if text not in VIAS:
        raise UsageError(f"{flag} {shown(value)}: give auto, exec or run")
    return text


def timeout_seconds(value: Any, flag: str) -> float:
    """--timeout: a duration of 1s or more in the one grammar (core/units.py)."""
    from remediations.core.units import parse_seconds

    hint = "give a duration of 1s or more, such as 10m or 1h"
    seconds = parse_seconds(value, flag, hint)
    if seconds < 1:
        raise UsageError(f"{flag} {shown(value)}: {hint}")
    return seconds


def words(argv: Sequence[str]) -> str:
    return shlex.join(argv)


@dataclass(frozen=True)
class Verify:
    """What proves the command did its work, and so whether it is needed: `command`'s output equals
    `same_as`'s, or (without `same_as`) `command` exits 0."""

    command: tuple[str, ...]
    same_as: tuple[str, ...] = ()
    name: str = ""  # the service_checks entry it came from, if any

    def commands(self) -> list[tuple[str, ...]]:
        return [self.command, *([self.same_as] if self.same_as else [])]

    def judge(self, outputs: Sequence[Output]) -> tuple[bool, str]:
        """Pure: (holds, in words). HostError when the outputs cannot tell (a compared command failed)."""
        if len(outputs) != len(self.commands()):
            raise HostError(f"the verify printed {len(outputs)} result(s) for {len(self.commands())} "
                            "command(s)")
        first = outputs[0]
        if not self.same_as:
            if first.exit_code == 0:
                return True, f"`{words(self.command)}` exits 0"
            return False, f"`{words(self.command)}` exits {first.exit_code} ({first.last(2)})"
        for argv, output in zip(self.commands(), outputs, strict=True):
            if output.exit_code != 0:
                raise HostError(f"the verify cannot tell: `{words(argv)}` exited {output.exit_code}: "
                                f"{output.last()}")  # fmt: skip
        said = [_said(o) for o in outputs]
        if same_output(*outputs):
            return True, f"`{words(self.command)}` prints what `{words(self.same_as)}` prints ({said[0]})"
        return False, (f"`{words(self.command)}` prints {said[0]} but `{words(self.same_as)}` prints "
                       f"{said[1]}")  # fmt: skip


def _said(output: Output) -> str:
    text = " | ".join(line.strip() for line in output.lines if line.strip())
    return repr(text[:200]) if text else "nothing"


def named_verify(host: Host, name: str) -> Verify:
    """The verify a host's `service_checks` var names (UsageError when it has no such entry)."""
    checks = validate.value(host, "service_checks") or {}
    if name not in checks:
        known = ", ".join(sorted(checks)) or "none"
        raise UsageError(f"host {host.name}: --verify-check {shown(name)}: no such entry in its "
                         f"service_checks var (it has {known})")  # fmt: skip
    spec = checks[name]
    same_as = spec.get("expect_same_as")
    return Verify(split_command(spec["verify"], f"service_checks.{name}.verify"),
                  split_command(same_as, f"service_checks.{name}.expect_same_as") if same_as else (),
                  name)  # fmt: skip


@dataclass
class Facts:
    project: Project
    service: ServiceFacts
    via: str  # "exec" or "run", as chosen
    container: str  # the container exec runs in ("" for run)
    verify: Verify | None
    verified: tuple[bool, str] | None  # the verify's verdict before, when there is a verify
    exit_codes: list[int] = field(default_factory=list)  # the command's, once run


def choose_via(via: str, facts: ServiceFacts) -> tuple[str, str]:
    """(exec or run, the container exec runs in): auto execs into a running container when the
    service has one and runs a one-off container otherwise."""
    running = [c for c in facts.containers if c.state == "running"]
    if via == "run" or (via == "auto" and not running):
        return "run", ""
    if not running:
        why = facts.verdict()[1]
        raise HostError(f"{facts.service} has no running container to exec into ({why}); --via run "
                        "runs the command in a one-off container instead")  # fmt: skip
    # compose exec runs in the service's first replica (--index 1): name that one
    first = next((c for c in running if c.name.endswith(("-1", "_1"))), running[0])
    return "exec", first.name


class ServiceCommand(Remediation):
    """Base of run-in-service and migrate: run `argv` in a compose service, gated by a verify."""

    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, service: str | None, argv: Sequence[str], verify: Verify | None = None,
                 via: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                 verify_check: str | None = None) -> None:  # fmt: skip
        self.service = None if service is None else validate.check_service(service)
        self.argv = tuple(argv)
        self.verify_spec = verify
        self.verify_check = verify_check
        self.via = via
        self.timeout = timeout

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)
        if not (self.service or host.get("api_service")):
            host.require("api_service")
        if self.verify_check:
            named_verify(host, self.verify_check)

    def deadline(self, host: Host) -> float:
        configured = validate.value(host, "run_deadline")
        if configured is not None:
            return float(configured)
        return 120.0 + self.timeout + 3 * VERIFY_TIMEOUT

    def _verify_for(self, host: Host) -> Verify | None:
        return named_verify(host, self.verify_check) if self.verify_check else self.verify_spec

    def gather(self, ctx: HostContext) -> Facts | None:
        service = str(self.service or ctx.var("api_service"))
        project = Project.from_host(ctx.host)
        verify = self._verify_for(ctx.host)
        with ctx.step("facts") as step:
            found = compose.gather(ctx.remote, project, service, None, 30)
            if found.error:
                step.done(Status.FAILED, found.error)
                return None
            via, container = choose_via(self.via, found)
            learn_env_secrets(ctx, running_envs(ctx.remote, {service: found}).values())
            verified = self._judge(ctx, project, found, via, verify) if verify else None
            how = f"exec in {container}" if via == "exec" else "a one-off container (compose run --rm)"
            step.done(Status.OK, f"{service}: {how}" + (f"; {verified[1]}" if verified else ""),
                      via=via, container=container, verified=verified[0] if verified else None)  # fmt: skip
        return Facts(project, found, via, container, verify, verified)

    def _judge(self, ctx: HostContext, project: Project, found: ServiceFacts, via: str,
               verify: Verify) -> tuple[bool, str]:  # fmt: skip
        command = verify_command(project, found.variant, found.service, verify.commands(), via)
        result = ctx.remote.run(command, timeout=VERIFY_TIMEOUT)
        if result.exit_code != 0:
            raise HostError(f"running the verify failed (exit {result.exit_code}): {result.tail()}", result)
        return verify.judge(parse_outputs(result))

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        service = facts.service.service
        if facts.verified is not None and facts.verified[0]:
            return Plan.nothing(f"nothing to run: {facts.verified[1]}")
        how = f"exec in {facts.container}" if facts.via == "exec" else "in a one-off container"
        because = f": {facts.verified[1]}" if facts.verified else ""
        command = run_command(facts.project, facts.service.variant, service, self.argv, facts.via)

        def apply(ctx: HostContext) -> None:
            self._run(ctx, facts, command)

        summary = f"run `{words(self.argv)}` in {service} ({how}){because}"
        return Plan.of(Change("run", summary, apply, commands=(command,), own_steps=True,
                              data={"via": facts.via, "argv": list(self.argv)}))  # fmt: skip

    def _run(self, ctx: HostContext, facts: Facts, command: str) -> None:
        service = facts.service.service
        with ctx.step("run") as step:
            result = ctx.remote.run(command, timeout=self.timeout)
            outputs = parse_outputs(result)
            if not outputs:
                why = f"running the command failed (exit {result.exit_code}): {result.tail()}"
                raise HostError(why, result)
            out = outputs[0]
            if result.exit_code == TIMED_OUT:  # the remote's own timeout: the rc never came
                out = Output(TIMED_OUT, out.lines, out.total)
            facts.exit_codes.append(out.exit_code)
            lines = shown_output(ctx, out.lines)
            said = f"`{words(self.argv)}` in {service} ({facts.via}): exit {out.exit_code}"
            if out.exit_code == TIMED_OUT:
                said = (f"`{words(self.argv)}` in {service} did not finish within {self.timeout:g}s "
                        "(--timeout); it may still be running there")  # fmt: skip
            if out.exit_code == 0:
                step.done(Status.CHANGED, f"ran {said}", exit_code=0, output=lines, cut=out.cut,
                          service=service)  # fmt: skip
            else:
                tail = " | ".join([line.strip() for line in lines if line.strip()][-3:]) or "no output"
                step.done(Status.FAILED, f"{said}: {tail}", exit_code=out.exit_code, output=lines,
                          cut=out.cut, service=service)  # fmt: skip

    @classmethod
    def report(cls, run: RunResult, as_json: bool) -> None:
        if not as_json:
            text = output_listing(run)
            if text:
                print(text)

    def verify(self, ctx: HostContext, facts: Facts, plan: Plan) -> None:
        if facts.verify is None or (facts.exit_codes and facts.exit_codes[-1] != 0):
            return  # no verify declared, or the command failed the host already
        with ctx.step("verify") as step:
            holds, said = self._judge(ctx, facts.project, facts.service, facts.via, facts.verify)
            if not holds:
                raise HostError(f"the command exited 0 but the verify does not hold: {said}")
            step.done(Status.OK, said)


def output_listing(run: RunResult) -> str:
    """The command's output on each host, `HOST SERVICE | line` (a cut said before the lines)."""
    out: list[str] = []
    for host in run.hosts:
        for step in host.steps:
            if step.step != "run" or "output" not in step.data:
                continue
            head = f"{host.host} {step.data.get('service', '')}".rstrip()
            if step.data.get("cut"):
                out.append(f"{head} -- {step.data['cut']} earlier line(s) of output cut")
            out += [f"{head} | {line}" for line in step.data["output"]]
    return "\n".join(out)
