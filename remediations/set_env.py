"""set-env: set or unset variables in the env file compose reads for a service, then recreate it.

The non-Kubernetes form of `kubectl set env` (MAINTENANCE_MODE, READ_ONLY_MODE, RATE_LIMIT_MODE):

facts   the project's services and containers; the service's `env_file` (from the compose files, or
        the `env_files` var); that file's text, owner and mode; the env the container runs with;
decide  nothing when the file and the running container already agree with the request; a recreate
        alone when the file has it but the container still runs the old env (an interrupted run);
apply   the new file streamed over stdin (never a command line) into a temp file beside the old one;
        only when its byte count and SHA-256 match does a dated backup (`cp -p`) get taken and the
        temp file (same owner and mode; 0600 for a new file) flushed and renamed over the old one
        (remote_write: a cut stream changes nothing); `up -d --force-recreate --no-deps SERVICE`,
        wait until healthy;
verify  the container runs with the new values. If it does not become healthy, the backup is put
        back and the service recreated again, and the host fails saying so.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar

import yaml

from remediations import envfile, remote_write, validate
from remediations.compose import Project, ServiceFacts
from remediations.connection import Remote, must
from remediations.engine import HostContext, Remediation
from remediations.errors import HostError, UsageError
from remediations.hostfacts import MARK, sections_by_name
from remediations.inventory import Host
from remediations.redact import MASK
from remediations.restart_api import ServiceSettings, recover
from remediations.results import Status


@dataclass(frozen=True)
class EnvFileFacts:
    path: str  # absolute
    exists: bool
    text: str
    owner: str  # "uid:gid"
    mode: str  # octal, such as "600"


def compose_services(compose_texts: Sequence[str]) -> list[dict[str, Any]]:
    """Pure: the `services:` mapping of each compose file, in order ({} for one that is not YAML)."""
    found: list[dict[str, Any]] = []
    for text in compose_texts:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            data = {}
        services = data.get("services") if isinstance(data, dict) else None
        found.append(services if isinstance(services, dict) else {})
    return found


def env_file_of(service: str, compose_texts: Sequence[str], project_dir: str) -> list[str]:
    """Pure: the env files compose reads for `service`, absolute, in order (later ones win)."""
    files: list[str] = []
    for services in compose_services(compose_texts):
        body = services.get(service) or {}
        entry = body.get("env_file") if isinstance(body, dict) else None
        if entry is None:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        found = []
        for item in entries:
            path = item.get("path") if isinstance(item, dict) else item
            if path:
                found.append(posixpath.normpath(posixpath.join(project_dir, str(path))))
        files = found  # a later compose file replaces the list, as compose merges env_file
    return files


def services_reading(path: str, compose_texts: Sequence[str], project_dir: str) -> list[str]:
    """Pure: every service whose env files include `path`."""
    names = {str(name) for services in compose_services(compose_texts) for name in services}
    return sorted(n for n in names if path in env_file_of(n, compose_texts, project_dir))


def _read_files_command(paths: Sequence[str], facts: ServiceFacts | None = None) -> str:
    """Each file's owner, mode and text; with `facts`, also the env its first container runs with."""
    parts = []
    for i, path in enumerate(paths):
        q = shlex.quote(path)
        parts.append(
            f"if [ -f {q} ]; then echo '{MARK}file{i} '$(stat -c '%u:%g:%a' {q}); cat {q}; "
            f"else echo '{MARK}file{i} missing'; fi"
        )
    if facts is not None and facts.containers:
        parts.append(_env_command("env", facts))
    return "\n".join(parts)


def _env_command(section: str, facts: ServiceFacts) -> str:
    """A marked section with the env the service's first container runs with."""
    inspect = shlex.join(["docker", "inspect", "--format", "{{json .Config.Env}}", facts.containers[0].id])
    return f"echo '{MARK}{section}'; {inspect} 2>/dev/null"


