"""Secret rotation, shared by rotate-secret, rotate-db-password and rotate-aws-key.

Every rotation follows the four steps AWS uses for its own: create the pending value, set it where it
is used, test it, finish (switch over, retire the old one), keeping a last-known-good to roll back to.

The application side is always a compose env file on a host:

facts   the env file that sets the key (from the services' `env_file`, or the `env_files` var), its
        owner and mode, the services that read it (or interpolate `${KEY}` from the project's .env),
        and the value each of their containers runs with (compared here, never printed);
set     a dated backup of the file (mode 0600), then the file rewritten through a temp file and a
        rename (same owner, mode 0600). The content travels on stdin: no value is ever on a command
        line, in output, in the audit log or in a notification;
test    every service that reads the file recreated and healthy, running with the new value;
        otherwise the backup is put back and the services recreated again.

Each rotation leaves a record on the env host (`{state_dir}/rotations.json`, mode 0600, see
`facts.rotation`): what was rotated, when, how far it got and which backup rolls it back, never a
value. A run that finds an unfinished record resumes from the facts: the env file already holds the
new value (finish it) or it does not (start again). `inv rotation-status` prints the records.

Env hosts other than the run's own are opened through the engine (`ctx.open`): connected, and locked
unless the run changes nothing.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import IO, Any

import yaml

from remediations.actions import image_record as images
from remediations.actions import remote_write
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.actions.env_files import (
    EnvFileFacts,
    backup_name,
    compose_services,
    compose_texts,
    env_file_of,
    env_file_write,
    read_files,
    running_envs,
    services_reading,
)
from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.facts import envfile
from remediations.facts.compose import ProjectFacts, ServiceFacts
from remediations.facts.rotation import (
    ALPHABETS,
    DEFAULT_ALPHABET,
    DEFAULT_LENGTH,
    RECORD_FILE,
    Record,
    latest,
    now_iso,
    parse_records,
    render_records,
)
from remediations.reporting.redact import MASK

# --------------------------------------------------------------------------------------------
# New values
# --------------------------------------------------------------------------------------------


def generate(length: int = DEFAULT_LENGTH, alphabet: str = DEFAULT_ALPHABET) -> str:
    """A new value from the `secrets` module: `length` characters of the named alphabet."""
    chars = ALPHABETS[alphabet]
    return "".join(secrets.choice(chars) for _ in range(length))


def value_from_stdin(stream: IO[str] | None = None) -> str:
    """The new value read from stdin (one line; the newline that ends it is not part of it)."""
    stream = stream if stream is not None else sys.stdin
    if stream.isatty():
        raise UsageError("--value-from-stdin: pipe the value in (printf '%s' \"$NEW\" | inv …), "
                         "not from a terminal")  # fmt: skip
    text = stream.read()
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if not text:
        raise UsageError("--value-from-stdin: stdin was empty; pipe the new value in")
    if "\n" in text or "\0" in text:
        raise UsageError("--value-from-stdin: the value holds a newline or NUL; give one line")
    return text


# --------------------------------------------------------------------------------------------
# The record on the env host
# --------------------------------------------------------------------------------------------


def record_path(host: Host) -> str:
    return f"{str(host.get('state_dir') or images.DEFAULT_STATE_DIR).rstrip('/')}/{RECORD_FILE}"


def read_records(remote: Remote, host: Host) -> list[Record]:
    result = remote.run(f"cat {shlex.quote(record_path(host))} 2>/dev/null || true", timeout=30)
    return parse_records(result.stdout)


def save_record(remote: Remote, host: Host, record: Record) -> Record:
    """Add or replace (by id) one record in the host's file: read, change, write atomically (0600)."""
    record = replace(record, updated=now_iso())
    records = [r for r in read_records(remote, host) if r.id != record.id] + [record]
    path = record_path(host)
    job = remote_write.Write(path, render_records(records).encode(), mode="600", make_dir=True)
    remote_write.write(remote, job)
    return record


def latest_of(sides: Sequence[EnvSide], kind: str, name: str) -> list[Record | None]:
    """The newest record of this secret on each env host (one read per host)."""
    return [latest(read_records(s.ctx.remote, s.host), kind, name, s.file.path) for s in sides]


def save_all(
    sides: Sequence[EnvSide], records: Sequence[Record], detail: dict[str, Any] | None = None, **changes: Any
) -> list[Record]:
    """Each side's record with `changes` (and `detail` merged into its own), saved on its host."""
    saved = []
    for side, record in zip(sides, records, strict=True):
        merged = {**changes, "detail": {**record.detail, **detail}} if detail else changes
        saved.append(save_record(side.ctx.remote, side.host, replace(record, **merged)))
    return saved


