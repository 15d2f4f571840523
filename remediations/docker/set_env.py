"""set-env: set or unset variables in a compose service's env file, then recreate what reads it."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from remediations.actions import remote_write
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.actions.env_files import (
    backup_name,
    env_file_of,
    env_file_write,
    read_files,
    services_reading,
)
from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.remote import must
from remediations.core.results import Status
from remediations.facts import envfile
from remediations.facts.compose import Project
from remediations.reporting.redact import MASK


class SetEnv(Remediation):
    task: ClassVar[str] = "set-env"
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

    def arguments(self) -> dict[str, Any]:
        # Values are shown as NAME=VALUE so the redactor masks the secret-looking ones.
        shown = [f"{k}={MASK if k in self._hidden else v}" for k, v in self.values.items()]
        return {"service": self.service, "set": shown, "unset": list(self.unset),
                "values_from_stdin": self._hidden}  # fmt: skip

    def validate(self, host: Host) -> None:
        super().validate(host)
        Project.from_host(host)

    def run(self, ctx: HostContext) -> None:
        service = self.service
        settings = ServiceSettings.of(ctx.host, [service])
        project, timeout, stop_timeout = settings.project, settings.timeout, settings.stop_timeout
        facts = settings.facts_of(ctx.remote, service)
        secret_names = [*validate.value(ctx.host, "secret_vars"), *self._hidden]
        for name, value in self.values.items():
            if ctx.redactor.is_secret(name) or name in secret_names:
                ctx.redactor.add_value(value)

        with ctx.step("facts") as step:
            pf = settings.gather(ctx.remote, [service])
            compose_paths = [posixpath.join(project.directory, f) for f in project.files]
            compose_texts = [f.text for f in read_files(ctx.remote, compose_paths)[0]]
            explicit = (ctx.var("env_files") or {}).get(service)
            paths = (
                [posixpath.join(project.directory, str(explicit))]
                if explicit
                else env_file_of(service, compose_texts, project.directory)
            )
            if not paths:
                raise HostError(
                    f"{service} reads no env_file: add `env_file: .env` to it in the compose file, "
                    "or set the env_files var"
                )
            before = pf.facts[service]
            files, running = read_files(ctx.remote, paths, before)
            # The file that sets a name wins over earlier ones; new names go to the last file.
            target = next((f for f in reversed(files) if set(envfile.parse(f.text)) & {*self.values,
                           *self.unset}), files[-1])  # fmt: skip
            for name, value in envfile.parse(target.text).items():
                if ctx.redactor.is_secret(name) or name in secret_names:
                    ctx.redactor.add_value(value)
            new_text, changes = envfile.edit(target.text, self.values, self.unset)
            stale = [n for n, v in self.values.items() if before.containers and running.get(n) != v]
            readers = services_reading(target.path, compose_texts, project.directory)
            sharing = [s for s in readers if s != service]
            step.done(Status.OK, f"{service} reads {target.path}"
                      + (f" (also read by {', '.join(sharing)})" if sharing else ""),
                      env_file=target.path, services_sharing=sharing)  # fmt: skip

        summary = envfile.describe(changes, secret_names)
        diff = envfile.masked_diff(target.path, target.text, new_text, secret_names) if changes else ""
        healthy_now, why = before.verdict()
        if not changes and not stale and healthy_now:
            ctx.record("decide", Status.OK, f"{target.path} already has it and {service} runs with it")
            return
        if not changes and not stale:  # e.g. a run cut off mid-recreate left a container created, not started
            plan = f"{target.path} already has it, but {service} is not healthy ({why}): recreate {service}"
        elif not changes:
            plan = f"{target.path} already has it, but {service} still runs the old value(s) of " \
                   f"{', '.join(sorted(set(stale)))}: recreate {service}"  # fmt: skip
        else:
            plan = f"{summary} in {target.path}; recreate {service}"
        if sharing and changes:
            plan += f" ({', '.join(sharing)} also read(s) this file and keep the old values until recreated)"
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would set {plan}", diff=diff)
            return

        backup = None
        if changes:
            with ctx.step("write") as step:
                backup = backup_name(target.path) if target.exists else None
                owner, mode = (target.owner, target.mode) if target.exists else ("", "600")
                keep = int(validate.value(ctx.host, "env_backups_keep"))
                job = env_file_write(target.path, new_text, owner, mode, backup, keep=keep)
                remote_write.write(ctx.remote, job)
                step.done(Status.CHANGED, f"{summary} in {target.path}"
                          + (f"; backup {backup}" if backup else " (new file, mode 0600)"),
                          diff=diff, backup=backup)  # fmt: skip
        healthy = recover(ctx, project, service, before, "recreate", facts, timeout, stop_timeout)
        if healthy:
            now = read_files(ctx.remote, [], facts())[1]
            wrong = [n for n, v in self.values.items() if now.get(n) != v]
            with ctx.step("verify") as step:
                if wrong:
                    step.done(Status.FAILED, f"{service} was recreated but does not run with "
                              f"{', '.join(wrong)} as set (is it overridden by `environment:`?)")  # fmt: skip
                else:
                    done = f"{summary} in {target.path}" if changes else f"{target.path} unchanged"
                    kept = f" (backup {backup})" if backup else ""
                    step.done(Status.CHANGED, f"{done}{kept}; {service} recreated, healthy, runs with it")
            return
        if backup is None:
            return  # nothing of ours to undo: the recreate step says why it failed
        with ctx.step("rollback") as step:
            restore = f"cp -p {shlex.quote(backup)} {shlex.quote(target.path)}"
            must(ctx.remote.run(restore, timeout=30), f"restoring {target.path}")
            back = recover(ctx, project, service, facts(), "recreate", facts, timeout, stop_timeout)
            step.done(
                Status.FAILED,
                f"{service} was unhealthy with the change; {target.path} restored from {backup} and "
                + ("the service is healthy again" if back else "the service is STILL unhealthy"),
            )
