"""health: the daily health check of the runbooks, read-only, one round trip per host.

facts     one shell command: every container of the compose project (`docker inspect`), the count
          of error lines in each one's logs over the last 24 h, the HTTP health URL fetched on the
          host, `stat -f` of the filesystems that matter, the newest file in the backup directory, and
          the configured dependency probes (TCP ports, HTTP URLs) tried from the host; the newest
          backup in S3, when configured, is listed from the controller; on a WAL-archiving PostgreSQL
          host, pg_stat_archiver (psql as the database's OS user);
evaluate  pure: each fact against its threshold gives a `Check` that is green, yellow or red;
report    one step per check (a red check fails the host), then a `health` step naming the red
          checks. `--json` carries every check with its value, threshold and colour.

Nothing is changed on any host, so there is no lock and no check mode difference.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.actions import s3client
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import RunResult, Status
from remediations.core.units import check_non_negative, check_percent
from remediations.facts.compose import Container, Project
from remediations.facts.disk import check_backup_dir
from remediations.facts.fs import STAT_FS_FORMAT, FsUsage, fs_snippet
from remediations.facts.postgres import (
    ARCHIVER_JSON_SQL,
    AS_USER,
    PgTarget,
    archiver_failing,
    describe_archiver,
)
from remediations.facts.sections import MARK, parse_sections

GREEN, YELLOW, RED = "green", "yellow", "red"
DEFAULT_DISK_WARN = 80.0
DEFAULT_DISK_MAX = 90.0
DEFAULT_BACKUP_MAX_AGE_HOURS = 25.0
DEFAULT_LOG_ERRORS_MAX = 100
DEFAULT_ERROR_PATTERN = "error|exception|traceback|critical|fatal|panic"
LOG_WINDOW = "24h"
PROBE_TIMEOUT = 5
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
HOST_PORT = re.compile(r"^\[?([A-Za-z0-9_.:-]+?)\]?:([0-9]{1,5})$")
PG_ARCHIVER_SQL = (
    "select json_build_object('archive_mode', current_setting('archive_mode'), "
    f"'archiver', {' '.join(ARCHIVER_JSON_SQL.split())})"
)


@dataclass(frozen=True)
class Check:
    """One health check's verdict, with what was measured and what it was held against."""

    name: str
    colour: str
    value: Any
    threshold: Any
    detail: str

    @property
    def status(self) -> Status:
        return Status.FAILED if self.colour == RED else Status.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "colour": self.colour,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


# --- settings from the inventory -----------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str  # "tcp" | "http"
    target: str  # host:port or URL


