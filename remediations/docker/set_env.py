"""set-env: set or unset variables in a compose service's env file, then recreate what reads it.

facts   the project's services and the service's containers, its compose files, the env file that
        sets the names (the last one it reads for new names), and the env its container runs with;
decide  nothing when the file has it and the service runs with it, healthy; else write (when the
        file differs) and recreate (`decide_action`, pure);
apply   the new file with a dated backup (the newest env_backups_keep kept), a recreate waited on
        until healthy, then a check that the container runs with the values; unhealthy: the backup
        is restored and the service recreated again.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions import remote_write
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.actions.env_files import (
    EnvFileFacts,
    backup_name,
    compose_texts,
    env_file_of,
    env_file_write,
    read_files,
    services_reading,
    values_from_stdin,
)
from remediations.core import validate
from remediations.core.args import Arg, args, one_service
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.remote import must
from remediations.core.results import Status
from remediations.facts import envfile
from remediations.facts.compose import Project, ServiceFacts


def decide_action(path: str, service: str, summary: str, changed: bool, stale: Sequence[str],
                  healthy: bool, why: str, sharing: Sequence[str]) -> str | None:  # fmt: skip
    """Pure: what set-env is to do, said as the plan ("… ; recreate SERVICE"), or None: nothing."""
    if not changed and not stale and healthy:
        return None
    if not changed and not stale:  # e.g. a run cut off mid-recreate left a container created, not started
        plan = f"{path} already has it, but {service} is not healthy ({why}): recreate {service}"
    elif not changed:
        plan = f"{path} already has it, but {service} still runs the old value(s) of " \
               f"{', '.join(sorted(set(stale)))}: recreate {service}"  # fmt: skip
    else:
        plan = f"{summary} in {path}; recreate {service}"
    return plan + sharing_note(sharing, changed)


def sharing_note(sharing: Sequence[str], changed: bool) -> str:
    """Pure: the other services reading the file keep the old values until they are recreated
    (said in the plan and again when it is done)."""
    if not (sharing and changed):
        return ""
    return f" ({', '.join(sharing)} also read(s) this file and keep the old values until recreated)"


def names_only(items: Sequence[str]) -> list[str]:
    """What the audit keeps of --set: NAME=…, never a value (bad input and good runs alike)."""
    return [item.split("=", 1)[0] + "=…" for item in items]


def as_list(value: Any, flag: str) -> list[str]:
    return list(value)


def given_service(value: Any, flag: str) -> str | None:
    """A compose service name; "" counts as not given (the task then says --service is required)."""
    return one_service(value, flag) if value else None


@dataclass(frozen=True)
class Facts:
    settings: ServiceSettings
    before: ServiceFacts
    target: EnvFileFacts  # the env file edited
    new_text: str
    changes: list[envfile.Change]
    stale: list[str]  # names the container runs with another value than set
    sharing: list[str]  # other services reading the file
    secret_names: list[str]


class SetEnv(Remediation):
    """Set or unset variables in the service's env file (backup kept), recreate it, wait until healthy.

    Example: inv set-env --host prod --service api --set MAINTENANCE_MODE=1
    Secrets: printf 'API_TOKEN=%s\\n' "$TOKEN" | inv set-env --host prod --service api --values-from-stdin
    Already set: ok, nothing recreated. Unhealthy afterwards: the backup is restored. The newest
    env_backups_keep (default 10) backups of the file are kept, older ones deleted.
    """

    task: ClassVar[str] = "set-env"
    params = args(
        Arg("service", "the compose service whose env file is edited and which is recreated",
            parse=given_service),
        Arg("set", "NAME=VALUE to set (repeatable; visible in ps: use --values-from-stdin for secrets)",
            kind="list", default=(), parse=as_list, audit=names_only),
        Arg("unset", "NAME to remove (repeatable)", kind="list", default=(), parse=as_list),
        Arg("values_from_stdin", kind="flag", default=False,
            help="also set the NAME=VALUE lines read from stdin (values taken literally, never shown)"),
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(self, service: str, assignments: Sequence[str] = (), unset: Sequence[str] = (),
                 hidden: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """`hidden`: values given out of band (stdin); never shown, as if their names looked secret."""
        self.service = validate.check_service(service)
        hidden = dict(hidden or {})
        given = {item.partition("=")[0] for item in assignments}
        twice = sorted(given & set(hidden))
        if twice:
            raise UsageError(f"{twice[0]} is given both by --set and on stdin; give it once")
        self.values, self.unset = envfile.parse_assignments(
            [*assignments, *(f"{k}={v}" for k, v in hidden.items())], unset
        )
        self._hidden = sorted(hidden)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SetEnv:
        if not values["service"]:
            raise UsageError("--service is required: the compose service whose env to change")
        hidden = values_from_stdin() if values["values_from_stdin"] else None
        return cls(values["service"], values["set"], values["unset"], hidden)

    def arguments(self) -> dict[str, Any]:
        """As the declaration audits them (for a run not started from the CLI): names, never values."""
        return {"service": self.service, "set": [f"{k}=…" for k in self.values if k not in self._hidden],
                "unset": list(self.unset), "values_from_stdin": bool(self._hidden)}  # fmt: skip

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    # ---------------------------------------------------------------------------------- gather

    def gather(self, ctx: HostContext) -> Facts:
        service = self.service
        settings = ServiceSettings.of(ctx.host, [service])
        secret_names = [*validate.value(ctx.host, "secret_vars"), *self._hidden]
        self._mask(ctx, self.values, secret_names)
        with ctx.step("facts") as step:
            before = settings.gather(ctx.remote, [service]).facts[service]
            compose_texts, paths = self._env_paths(ctx, settings.project)
            files, running = read_files(ctx.remote, paths, before)
            # The file that sets a name wins over earlier ones; new names go to the last file.
            names = {*self.values, *self.unset}
            target = next((f for f in reversed(files) if set(envfile.parse(f.text)) & names), files[-1])
            self._mask(ctx, envfile.parse(target.text), secret_names)
            new_text, changes = envfile.edit(target.text, self.values, self.unset)
            stale = [n for n, v in self.values.items() if before.containers and running.get(n) != v]
            readers = services_reading(target.path, compose_texts, settings.project.directory)
            sharing = [s for s in readers if s != service]
            step.done(Status.OK, f"{service} reads {target.path}"
                      + (f" (also read by {', '.join(sharing)})" if sharing else ""),
                      env_file=target.path, services_sharing=sharing)  # fmt: skip
        return Facts(settings, before, target, new_text, changes, stale, sharing, secret_names)

    @staticmethod
    def _mask(ctx: HostContext, values: Mapping[str, str], secret_names: Sequence[str]) -> None:
        for name, value in values.items():
            if ctx.redactor.is_secret(name) or name in secret_names:
                ctx.redactor.add_value(value)

    def _env_paths(self, ctx: HostContext, project: Project) -> tuple[list[str], list[str]]:
        """The compose files' texts and the env files the service reads (HostError: none)."""
        texts = compose_texts(ctx.remote, project)
        explicit = (ctx.var("env_files") or {}).get(self.service)
        if explicit:
            return texts, [posixpath.join(project.directory, str(explicit))]
        paths = env_file_of(self.service, texts, project.directory)
        if not paths:
            raise HostError(
                f"{self.service} reads no env_file: add `env_file: .env` to it in the compose file, "
                "or set the env_files var"
            )
        return texts, paths

    # ---------------------------------------------------------------------------------- decide

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        target, service = facts.target, self.service
        summary = envfile.describe(facts.changes, facts.secret_names)
        healthy, why = facts.before.verdict()
        plan = decide_action(target.path, service, summary, bool(facts.changes), facts.stale, healthy, why,
                             facts.sharing)  # fmt: skip
        if plan is None:
            return Plan.nothing(f"{target.path} already has it and {service} runs with it")
        diff = envfile.masked_diff(target.path, target.text, facts.new_text, facts.secret_names) \
            if facts.changes else ""  # fmt: skip
        change = Change("set-env", f"set {plan}", lambda ctx: self._apply(ctx, facts, summary, diff),
                        diff=diff, own_steps=True)  # fmt: skip
        return Plan.of(change, check_step="decide")

    # ----------------------------------------------------------------------------------- apply

    def _apply(self, ctx: HostContext, facts: Facts, summary: str, diff: str) -> None:
        """write (when the file changes) → recreate → verify, or restore the backup (own steps)."""
        s, service = facts.settings, self.service
        reread = s.facts_of(ctx.remote, service)
        backup = self._write(ctx, facts, summary, diff) if facts.changes else None
        if recover(ctx, s.project, service, facts.before, "recreate", reread, s.timeout, s.stop_timeout):
            self._verify(ctx, facts, summary, backup, reread())
        elif backup is not None:  # else nothing of ours to undo: the recreate step says why it failed
            self._restore(ctx, facts, backup)

    def _write(self, ctx: HostContext, facts: Facts, summary: str, diff: str) -> str | None:
        target = facts.target
        with ctx.step("write") as step:
            backup = backup_name(target.path) if target.exists else None
            owner, mode = (target.owner, target.mode) if target.exists else ("", "600")
            keep = int(validate.value(ctx.host, "env_backups_keep"))
            job = env_file_write(target.path, facts.new_text, owner, mode, backup, keep=keep)
            remote_write.write(ctx.remote, job)
            step.done(Status.CHANGED, f"{summary} in {target.path}"
                      + (f"; backup {backup}" if backup else " (new file, mode 0600)"),
                      diff=diff, backup=backup)  # fmt: skip
        return backup

    def _verify(self, ctx: HostContext, facts: Facts, summary: str, backup: str | None,
                after: ServiceFacts) -> None:  # fmt: skip
        service, path = self.service, facts.target.path
        now = read_files(ctx.remote, [], after)[1]
        wrong = [n for n, v in self.values.items() if now.get(n) != v]
        with ctx.step("verify") as step:
            if wrong:
                step.done(Status.FAILED, f"{service} was recreated but does not run with "
                          f"{', '.join(wrong)} as set (is it overridden by `environment:`?)")  # fmt: skip
            else:
                done = f"{summary} in {path}" if facts.changes else f"{path} unchanged"
                kept = f" (backup {backup})" if backup else ""
                step.done(Status.CHANGED, f"{done}{kept}; {service} recreated, healthy, runs with it"
                          + sharing_note(facts.sharing, bool(facts.changes)),
                          services_sharing=facts.sharing)  # fmt: skip

    def _restore(self, ctx: HostContext, facts: Facts, backup: str) -> None:
        s, service, path = facts.settings, self.service, facts.target.path
        reread = s.facts_of(ctx.remote, service)
        with ctx.step("rollback") as step:
            restore = f"cp -p {shlex.quote(backup)} {shlex.quote(path)}"
            must(ctx.remote.run(restore, timeout=30), f"restoring {path}")
            back = recover(ctx, s.project, service, reread(), "recreate", reread, s.timeout, s.stop_timeout)
            step.done(
                Status.FAILED,
                f"{service} was unhealthy with the change; {path} restored from {backup} and "
                + ("the service is healthy again" if back else "the service is STILL unhealthy"),
            )
