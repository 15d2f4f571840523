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

Each rotation leaves a record on the env host (`{state_dir}/rotations.json`, mode 0600): what was
rotated, when, how far it got and which backup rolls it back, never a value. A run that finds an
unfinished record resumes from the facts: the env file already holds the new value (finish it) or it
does not (start again). `inv rotation-status` prints the records.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
import secrets
import shlex
import string
import sys
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import IO, Any, ClassVar

import yaml

from remediations.actions import image_record as images
from remediations.actions import remote_write
from remediations.actions.compose_service import ServiceSettings, recover
from remediations.actions.env_files import (
    EnvFileFacts,
    backup_name,
    compose_services,
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
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.core.units import human_age, parse_duration
from remediations.facts import envfile
from remediations.facts.compose import ProjectFacts, ServiceFacts
from remediations.reporting.redact import MASK

# --------------------------------------------------------------------------------------------
# New values
# --------------------------------------------------------------------------------------------

ALPHABETS = {
    # Letters and digits only by default: safe unquoted in env files, URLs, DSNs and shells.
    "alnum": string.ascii_letters + string.digits,
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "hex": "0123456789abcdef",
    # Punctuation without quotes, backslash, $ (compose interpolation), # (comments) or spaces.
    "symbols": string.ascii_letters + string.digits + "!%*+,-./:=?@^_~",
}
DEFAULT_ALPHABET = "alnum"
DEFAULT_LENGTH = 32
MIN_LENGTH = 16
MAX_LENGTH = 4096
DEFAULT_MAX_AGE = "1h"


def parse_length(value: int | str | None) -> int:
    if value is None or str(value).strip() == "":
        return DEFAULT_LENGTH
    text = str(value).strip()
    if not text.isdigit() or not MIN_LENGTH <= int(text) <= MAX_LENGTH:
        raise UsageError(
            f"--length {text[:20]!r}: give a number of characters from {MIN_LENGTH} to {MAX_LENGTH}"
        )
    return int(text)


def parse_alphabet(value: str | None) -> str:
    name = (value or DEFAULT_ALPHABET).strip()
    if name not in ALPHABETS:
        raise UsageError(f"--alphabet {name[:20]!r}: give one of {', '.join(ALPHABETS)}")
    return name


def parse_max_age(value: str | None) -> int:
    return parse_duration(DEFAULT_MAX_AGE if value is None or value == "" else value, "--max-age")


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


def check_key(name: str | None, flag: str = "--name") -> str:
    if not name or not envfile.NAME.match(name):
        raise UsageError(f"{flag} {str(name or '')[:40]!r}: give the env file's variable name "
                         "(letters, digits and _)")  # fmt: skip
    return name


# --------------------------------------------------------------------------------------------
# The record on the env host
# --------------------------------------------------------------------------------------------

RECORD_FILE = "rotations.json"
KEEP_RECORDS = 100
UNFINISHED = ("pending", "set", "switched")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Record:
    """One rotation of one secret on one env host. Never holds a value."""

    id: str
    kind: str  # "env" | "postgres" | "aws"
    name: str  # the env key, the PostgreSQL role, the IAM user
    task: str
    env_file: str
    keys: tuple[str, ...]
    services: tuple[str, ...]
    backup: str
    started: str
    updated: str
    status: str  # pending → set → (switched →) done | rolled-back | abandoned | failed
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "task": self.task,
                "env_file": self.env_file, "keys": list(self.keys), "services": list(self.services),
                "backup": self.backup, "started": self.started, "updated": self.updated,
                "status": self.status, "message": self.message, "detail": self.detail}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(
            str(data.get("id", "")), str(data.get("kind", "")), str(data.get("name", "")),
            str(data.get("task", "")), str(data.get("env_file", "")),
            tuple(str(k) for k in data.get("keys") or ()), tuple(str(s) for s in data.get("services") or ()),
            str(data.get("backup", "")), str(data.get("started", "")), str(data.get("updated", "")),
            str(data.get("status", "")), str(data.get("message", "")), dict(data.get("detail") or {}),
        )  # fmt: skip

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    def age(self, now: dt.datetime | None = None) -> float:
        try:
            at = dt.datetime.fromisoformat(self.updated or self.started)
        except ValueError:
            return float("inf")
        return ((now or dt.datetime.now(dt.UTC)) - at).total_seconds()

    def same_secret(self, kind: str, name: str, env_file: str) -> bool:
        return self.kind == kind and self.name == name and self.env_file == env_file