@dataclass(frozen=True)
class Settings:
    """What to check on one host, and the thresholds; validated before any host is touched."""

    project: Project | None
    services: tuple[str, ...] | None  # None: every service the project has
    http_url: str | None
    disk_paths: tuple[str, ...]
    disk_warn: float
    disk_max: float
    backup_dir: str | None
    backup_glob: str
    backup_s3: str | None
    backup_max_age_hours: float
    log_errors_max: int
    error_pattern: str
    probes: tuple[Probe, ...] = field(default_factory=tuple)
    pg_archiver: PgTarget | None = None  # the PostgreSQL whose WAL archiver is checked

    @classmethod
    def from_host(cls, host: Host, only_services: Sequence[str] = ()) -> Settings:
        where = host.name
        project = Project.from_host(host) if host.get("compose_project_dir") else None
        configured = host.get("health_services")
        services: tuple[str, ...] | None = None
        if configured is not None:
            if isinstance(configured, str) or not isinstance(configured, list):
                raise UsageError(f"{where}: health_services must be a list of service names")
            services = tuple(str(s) for s in configured)
        for name in (*only_services, *(services or ())):
            if not SERVICE_NAME.match(name):
                raise UsageError(f"{where}: {name!r} is not a compose service name")
        if only_services:
            unknown = [s for s in only_services if services is not None and s not in services]
            if unknown:
                raise UsageError(
                    f"{where}: unknown service {', '.join(unknown)} "
                    f"(health_services: {', '.join(services or ())})"
                )
            if project is None:
                raise UsageError(f"{where}: --service needs compose_project_dir")
            services = tuple(only_services)
        disk_warn = check_percent(
            host.get("health_disk_warn_pct", DEFAULT_DISK_WARN), f"{where}: health_disk_warn_pct"
        )
        disk_max = check_percent(
            host.get("health_disk_max_pct", DEFAULT_DISK_MAX), f"{where}: health_disk_max_pct"
        )
        if disk_warn > disk_max:
            raise UsageError(
                f"{where}: health_disk_warn_pct {disk_warn:g} is above health_disk_max_pct {disk_max:g}"
            )
        backup_dir = host.get("backup_dir")
        backup_dir = check_backup_dir(backup_dir, where) if backup_dir not in (None, "") else None
        s3 = host.get("backup_s3_url")
        if s3 not in (None, "") and not str(s3).startswith("s3://"):
            raise UsageError(f"{where}: backup_s3_url {s3!r} must look like s3://bucket/prefix")
        paths = host.get("health_disk_paths")
        if paths is None:
            paths = ["/", *(p for p in (backup_dir, host.get("wal_archive_dir")) if p)]
        if isinstance(paths, str) or not all(str(p).startswith("/") for p in paths):
            raise UsageError(f"{where}: health_disk_paths must be a list of absolute paths")
        return cls(
            project=project,
            services=services,
            http_url=str(host.get("api_health_url")) if host.get("api_health_url") else None,
            disk_paths=tuple(dict.fromkeys(str(p) for p in paths)),
            disk_warn=disk_warn,
            disk_max=disk_max,
            backup_dir=backup_dir,
            backup_glob=str(host.get("backup_glob") or "*"),
            backup_s3=str(s3) if s3 else None,
            backup_max_age_hours=check_non_negative(
                host.get(
                    "health_backup_max_age_hours", host.get("backup_rpo_hours", DEFAULT_BACKUP_MAX_AGE_HOURS)
                ),
                f"{where}: health_backup_max_age_hours",
            ),
            log_errors_max=int(
                check_non_negative(
                    host.get("health_log_errors_max", DEFAULT_LOG_ERRORS_MAX),
                    f"{where}: health_log_errors_max",
                )
            ),
            error_pattern=_pattern(host.get("health_error_pattern", DEFAULT_ERROR_PATTERN), where),
            probes=_probes(host.get("health_probes") or [], where),
            pg_archiver=_pg_archiver(host, where),
        )


def _pg_archiver(host: Host, where: str) -> PgTarget | None:
    """A host that archives WAL (it has `wal_archive_dir`) gets its archiver checked, unless
    `health_pg_archiver: false`."""
    wanted = host.get("health_pg_archiver", bool(host.get("wal_archive_dir")))
    if not isinstance(wanted, bool):
        raise UsageError(f"{where}: health_pg_archiver must be true or false, got {wanted!r}")
    return PgTarget.from_host(host) if wanted else None


def _pattern(value: object, where: str) -> str:
    text = str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise UsageError(f"{where}: health_error_pattern {text!r}: {exc}") from None
    return text


def _probes(raw: object, where: str) -> tuple[Probe, ...]:
    if not isinstance(raw, list):
        raise UsageError(
            f"{where}: health_probes must be a list of {{name, tcp: host:port}} or {{name, http: url}}"
        )
    probes = []
    for item in raw:
        if not isinstance(item, dict) or len({"tcp", "http"} & item.keys()) != 1:
            raise UsageError(f"{where}: health_probes entry {item!r} needs exactly one of tcp or http")
        kind = "tcp" if "tcp" in item else "http"
        target = str(item[kind])
        if kind == "tcp" and not (HOST_PORT.match(target) and 0 < int(target.rsplit(":", 1)[1]) < 65536):
            raise UsageError(f"{where}: health_probes tcp {target!r}: give host:port")
        if kind == "http" and not re.match(r"^https?://", target):
            raise UsageError(f"{where}: health_probes http {target!r}: give an http:// or https:// URL")
        probes.append(Probe(str(item.get("name") or target), kind, target))
    return tuple(probes)


# --- facts ---------------------------------------------------------------------------------------


def _fetch(url: str) -> str:
    """Shell text setting $rc and $out from fetching `url` on the host with curl or wget."""
    q = shlex.quote(url)
    return (
        f"if command -v curl >/dev/null 2>&1; then out=$(curl -fsS -m {PROBE_TIMEOUT} {q} 2>&1); rc=$?; "
        f"elif command -v wget >/dev/null 2>&1; then out=$(wget -q -O- -T {PROBE_TIMEOUT} {q} 2>&1); rc=$?; "
        "else out='no curl or wget on the host'; rc=127; fi"
    )