def running_envs(remote: Remote, facts: Mapping[str, ServiceFacts]) -> dict[str, dict[str, str]]:
    """The env each service's first container runs with ({} when it has none): one round trip."""
    names = [name for name, f in facts.items() if f.containers]
    if not names:
        return {name: {} for name in facts}
    command = "\n".join(_env_command(f"env{i}", facts[name]) for i, name in enumerate(names))
    sections = sections_by_name(must(remote.run(command, timeout=30), "reading containers' env").stdout)
    found = {name: _parse_env(sections.get(f"env{i}", ("", ""))[1]) for i, name in enumerate(names)}
    return {name: found.get(name, {}) for name in facts}


def _parse_env(text: str) -> dict[str, str]:
    """Pure: `docker inspect --format '{{json .Config.Env}}'` output as a dict (secrets never printed)."""
    try:
        items = json.loads(text) if text.strip() else []
    except ValueError:
        return {}
    return dict(item.split("=", 1) for item in items if isinstance(item, str) and "=" in item)


def read_files(
    remote: Remote, paths: Sequence[str], facts: ServiceFacts | None = None
) -> tuple[list[EnvFileFacts], dict[str, str]]:
    """The files, and (with `facts`) the env the service's first container runs with: one round trip."""
    result = must(remote.run(_read_files_command(paths, facts), timeout=30), "reading files")
    sections = sections_by_name(result.stdout)
    out = []
    for i, path in enumerate(paths):
        head, body = sections.get(f"file{i}", ("missing", ""))
        if head == "missing":
            out.append(EnvFileFacts(path, False, "", "", ""))
        else:
            uid, gid, mode = [*head.split(":"), "", "", ""][:3]
            out.append(EnvFileFacts(path, True, body + ("\n" if body else ""), f"{uid}:{gid}", mode))
    return out, _parse_env(sections.get("env", ("", ""))[1])


def env_file_write(
    path: str, text: str, owner: str, mode: str, backup: str | None, backup_mode: str | None = None,
    keep: int | None = None,
) -> remote_write.Write:  # fmt: skip
    """The new env file as one checked write: backup (same owner and mode, or `backup_mode`), a temp
    file whose size and SHA-256 are checked, then the rename (see remote_write); with `keep`, then
    all but the newest `keep` dated backups of the file are deleted."""
    prune = prune_backups_command(path, keep) if backup and keep is not None else ""
    return remote_write.Write(path, text.encode(), mode=mode or "600", owner=owner, backup=backup,
                              backup_mode=backup_mode, then=prune)  # fmt: skip


# backup_name's stamp as a glob: only files this project named are ever pruned.
BACKUP_STAMP_GLOB = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z"


def prune_backups_command(path: str, keep: int) -> str:
    """Shell text deleting all but the newest `keep` backups of `path` (their names sort by date, and
    so does the glob). Backups hold old secrets: without this they pile up forever. A failure here
    never fails the write that came before it."""
    if keep < 1:
        raise ValueError("keep at least the backup just made")
    pattern = f"{shlex.quote(path)}.{BACKUP_STAMP_GLOB}.bak"
    return (
        f"set -- {pattern}; if [ -e \"$1\" ]; then "
        f'while [ "$#" -gt {int(keep)} ]; do rm -f -- "$1" || true; shift; done; fi'
    )


def backup_name(path: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{path}.{stamp}.bak"


def values_from_stdin(stream: IO[str] | None = None) -> dict[str, str]:
    """`--values-from-stdin`: NAME=VALUE lines piped in, so that no value is in the controller's argv
    (where `ps` shows it to every user of the machine)."""
    stream = stream if stream is not None else sys.stdin
    if stream.isatty():
        raise UsageError("--values-from-stdin: pipe NAME=VALUE lines in (printf 'NAME=%s\\n' \"$VALUE\" | "
                         "inv set-env …), not from a terminal")  # fmt: skip
    return envfile.parse_value_lines(stream.read(), "--values-from-stdin")


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