def parse_records(text: str) -> list[Record]:
    """Pure: the record file's text, oldest first; an empty or unreadable file is no record."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return [Record.from_dict(r) for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def render_records(records: Sequence[Record]) -> str:
    return json.dumps([r.to_dict() for r in records[-KEEP_RECORDS:]], indent=1, sort_keys=True) + "\n"


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


def latest(records: Iterable[Record], kind: str, name: str, env_file: str) -> Record | None:
    found = [r for r in records if r.same_secret(kind, name, env_file)]
    return found[-1] if found else None


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
    host, remote = ctx.host, ctx.remote
    settings = ServiceSettings.of(host, list(services))
    project = settings.project
    pf = settings.gather(remote, list(services))
    compose_paths = [posixpath.join(project.directory, f) for f in project.files]
    compose_texts = [f.text for f in read_files(remote, compose_paths)[0]]
    explicit = ctx.var("env_files") or {}
    candidates = list(services) or list(pf.services)
    paths: list[str] = []
    for name in candidates:
        found = (
            [posixpath.join(project.directory, str(explicit[name]))]
            if name in explicit
            else env_file_of(name, compose_texts, project.directory)
        )
        paths += [p for p in found if p not in paths]
    if not paths:
        raise HostError(
            f"{', '.join(candidates) or 'no service'} read(s) no env_file: add `env_file: .env` in the "
            "compose file, or set the env_files var"
        )
    files = read_files(remote, paths)[0]
    for f in files:  # every secret-looking value of these files is masked wherever it shows up
        for name, value in envfile.parse(f.text).items():
            if (ctx.redactor.is_secret(name) or name in keys) and name not in public:
                ctx.redactor.add_value(value)
    having = [f for f in files if all(k in envfile.parse(f.text) for k in keys)]
    if having:
        target = having[-1]
    elif create:
        target = files[-1]
    else:
        partial = [f.path for f in files if any(k in envfile.parse(f.text) for k in keys)]
        where = f" ({', '.join(partial)} has only some of them)" if partial else ""
        raise HostError(
            f"{', '.join(keys)} not set in {', '.join(paths)}{where}; nothing changed. "
            "Pass --create to add it"
        )
    readers = services_reading(target.path, compose_texts, project.directory)
    readers += [n for n, v in explicit.items() if posixpath.join(project.directory, str(v)) == target.path]
    if posixpath.basename(target.path) == ".env" and posixpath.dirname(
        target.path
    ) == project.directory.rstrip("/"):
        for key in keys:
            readers += interpolating(key, compose_texts)
    readers = sorted(set(readers) & set(pf.services))
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


def restore_env(side: EnvSide, backup: str, old: dict[str, str], prefix: str = "") -> str:
    """Put the backup back, recreate the services with it: "" when healthy again, else why not."""
    ctx = side.ctx
    q = shlex.quote
    must(ctx.remote.run(f"cp -p {q(backup)} {q(side.file.path)}", timeout=30), f"restoring {side.file.path}")
    side.values = dict(old)
    refresh_running(side)  # what each service runs now (a failed recreate may have replaced it)
    return recreate(side, old, prefix)


def describe_services(side: EnvSide) -> str:
    text = ", ".join(side.services) or "no service"
    if side.left_alone:
        text += f" (also read by {', '.join(side.left_alone)}, left alone: they keep the old value)"
    return text


def left_alone(side: EnvSide) -> str:
    if not side.left_alone:
        return ""
    names = ", ".join(side.left_alone)
    return f"; {names} also read(s) the file and still run(s) the old value (not in --service)"


def recent_enough(record: Record | None, max_age: int) -> bool:
    return record is not None and record.status == "done" and record.age() < max_age


# --------------------------------------------------------------------------------------------
# rotate-secret
# --------------------------------------------------------------------------------------------


class RotateSecret(Remediation):
    """A value in a compose env file: generated (or given on stdin), set, tested by the services'
    health, finished; rolled back to the backup when a service is unhealthy with it."""

    task: ClassVar[str] = "rotate-secret"
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(
        self,
        name: str,
        services: Sequence[str] = (),
        length: int = DEFAULT_LENGTH,
        alphabet: str = DEFAULT_ALPHABET,
        value: str | None = None,
        create: bool = False,
        max_age: int = 3600,
    ) -> None:
        self.name = name
        self.services = validate.check_services(services)
        self.length = length
        self.alphabet = alphabet
        self._value = value  # given on stdin; never in arguments, audit or output
        self.create = create
        self.max_age = max_age

    def arguments(self) -> dict[str, Any]:
        return {"name": self.name, "services": self.services, "length": self.length,
                "alphabet": self.alphabet, "value_from_stdin": self._value is not None,
                "create": self.create, "max_age": self.max_age}  # fmt: skip

    def run(self, ctx: HostContext) -> None:
        if self._value is not None:
            ctx.redactor.add_value(self._value)
        key = self.name
        with ctx.step("facts") as step:
            side = gather_env(ctx, [key], self.services, self.create)
            record = latest(read_records(ctx.remote, ctx.host), "env", key, side.file.path)
            last = f"last rotated {record.updated} ({record.status})" if record else "no rotation recorded"
            step.done(Status.OK, f"{key} in {side.label()}, used by {describe_services(side)}; {last}",
                      env_file=side.file.path, services=side.services)  # fmt: skip

        if record is not None and record.unfinished:
            self.resume(ctx, side, record)
            return
        current = side.values[key]
        present = key in envfile.parse(side.file.text)
        if self._value is not None and present and current == self._value and not side.stale({key: current}):
            ctx.record("decide", Status.OK, f"{key} already has the given value and "
                       f"{describe_services(side)} run(s) with it")  # fmt: skip
            return
        if self._value is None and recent_enough(record, self.max_age) and not side.stale({key: current}):
            assert record is not None
            ctx.record("decide", Status.OK, f"{key} was rotated {human_age(record.age())} ago (--max-age "
                       f"{human_age(self.max_age)}); nothing to do. --max-age 0 rotates it now")  # fmt: skip
            return
        plan = (f"rotate {key} in {side.label()} (backup first), recreate {describe_services(side)}, "
                "wait until healthy; roll back to the backup if not")  # fmt: skip
        if ctx.check:
            ctx.record(
                "decide", Status.CHANGED, f"would {plan}", diff=f"{side.file.path}: {masked_change([key])}"
            )
            return

        self.run_fresh(ctx, side)

    def resume(self, ctx: HostContext, side: EnvSide, record: Record) -> None:
        """An interrupted rotation: finish it when the file has a new value, else start again."""
        key = self.name
        old = backup_value(side, record)
        if old is None or old == side.values:
            if ctx.check:
                ctx.record("decide", Status.CHANGED, f"would abandon the unfinished rotation {record.id} "
                           "(it changed nothing) and rotate anew")  # fmt: skip
                return
            save_record(ctx.remote, ctx.host, replace(record, status="abandoned",
                        message="interrupted before the env file was written"))  # fmt: skip
            ctx.record("resume", Status.OK, f"unfinished rotation {record.id} had not written "
                       f"{side.file.path}: starting again")  # fmt: skip
            self.run_fresh(ctx, side)
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would finish the interrupted rotation {record.id}: "
                       f"recreate {describe_services(side)} with the new {key}, or roll back to "
                       f"{record.backup}")  # fmt: skip
            return
        ctx.record("resume", Status.OK, f"rotation {record.id} was interrupted after writing "
                   f"{side.file.path}: finishing it")  # fmt: skip
        self.test_and_finish(ctx, side, record, {key: side.values[key]}, old)

    def run_fresh(self, ctx: HostContext, side: EnvSide) -> None:
        key = self.name
        new = self._value if self._value is not None else generate(self.length, self.alphabet)
        ctx.redactor.add_value(new)
        old = dict(side.values)
        record = save_record(ctx.remote, ctx.host, new_record("env", key, self.task, side))
        write_env(side, {key: new}, record.backup)
        record = save_record(ctx.remote, ctx.host, replace(record, status="set"))
        self.test_and_finish(ctx, side, record, {key: new}, old)

    def test_and_finish(
        self, ctx: HostContext, side: EnvSide, record: Record, new: dict[str, str], old: dict[str, str]
    ) -> None:
        problem = recreate(side, new)
        if not problem:
            save_record(ctx.remote, ctx.host, replace(record, status="done", message="rotated"))
            ctx.record("finish", Status.CHANGED, f"rotated {self.name} in {side.label()}; "
                       f"{', '.join(side.services) or 'no service'} recreated, healthy, running with it"
                       f"{left_alone(side)}; {record.backup} rolls it back")  # fmt: skip
            return
        with ctx.step("rollback") as step:
            again = restore_env(side, record.backup, old)
            status = "rolled-back" if not again else "failed"
            save_record(ctx.remote, ctx.host, replace(record, status=status, message=problem))
            step.done(Status.FAILED, f"{problem}; {side.file.path} restored from {record.backup} and "
                      + ("the services are healthy with the old value again" if not again
                         else f"STILL not healthy: {again}"))  # fmt: skip


# --------------------------------------------------------------------------------------------
# rotation-status
# --------------------------------------------------------------------------------------------


def status_line(record: Record) -> str:
    what = {"env": "env secret", "postgres": "PostgreSQL role", "aws": "IAM user"}.get(
        record.kind, record.kind
    )
    line = f"{what} {record.name} ({', '.join(record.keys)} in {record.env_file}): {record.status}"
    line += f" at {record.updated}"
    if record.unfinished:
        line += " - UNFINISHED: re-run the rotation to finish it or roll it back"
    elif record.status in ("rolled-back", "failed") and record.message:
        line += f" ({record.message})"
    if record.backup:
        line += f"; backup {record.backup}"
    retired = record.detail.get("old_key")
    if retired:
        line += f"; old key {retired} {record.detail.get('old_key_state', '')}".rstrip()
    return line


class RotationStatus(Remediation):
    """Read-only: the newest rotation record of each secret on the host, never a value."""

    task: ClassVar[str] = "rotation-status"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def run(self, ctx: HostContext) -> None:
        records = read_records(ctx.remote, ctx.host)
        newest: dict[tuple[str, str, str], Record] = {}
        for record in records:
            newest[(record.kind, record.name, record.env_file)] = record
        if not newest:
            ctx.record("status", Status.OK, "no rotation recorded on this host")
            return
        bad = [r for r in newest.values() if r.unfinished or r.status in ("rolled-back", "failed")]
        for record in newest.values():
            ok = record not in bad
            ctx.record(
                f"{record.kind}:{record.name}",
                Status.OK if ok else Status.FAILED,
                status_line(record),
                rotation={k: v for k, v in record.to_dict().items() if k != "message"},
            )


# --------------------------------------------------------------------------------------------
# Rotations whose authority is elsewhere (a database, IAM): the env hosts are opened from the run
# --------------------------------------------------------------------------------------------


def env_hosts(inventory: Inventory, pattern: str | None, flag: str = "--env-host") -> list[Host]:
    """The env hosts a rotation updates; bad input when the pattern selects none or lacks the vars."""
    if not pattern:
        raise UsageError(f"{flag} is required: the host(s) whose compose env file holds the secret")
    hosts = inventory.select(pattern)
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