def _tcp(target: str) -> str:
    """Shell text setting $rc from connecting to host:port on the host (bash /dev/tcp, else nc)."""
    match = HOST_PORT.match(target)
    assert match is not None  # validated in Settings
    host, port = shlex.quote(match.group(1)), shlex.quote(match.group(2))
    return (
        "if command -v bash >/dev/null 2>&1; then "
        f"timeout {PROBE_TIMEOUT} bash -c 'exec 3<>\"/dev/tcp/$1/$2\"' tcp {host} {port} 2>/dev/null; rc=$?; "
        f"elif command -v nc >/dev/null 2>&1; then nc -z -w {PROBE_TIMEOUT} {host} {port}; rc=$?; "
        "else rc=127; fi"
    )


def facts_command(settings: Settings) -> str:
    """One shell command printing every health fact in marked sections."""
    q = shlex.quote
    lines = [f"echo '{MARK}now'; date +%s"]
    if settings.project is not None and settings.services != ():
        p = settings.project
        lines += [
            f"if cd {q(p.directory)} 2>/dev/null; then",
            "  if docker compose version >/dev/null 2>&1; then v=v2; "
            "elif docker-compose version >/dev/null 2>&1; then v=v1; else v=none; fi",
            f'  echo "{MARK}compose $v"',
            "  case $v in",
            f"    v2) ids=$({shlex.join(p.argv('v2', 'ps', '-a', '-q'))} 2>&1) ;;",
            f"    v1) ids=$({shlex.join(p.argv('v1', 'ps', '-a', '-q'))} 2>&1) ;;",
            "    *) ids= ;;",
            "  esac",
            f'  echo "{MARK}ps $?"; printf "%s\\n" "$ids"',
            '  case "$ids" in *[!0-9a-f[:space:]]*) ids= ;; esac',
            f'  echo "{MARK}inspect"; [ -n "$ids" ] && docker inspect $ids',
            "  for id in $ids; do",
            f'    echo "{MARK}logs $id"',
            f'    docker logs --since {LOG_WINDOW} "$id" 2>&1 | '
            f"grep -ciE {q(settings.error_pattern)} || true",
            "  done",
            "  cd /",
            f"else echo '{MARK}noproject'; fi",
        ]
    if settings.http_url:
        lines += [_fetch(settings.http_url), f'echo "{MARK}http $rc"; printf "%s\\n" "$out" | head -c 300']
    for path in settings.disk_paths:
        lines.append(
            f"if [ -e {q(path)} ]; then {fs_snippet(path)}; else echo {q(MARK + 'fs ' + path)}; "
            "echo 'does not exist'; fi"
        )
    if settings.project is not None and settings.services != ():
        lines.append(
            "if root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null) && [ -n \"$root\" ]; then "
            f'echo "{MARK}fs $root"; stat -f -c {q(STAT_FS_FORMAT)} "$root" 2>&1; fi'
        )
    if settings.backup_dir:
        lines.append(
            f"echo {q(MARK + 'backup ' + settings.backup_dir)}; "
            f"if [ -d {q(settings.backup_dir)} ]; then find -P {q(settings.backup_dir + '/')} -type f "
            f"-name {q(settings.backup_glob)} -printf '%T@\\n' | sort -n | tail -n 1; "
            "else echo missing; fi"
        )
    if settings.pg_archiver is not None:
        psql = settings.pg_archiver.shell(
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", PG_ARCHIVER_SQL
        )
        lines += [
            AS_USER,
            f'out=$({psql} 2>&1); echo "{MARK}pgarchiver $?"; printf "%s\\n" "$out" | tail -n 5',
        ]
    for index, probe in enumerate(settings.probes):
        if probe.kind == "tcp":
            lines += [_tcp(probe.target), f'echo "{MARK}probe {index} $rc"']
        else:
            lines += [
                _fetch(probe.target),
                f'echo "{MARK}probe {index} $rc"; printf "%s\\n" "$out" | head -c 200',
            ]
    return "\n".join(lines)