def new_record(
    kind: str, name: str, task: str, side: EnvSide, detail: dict[str, Any] | None = None
) -> Record:
    started = now_iso()
    stamp = started.replace("-", "").replace(":", "").replace("+0000", "Z")
    return Record(
        id=f"{stamp}-{kind}-{name}", kind=kind, name=name, task=task, env_file=side.file.path,
        keys=tuple(side.keys), services=tuple(side.services), backup=backup_name(side.file.path),
        started=started, updated=started, status="pending", detail=dict(detail or {}),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The application side: one env file on one host, and the services that read it
# --------------------------------------------------------------------------------------------


def interpolating(key: str, compose_texts: Sequence[str]) -> list[str]:
    """Pure: services whose compose definition interpolates ${KEY} (from the project's .env)."""
    pattern = re.compile(r"\$\{?" + re.escape(key) + r"(?![A-Za-z0-9_])")
    return sorted(
        {
            str(name)
            for services in compose_services(compose_texts)
            for name, body in services.items()
            if pattern.search(yaml.safe_dump(body))
        }
    )


@dataclass
class EnvSide:
    """Where a secret is used on one host: its env file and the services to recreate."""

    ctx: HostContext  # the env host's context (its remote; steps go to the run's host result)
    settings: ServiceSettings
    file: EnvFileFacts
    keys: list[str]
    services: list[str]
    left_alone: list[str]  # services that read the file but were not asked for (--service)
    values: dict[str, str]  # key -> current value in the file ("" when absent)
    running: dict[str, dict[str, str]]  # service -> key -> value its container runs with
    before: dict[str, ServiceFacts]

    @property
    def host(self) -> Host:
        return self.ctx.host

    def label(self) -> str:
        return f"{self.file.path} on {self.host.name}"

    def stale(self, values: dict[str, str]) -> list[str]:
        """Services whose containers do not run with `values`."""
        return [
            s for s in self.services if any(self.running.get(s, {}).get(k) != v for k, v in values.items())
        ]


@dataclass(frozen=True)
class _Project:
    """What gather_env reads of the compose project: its services' facts and compose files."""

    settings: ServiceSettings
    pf: ProjectFacts
    texts: list[str]
    explicit: dict[str, Any]  # the env_files var: service -> env file


def _env_paths(project: _Project, services: Sequence[str]) -> tuple[list[str], list[str]]:
    """The env files the candidate services read (in order, once each), and the candidates."""
    directory = project.settings.project.directory
    candidates = list(services) or list(project.pf.services)
    paths: list[str] = []
    for name in candidates:
        found = (
            [posixpath.join(directory, str(project.explicit[name]))]
            if name in project.explicit
            else env_file_of(name, project.texts, directory)
        )
        paths += [p for p in found if p not in paths]
    if not paths:
        raise HostError(
            f"{', '.join(candidates) or 'no service'} read(s) no env_file: add `env_file: .env` in the "
            "compose file, or set the env_files var"
        )
    return paths, candidates


def _target(
    files: Sequence[EnvFileFacts], keys: Sequence[str], paths: Sequence[str], create: bool
) -> EnvFileFacts:
    """The last file that sets every key (or, with `create`, the last file); else a HostError."""
    having = [f for f in files if all(k in envfile.parse(f.text) for k in keys)]
    if having:
        return having[-1]
    if create:
        return files[-1]
    partial = [f.path for f in files if any(k in envfile.parse(f.text) for k in keys)]
    where = f" ({', '.join(partial)} has only some of them)" if partial else ""
    raise HostError(
        f"{', '.join(keys)} not set in {', '.join(paths)}{where}; nothing changed. Pass --create to add it"
    )


def _readers(project: _Project, target: str, keys: Sequence[str]) -> list[str]:
    """The project's services that read `target` (or interpolate a key from the project's .env)."""
    directory = project.settings.project.directory
    readers = services_reading(target, project.texts, directory)
    readers += [n for n, v in project.explicit.items() if posixpath.join(directory, str(v)) == target]
    if posixpath.basename(target) == ".env" and posixpath.dirname(target) == directory.rstrip("/"):
        for key in keys:
            readers += interpolating(key, project.texts)
    return sorted(set(readers) & set(project.pf.services))


def _mask_values(ctx: HostContext, files: Sequence[EnvFileFacts], keys: Sequence[str],
                 public: Sequence[str]) -> None:  # fmt: skip
    """Every secret-looking value of these files is masked wherever it shows up."""
    for f in files:
        for name, value in envfile.parse(f.text).items():
            if (ctx.redactor.is_secret(name) or name in keys) and name not in public:
                ctx.redactor.add_value(value)


def gather_env(
    ctx: HostContext,
    keys: Sequence[str],
    services: Sequence[str] = (),
    create: bool = False,
    public: Sequence[str] = (),
) -> EnvSide:
    """The env file that sets `keys` and the services using it, with the values they run with.

    Values are learnt by the redactor (masked wherever they show up), except the `public` keys'
    (an access key id is an identifier the output must be able to name).

    A HostError (nothing changed) when no such file is found, unless `create` (then the last env
    file of the first service gets the keys).
    """
    remote = ctx.remote
    settings = ServiceSettings.of(ctx.host, list(services))
    pf = settings.gather(remote, list(services))
    texts = compose_texts(remote, settings.project)
    project = _Project(settings, pf, texts, dict(ctx.var("env_files") or {}))
    paths, _ = _env_paths(project, services)
    files = read_files(remote, paths)[0]
    _mask_values(ctx, files, keys, public)
    target = _target(files, keys, paths, create)
    readers = _readers(project, target.path, keys)
    chosen = [s for s in services if s in readers] if services else readers
    not_reading = [s for s in services if s not in readers]
    if not_reading:
        raise HostError(f"{', '.join(not_reading)} do(es) not read {target.path}; the readers are "
                        f"{', '.join(readers) or 'none'}")  # fmt: skip
    current = envfile.parse(target.text)
    side = EnvSide(
        ctx, settings, target, list(keys), chosen, [s for s in readers if s not in chosen],
        {k: current.get(k, "") for k in keys}, {}, {s: pf.facts[s] for s in chosen},
    )  # fmt: skip
    refresh_running(side, pf)
    return side


def refresh_running(side: EnvSide, pf: ProjectFacts | None = None) -> None:
    """The chosen services' facts (`pf`, or gathered now) and the keys' values in the env of each
    one's first container (none: not running): two round trips for all of them."""
    pf = pf if pf is not None else side.settings.gather(side.ctx.remote)
    side.before.update({s: pf.facts[s] for s in side.services})
    envs = running_envs(side.ctx.remote, {s: side.before[s] for s in side.services})
    side.running = {s: {k: envs[s][k] for k in side.keys if k in envs[s]} for s in side.services}


def backup_value(side: EnvSide, record: Record) -> dict[str, str] | None:
    """The keys' values in the record's backup (the last-known-good); None when it is gone."""
    files = read_files(side.ctx.remote, [record.backup])[0]
    if not files[0].exists:
        return None
    parsed = envfile.parse(files[0].text)
    for key in side.keys:
        if key in parsed:
            side.ctx.redactor.add_value(parsed[key])
    return {k: parsed.get(k, "") for k in side.keys}


def masked_change(keys: Sequence[str]) -> str:
    return ", ".join(f"{k}: {MASK} → {MASK}" for k in keys)


def masked_diff(sides: Sequence[EnvSide], keys: Sequence[str]) -> str:
    """The diff a rotation shows: each env file, its keys masked."""
    return "\n".join(f"{s.file.path}: {masked_change(keys)}" for s in sides)


# --------------------------------------------------------------------------------------------
# set, test, roll back: the steps on the env side
# --------------------------------------------------------------------------------------------


def write_env(side: EnvSide, values: dict[str, str], backup: str, step: str = "set") -> None:
    """Back up the file (0600) and write it with `values` atomically (same owner, mode 0600)."""
    ctx = side.ctx
    for value in values.values():
        ctx.redactor.add_value(value)
    with ctx.step(step) as timer:
        new_text, _ = envfile.edit(side.file.text, values, [])
        owner = side.file.owner if side.file.exists else ""
        job = env_file_write(
            side.file.path, new_text, owner, "600", backup if side.file.exists else None, backup_mode="600",
            keep=int(validate.value(side.host, "env_backups_keep")),
        )
        remote_write.write(ctx.remote, job)
        widened = side.file.exists and side.file.mode not in ("600", "400")
        timer.done(
            Status.CHANGED,
            f"{masked_change(list(values))} in {side.label()}; backup {backup} (0600)"
            + (f"; mode {side.file.mode} tightened to 600" if widened else ""),
            diff=f"{side.file.path}: {masked_change(list(values))}",
            backup=backup,
        )
    side.file = replace(side.file, text=new_text, exists=True, mode="600")
    side.values = dict(values)


def write_all(sides: Sequence[EnvSide], records: Sequence[Record], values: dict[str, str]) -> None:
    """The set step on every env host ("set HOST"), each backed up to its record's backup."""
    for side, record in zip(sides, records, strict=True):
        write_env(side, values, record.backup, step=f"set {side.host.name}")


def recreate(side: EnvSide, values: dict[str, str], prefix: str = "") -> str:
    """Recreate each chosen service that does not run `values`; "" when all are healthy with them,
    else why not."""
    ctx, s = side.ctx, side.settings
    for service in side.stale(values):
        healthy = recover(ctx, s.project, service, side.before[service], "recreate",
                          s.facts_of(ctx.remote, service), s.timeout, s.stop_timeout, prefix)  # fmt: skip
        if not healthy:
            return f"{service} on {side.host.name} was not healthy after the recreate"
    refresh_running(side)
    wrong = side.stale(values)
    if wrong:
        return (f"{', '.join(wrong)} on {side.host.name} do(es) not run with the new value after the "
                "recreate (overridden by `environment:`?)")  # fmt: skip
    return ""


def recreate_all(sides: Sequence[EnvSide], values: dict[str, str]) -> str:
    """The test on every env host, in order: "" when all are healthy with `values`, else the first
    problem (the later hosts are not recreated)."""
    for side in sides:
        problem = recreate(side, values, prefix=f"{side.host.name} ")
        if problem:
            return problem
    return ""


def restore_env(side: EnvSide, backup: str, old: dict[str, str], prefix: str = "") -> str:
    """Put the backup back, recreate the services with it: "" when healthy again, else why not."""
    ctx = side.ctx
    q = shlex.quote
    must(ctx.remote.run(f"cp -p {q(backup)} {q(side.file.path)}", timeout=30), f"restoring {side.file.path}")
    side.values = dict(old)
    refresh_running(side)  # what each service runs now (a failed recreate may have replaced it)
    return recreate(side, old, prefix)


def restore_all(sides: Sequence[EnvSide], records: Sequence[Record], old: dict[str, str]) -> list[str]:
    """Every env host back to its record's backup: what is still unhealthy afterwards (none: [])."""
    still = []
    for side, record in zip(sides, records, strict=True):
        again = restore_env(side, record.backup, old, prefix=f"{side.host.name} ")
        if again:
            still.append(again)
    return still


def describe_services(side: EnvSide) -> str:
    text = ", ".join(side.services) or "no service"
    if side.left_alone:
        text += f" (also read by {', '.join(side.left_alone)}, left alone: they keep the old value)"
    return text


def describe_sides(sides: Sequence[EnvSide]) -> str:
    return "; ".join(f"{s.label()} (recreate {describe_services(s)})" for s in sides)


def apps(sides: Sequence[EnvSide]) -> str:
    return "; ".join(f"{', '.join(s.services)} on {s.host.name}" for s in sides)


def left_alone(side: EnvSide) -> str:
    if not side.left_alone:
        return ""
    names = ", ".join(side.left_alone)
    return f"; {names} also read(s) the file and still run(s) the old value (not in --service)"


# --------------------------------------------------------------------------------------------
# Rotations whose authority is elsewhere (a database, IAM): the env hosts are opened from the run
# --------------------------------------------------------------------------------------------


def env_hosts(inventory: Inventory, pattern: str | None, flag: str = "--env-host") -> list[Host]:
    """The env hosts a rotation updates; bad input when the pattern selects none or lacks the vars."""
    if not pattern:
        raise UsageError(f"{flag} is required: the host(s) whose compose env file holds the secret")
    hosts = inventory.select(pattern, flag)
    for host in hosts:
        validate.check_vars(host)  # opened from the run's host: checked like the run's own hosts
        host.require("compose_project_dir")
    return hosts


def open_env_contexts(ctx: HostContext, hosts: Sequence[Host], stack: ExitStack) -> list[HostContext]:
    """A context per env host, opened by the engine (connected, and locked unless --check), whose
    steps go to this run's result; the run's own host is used as it is (its lock is already held)."""
    return [stack.enter_context(ctx.open(host)) for host in hosts]


def gather_sides(
    contexts: Sequence[HostContext], keys: Sequence[str], services: Sequence[str], public: Sequence[str] = ()
) -> list[EnvSide]:
    sides = []
    for sub in contexts:
        with sub.step(f"facts {sub.host.name}") as step:
            side = gather_env(sub, keys, services, public=public)
            step.done(Status.OK, f"{', '.join(keys)} in {side.label()}, used by {describe_services(side)}")
        sides.append(side)
    return sides


def agreed_values(sides: Sequence[EnvSide]) -> dict[str, str]:
    """The keys' values every env host has; a HostError when they differ (nothing changed)."""
    first = sides[0].values
    differ = [s.host.name for s in sides[1:] if s.values != first]
    if differ:
        raise HostError(
            f"{', '.join(first)} differ(s) between {sides[0].host.name} and {', '.join(differ)}; "
            "make the env files agree first; nothing changed"
        )
    return dict(first)