@dataclass(frozen=True)
class HealthFacts:
    now: float
    compose: str | None = None  # v1 | v2 | none | None (not looked at)
    project_missing: bool = False
    containers: tuple[tuple[str, Container], ...] = ()  # (service, container)
    log_errors: Mapping[str, int] = field(default_factory=dict)  # container id (short) -> lines
    http: tuple[int, str] | None = None
    filesystems: tuple[tuple[str, FsUsage | str], ...] = ()  # path -> usage or why not
    newest_backup: float | None = None
    backup_missing: bool = False
    probes: Mapping[int, tuple[int, str]] = field(default_factory=dict)
    error: str = ""
    pg_archiver: tuple[int, str] | None = None  # psql's exit code and output


def parse_facts(output: str) -> HealthFacts:
    """Pure parser of `facts_command` output."""
    now = 0.0
    compose: str | None = None
    missing = False
    containers: list[tuple[str, Container]] = []
    logs: dict[str, int] = {}
    http: tuple[int, str] | None = None
    filesystems: list[tuple[str, FsUsage | str]] = []
    newest: float | None = None
    backup_missing = False
    probes: dict[int, tuple[int, str]] = {}
    error = ""
    pg_archiver: tuple[int, str] | None = None
    for s in parse_sections(output):
        if s.name == "now":
            now = float(s.body.strip() or 0)
        elif s.name == "compose":
            compose = s.arg
        elif s.name == "noproject":
            missing = True
        elif s.name == "ps" and s.arg != "0" and s.body.strip():
            error = f"compose ps failed: {s.body.strip()[-300:]}"
        elif s.name == "inspect" and s.body.strip():
            try:
                for data in json.loads(s.body):
                    service = str(
                        ((data.get("Config") or {}).get("Labels") or {}).get("com.docker.compose.service", "")
                    )
                    containers.append((service, Container.from_inspect(data)))
            except (ValueError, TypeError, AttributeError):
                error = "docker inspect printed something that is not JSON"
        elif s.name == "logs":
            count = s.body.strip().splitlines()[-1:] or ["0"]
            logs[s.arg[:12]] = int(count[0]) if count[0].isdigit() else 0
        elif s.name == "http":
            http = (_int(s.arg), s.body.strip())
        elif s.name == "fs":
            try:
                filesystems.append((s.arg, FsUsage.parse(s.arg, s.body)))
            except ValueError:
                filesystems.append((s.arg, s.body.strip() or "no data"))
        elif s.name == "backup":
            text = s.body.strip()
            if text == "missing":
                backup_missing = True
            elif text:
                newest = float(text)
        elif s.name == "probe":
            index, _, code = s.arg.partition(" ")
            probes[_int(index)] = (_int(code), s.body.strip())
        elif s.name == "pgarchiver":
            pg_archiver = (_int(s.arg), s.body.strip())
    return HealthFacts(
        now,
        compose,
        missing,
        tuple(containers),
        logs,
        http,
        tuple(filesystems),
        newest,
        backup_missing,
        probes,
        error,
        pg_archiver,
    )


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 1


# --- evaluate ------------------------------------------------------------------------------------


def evaluate(
    settings: Settings, facts: HealthFacts, s3_newest: float | None = None, s3_error: str = ""
) -> list[Check]:
    """Pure: every check's colour from the facts and the thresholds."""
    checks: list[Check] = []
    checks += service_checks(settings, facts)
    if settings.http_url and facts.http is not None:
        code, body = facts.http
        checks.append(
            Check(
                f"http {settings.http_url}",
                GREEN if code == 0 else RED,
                "answers" if code == 0 else f"exit {code}",
                "answers",
                "answers" if code == 0 else (body or f"exit {code}")[:200],
            )
        )
    checks += disk_checks(settings, facts)
    if settings.backup_dir:
        checks.append(
            backup_check(
                f"backup age {settings.backup_dir}",
                settings.backup_max_age_hours,
                facts.now,
                facts.newest_backup,
                "directory does not exist" if facts.backup_missing else "no backup file",
            )
        )
    if settings.backup_s3:
        checks.append(
            backup_check(
                f"backup age {settings.backup_s3}",
                settings.backup_max_age_hours,
                facts.now or time.time(),
                s3_newest,
                s3_error or "no backup object",
            )
        )
    if settings.pg_archiver is not None:
        checks.append(archiver_check(facts.pg_archiver))
    for index, probe in enumerate(settings.probes):
        code, body = facts.probes.get(index, (1, "not run"))
        what = f"{probe.kind} {probe.target}"
        detail = f"{what} answers" if code == 0 else f"{what} failed: {body or f'exit {code}'}"
        checks.append(
            Check(
                f"probe {probe.name}",
                GREEN if code == 0 else RED,
                "up" if code == 0 else "down",
                "up",
                detail[:200],
            )
        )
    return checks


def service_checks(settings: Settings, facts: HealthFacts) -> list[Check]:
    if settings.project is None or settings.services == ():
        return []
    if facts.project_missing:
        return [
            Check(
                "compose project",
                RED,
                "missing",
                "exists",
                f"project directory {settings.project.directory} does not exist",
            )
        ]
    if facts.compose == "none":
        return [
            Check(
                "compose project",
                RED,
                "no compose",
                "docker compose",
                "neither 'docker compose' nor 'docker-compose' works",
            )
        ]
    if facts.error:
        return [Check("compose project", RED, "unreadable", "readable", facts.error)]
    by_service: dict[str, list[Container]] = {}
    for service, container in facts.containers:
        by_service.setdefault(service, []).append(container)
    wanted = settings.services if settings.services is not None else tuple(sorted(by_service))
    if not wanted:
        return [
            Check(
                "compose project",
                RED,
                "no containers",
                "containers",
                f"project {settings.project.name} has no containers",
            )
        ]
    checks = []
    for service in wanted:
        containers = by_service.get(service, [])
        checks.append(service_state(service, containers))
        errors = sum(facts.log_errors.get(c.id[:12], 0) for c in containers)
        if containers:
            colour = GREEN if errors == 0 else YELLOW if errors <= settings.log_errors_max else RED
            checks.append(
                Check(
                    f"log errors {service}",
                    colour,
                    errors,
                    settings.log_errors_max,
                    f"{errors} error line(s) in the last {LOG_WINDOW}",
                )
            )
    return checks


def service_state(service: str, containers: Sequence[Container]) -> Check:
    name = f"service {service}"
    if not containers:
        return Check(name, RED, "missing", "running", f"no {service} container exists")
    worst = GREEN
    states = []
    for c in containers:
        state = c.state + (f" ({c.health})" if c.health else "")
        states.append(f"{c.name} {state}")
        if c.state != "running" or c.health == "unhealthy":
            worst = RED
        elif c.health == "starting" and worst == GREEN:
            worst = YELLOW
    detail = "; ".join(states)
    bad = [c for c in containers if c.state != "running" or c.health == "unhealthy"]
    if bad and bad[0].health == "unhealthy" and bad[0].health_output:
        detail += f": {bad[0].health_output[:150]}"
    value = "running" if worst != RED else (bad[0].health if bad[0].state == "running" else bad[0].state)
    return Check(name, worst, value, "running (healthy)", detail)


def disk_checks(settings: Settings, facts: HealthFacts) -> list[Check]:
    checks = []
    seen: set[tuple[int, int]] = set()
    for path, usage in facts.filesystems:
        name = f"disk {path}"
        if isinstance(usage, str):
            checks.append(Check(name, RED, None, settings.disk_max, f"{path}: {usage}"))
            continue
        key = (usage.total, usage.used + usage.available)
        if key in seen and path not in settings.disk_paths:
            continue  # Docker's root on a filesystem already reported
        seen.add(key)
        pct = round(usage.percent, 1)
        colour = RED if pct > settings.disk_max else YELLOW if pct > settings.disk_warn else GREEN
        checks.append(Check(name, colour, pct, settings.disk_max, usage.describe()))
    return checks


def backup_check(name: str, max_hours: float, now: float, newest: float | None, none_why: str) -> Check:
    if newest is None:
        return Check(name, RED, None, max_hours, none_why)
    hours = round(max(0.0, now - newest) / 3600, 1)
    colour = RED if hours > max_hours else GREEN
    return Check(name, colour, hours, max_hours, f"newest backup is {hours:g} h old (limit {max_hours:g} h)")


def archiver_check(answer: tuple[int, str] | None) -> Check:
    """Red while PostgreSQL's archiver is failing: pg_wal/ fills up and point-in-time recovery
    cannot go past the last archived segment. Red too when PostgreSQL does not answer."""
    name, threshold = "postgres archiver", "archiving"
    code, body = answer or (1, "not run")
    if code != 0:
        return Check(name, RED, "unknown", threshold, f"psql failed: {body[-200:] or f'exit {code}'}")
    try:
        data = json.loads(body.splitlines()[-1])
        archiver = dict(data.get("archiver") or {})
        mode = str(data.get("archive_mode") or "")
    except (ValueError, IndexError, AttributeError):
        return Check(name, RED, "unknown", threshold, "psql printed something that is not JSON")
    if archiver_failing(archiver):
        return Check(name, RED, "failing", threshold, describe_archiver(archiver))
    detail = describe_archiver(archiver)
    if mode == "off":
        # Nothing fails, but nothing is archived either: worth a look on a host with an archive.
        return Check(name, YELLOW, "off", threshold, f"archive_mode is off; {detail}")
    if archiver.get("last_archived_wal"):
        detail += f"; last archived {archiver['last_archived_wal']} at {archiver.get('last_archived_time')}"
    return Check(name, GREEN, "archiving", threshold, detail)


# --- S3 (from the controller) ---------------------------------------------------------------------


def newest_s3_object(url: str, host_vars: Mapping[str, Any]) -> tuple[float | None, str]:
    """(LastModified of the newest object under s3://bucket/prefix, error)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=str(host_vars["s3_endpoint_url"]) if host_vars.get("s3_endpoint_url") else None,
            region_name=str(host_vars.get("s3_region") or "us-east-1"),
            config=s3client.Bounds.from_vars(host_vars).config(),  # a hung endpoint: bounded wait
        )
        newest: float | None = None
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents") or []:
                stamp = item["LastModified"].timestamp()
                newest = stamp if newest is None or stamp > newest else newest
        return newest, ""
    except (BotoCoreError, ClientError, UsageError) as exc:
        return None, f"S3: {exc}"[:200]


# --- the remediation -----------------------------------------------------------------------------


class Health(Remediation):
    task: ClassVar[str] = "health"
    cron_safe: ClassVar[bool] = True
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def __init__(self, services: Sequence[str] = ()) -> None:
        self.services = tuple(services)

    def validate(self, host: Host) -> None:
        super().validate(host)
        Settings.from_host(host, self.services)

    def run(self, ctx: HostContext) -> None:
        settings = Settings.from_host(ctx.host, self.services)
        with ctx.step("facts") as step:
            result = ctx.remote.run(facts_command(settings), timeout=120)
            if not result.ok:
                raise HostError(
                    f"gathering health facts failed (exit {result.exit_code}): {result.tail()}", result
                )
            facts = parse_facts(result.stdout)
            step.done(Status.OK, "gathered in one round trip")
        s3_newest, s3_error = (None, "")
        if settings.backup_s3:
            s3_newest, s3_error = newest_s3_object(settings.backup_s3, ctx.host.vars)
        checks = evaluate(settings, facts, s3_newest, s3_error)
        for check in checks:
            ctx.record(check.name, check.status, f"{check.colour}: {check.detail}", check=check.to_dict())
        red = [c for c in checks if c.colour == RED]
        yellow = [c for c in checks if c.colour == YELLOW]
        if red:
            ctx.record(
                "health",
                Status.FAILED,
                f"{len(red)} red: " + "; ".join(f"{c.name} ({c.detail})" for c in red),
                red=[c.name for c in red],
            )
        else:
            text = (
                f"all {len(checks)} checks green"
                if not yellow
                else (
                    f"{len(checks) - len(yellow)} green, {len(yellow)} yellow: "
                    + ", ".join(c.name for c in yellow)
                )
            )
            ctx.record("health", Status.OK, text, red=[])


def render_table(run: RunResult, colour: bool = False) -> str:
    """The checks of every host as a table, for a terminal."""
    paint = {GREEN: "\033[32m", YELLOW: "\033[33m", RED: "\033[31m"}
    rows = []
    for host in run.hosts:
        for step in host.steps:
            check = step.data.get("check")
            if not isinstance(check, dict):
                continue
            value = check.get("value")
            rows.append(
                (
                    host.host,
                    str(check["name"]),
                    str(check["colour"]),
                    "-" if value is None else str(value),
                    str(check.get("threshold")),
                    " ".join(str(check.get("detail", "")).split())[:80],
                )
            )
    if not rows:
        return ""
    heads = ("host", "check", "colour", "value", "threshold", "detail")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        if colour:
            cells[2] = f"{paint.get(row[2], '')}{cells[2]}\033[0m"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
