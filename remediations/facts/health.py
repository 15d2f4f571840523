"""The health check's settings and facts: what to check on one host (from its vars, validated before
any host is touched), the one shell command that gathers every fact, and its pure parser.

The command prints, in marked sections: every container of the compose project (`docker inspect`),
the count of error lines in each one's logs over the last 24 h, the HTTP health URL fetched on the
host, `stat -f` of the filesystems that matter, the newest file in the backup directory, the
configured dependency probes (TCP ports, HTTP URLs, Prometheus metrics endpoints) tried from the
host, and on a WAL-archiving PostgreSQL host pg_stat_archiver (psql as the database's OS user).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.units import check_non_negative, check_percent
from remediations.core.validate import shown
from remediations.facts.compose import Container, Project, config_error, health_urls, record_path
from remediations.facts.disk import check_backup_dir
from remediations.facts.fs import STAT_FS_FORMAT, FsUsage, fs_snippet
from remediations.facts.metrics import Rule, Scrape, parse_rules, scrape_command
from remediations.facts.postgres import ARCHIVER_JSON_SQL, AS_USER, PgTarget
from remediations.facts.sections import MARK, Section, parse_sections
from remediations.facts.systemd import UnitFacts, UnitSettings, listed_units
from remediations.facts.systemd import facts_command as units_command
from remediations.facts.systemd import parse_facts as parse_units

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
class Probe:
    name: str
    kind: str  # "tcp" | "http" | "metrics"
    target: str  # host:port or URL
    rules: tuple[Rule, ...] = ()  # a metrics probe's thresholds (facts.metrics)


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
    service_urls: tuple[tuple[str, str], ...] = ()  # (service, its own URL) from health_urls
    record: str | None = None  # the image record's path, read with the containers (see image_record)
    units: tuple[UnitSettings, ...] = ()  # systemd services (systemd_units, or --unit)

    @classmethod
    def from_host(
        cls, host: Host, only_services: Sequence[str] = (), only_units: Sequence[str] = ()
    ) -> Settings:
        where = host.name
        project = Project.from_host(host) if host.get("compose_project_dir") else None
        services = _services(host, project, only_services)
        if only_units and not only_services:
            services = ()  # --unit alone: only those units
        units = tuple(UnitSettings.of(host, u) for u in only_units) if only_units else (
            () if only_services else tuple(listed_units(host)))  # fmt: skip
        disk_warn, disk_max = _disk_limits(host)
        backup_dir = host.get("backup_dir")
        backup_dir = check_backup_dir(backup_dir, where) if backup_dir not in (None, "") else None
        s3 = host.get("backup_s3_url")
        if s3 not in (None, "") and not str(s3).startswith("s3://"):
            raise UsageError(f"{where}: backup_s3_url {s3!r} must look like s3://bucket/prefix")
        return cls(
            project=project,
            services=services,
            http_url=str(host.get("api_health_url")) if host.get("api_health_url") else None,
            disk_paths=_disk_paths(host, backup_dir),
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
            probes=_probes(host.get("health_probes") or [], f"{host.source}: host {where}"),
            pg_archiver=_pg_archiver(host, where),
            service_urls=_service_urls(host, project, services),
            record=record_path(host) if project is not None else None,
            units=units,
        )


def _services(host: Host, project: Project | None, only_services: Sequence[str]) -> tuple[str, ...] | None:
    """The services to check: health_services (None: every one the project has), narrowed by --service."""
    where = host.name
    configured = host.get("health_services")
    services: tuple[str, ...] | None = None
    if configured is not None:
        if isinstance(configured, str) or not isinstance(configured, list):
            raise UsageError(f"{where}: health_services must be a list of service names")
        services = tuple(str(s) for s in configured)
    for name in (*only_services, *(services or ())):
        if not SERVICE_NAME.match(name):
            raise UsageError(f"{where}: {name!r} is not a compose service name")
    if not only_services:
        return services
    unknown = [s for s in only_services if services is not None and s not in services]
    if unknown:
        raise UsageError(
            f"{where}: unknown service {', '.join(unknown)} (health_services: {', '.join(services or ())})"
        )
    if project is None:
        raise UsageError(f"{where}: --service needs compose_project_dir")
    return tuple(only_services)


def _service_urls(
    host: Host, project: Project | None, services: tuple[str, ...] | None
) -> tuple[tuple[str, str], ...]:
    """Each checked service's own health URL (`health_urls`), but the api's `api_health_url`,
    which is checked as it always was."""
    if project is None or services == ():
        return ()
    api_url = host.get("api_health_url")
    urls = sorted(health_urls(host).items())
    return tuple((s, u) for s, u in urls if u != api_url and (services is None or s in services))


def _disk_limits(host: Host) -> tuple[float, float]:
    where = host.name
    warn = host.get("health_disk_warn_pct", DEFAULT_DISK_WARN)
    high = host.get("health_disk_max_pct", DEFAULT_DISK_MAX)
    disk_warn = check_percent(warn, f"{where}: health_disk_warn_pct")
    disk_max = check_percent(high, f"{where}: health_disk_max_pct")
    if disk_warn > disk_max:
        raise UsageError(
            f"{where}: health_disk_warn_pct {disk_warn:g} is above health_disk_max_pct {disk_max:g}"
        )
    return disk_warn, disk_max


def _disk_paths(host: Host, backup_dir: str | None) -> tuple[str, ...]:
    paths = host.get("health_disk_paths")
    if paths is None:
        paths = ["/", *(p for p in (backup_dir, host.get("wal_archive_dir")) if p)]
    if isinstance(paths, str) or not all(str(p).startswith("/") for p in paths):
        raise UsageError(f"{host.name}: health_disk_paths must be a list of absolute paths")
    return tuple(dict.fromkeys(str(p) for p in paths))


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


PROBE_KINDS = ("tcp", "http", "metrics")
METRICS_KEYS = {"name", "metrics", "red", "yellow"}


def _probes(raw: object, where: str) -> tuple[Probe, ...]:
    if not isinstance(raw, list):
        raise UsageError(
            f"{where}: health_probes must be a list of {{name, tcp: host:port}}, {{name, http: url}} "
            "or {name, metrics: url, red: [rules]}"
        )
    probes = []
    for item in raw:
        if not isinstance(item, dict) or len(set(PROBE_KINDS) & item.keys()) != 1:
            raise UsageError(f"{where}: health_probes entry {shown(item)} needs exactly one of tcp, http "
                             "or metrics")  # fmt: skip
        kind = next(k for k in PROBE_KINDS if k in item)
        target = str(item[kind])
        if kind == "tcp" and not (HOST_PORT.match(target) and 0 < int(target.rsplit(":", 1)[1]) < 65536):
            raise UsageError(f"{where}: health_probes tcp {target!r}: give host:port")
        if kind != "tcp" and not _one_line_url(target):
            raise UsageError(f"{where}: health_probes {kind} {shown(target)}: give an http:// or https:// "
                             "URL on one line")  # fmt: skip
        name = str(item.get("name") or target)
        rules: tuple[Rule, ...] = ()
        if kind == "metrics":
            unknown = sorted(str(k) for k in item.keys() - METRICS_KEYS)
            if unknown:
                keys = ", ".join(shown(k) for k in unknown)
                raise UsageError(f"{where}: health_probes metrics {shown(name)}: unknown key(s) {keys} "
                                 "(it takes name, metrics, red, yellow)")  # fmt: skip
            rules = parse_rules(item, f"{where}: health_probes metrics {shown(name)}")
        if _CONTROL_CHARS.search(name) or len(name) > 100:
            raise UsageError(f"{where}: health_probes name {shown(name)}: one line, at most 100 characters")
        probes.append(Probe(name, kind, target, rules))
    return tuple(probes)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _one_line_url(target: str) -> bool:
    return bool(re.match(r"^https?://[^\s]+$", target)) and not _CONTROL_CHARS.search(target)


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
    compose = settings.project is not None and settings.services != ()
    if compose:
        lines += _compose_lines(settings)
        if settings.record:
            lines.append(f"echo '{MARK}record'; cat {q(settings.record)} 2>/dev/null || :")
    if settings.http_url:
        lines += [_fetch(settings.http_url), f'echo "{MARK}http $rc"; printf "%s\\n" "$out" | head -c 300']
    for service, url in settings.service_urls:
        lines += [_fetch(url), f'echo "{MARK}http:{service} $rc"; printf "%s\\n" "$out" | head -c 300']
    for path in settings.disk_paths:
        lines.append(
            f"if [ -e {q(path)} ]; then {fs_snippet(path)}; else echo {q(MARK + 'fs ' + path)}; "
            "echo 'does not exist'; fi"
        )
    if compose:
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
    if settings.units:
        lines.append(units_command(settings.units))
    return "\n".join(lines + _probe_lines(settings.probes))


def _compose_lines(settings: Settings) -> list[str]:
    """The project's containers (`docker inspect`) and the error lines in each one's recent logs."""
    q = shlex.quote
    p = settings.project
    assert p is not None
    return [
        f"if cd {q(p.directory)} 2>/dev/null; then",
        "  if docker compose version >/dev/null 2>&1; then v=v2; "
        "elif docker-compose version >/dev/null 2>&1; then v=v1; else v=none; fi",
        f'  echo "{MARK}compose $v"',
        # The services compose's configuration defines (its check of that configuration too: a
        # problem there is said in compose's words), then the containers.
        "  case $v in",
        f"    v2) svc=$({shlex.join(p.argv('v2', 'config', '--services'))} 2>&1); src=$? ;;",
        f"    v1) svc=$({shlex.join(p.argv('v1', 'config', '--services'))} 2>&1); src=$? ;;",
        "    *) svc= src=0 ;;",
        "  esac",
        f'  echo "{MARK}services $src"; printf "%s\\n" "$svc"',
        '  [ "$src" = 0 ] || v=skip',
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


def _probe_lines(probes: Sequence[Probe]) -> list[str]:
    lines: list[str] = []
    for index, probe in enumerate(probes):
        if probe.kind == "tcp":
            lines += [_tcp(probe.target), f'echo "{MARK}probe {index} $rc"']
        elif probe.kind == "metrics":
            lines.append(scrape_command(index, probe.target, PROBE_TIMEOUT))
        else:
            lines += [
                _fetch(probe.target),
                f'echo "{MARK}probe {index} $rc"; printf "%s\\n" "$out" | head -c 200',
            ]
    return lines


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
    services: tuple[str, ...] | None = None  # what the compose configuration defines (None: not read)
    service_http: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # service -> its URL's answer
    record: str | None = None  # the image record file's text, when it was read
    metrics: Mapping[int, Scrape] = field(default_factory=dict)  # probe index -> its scrape
    units: tuple[UnitFacts, ...] = ()  # the systemd units' facts, in the order of Settings.units


def parse_facts(output: str, units: Sequence[UnitSettings] = ()) -> HealthFacts:
    """Pure parser of `facts_command` output (`units`: the settings' systemd units)."""
    parsed = _Parsed()
    for section in parse_sections(output):
        parsed.add(section)
    return HealthFacts(
        parsed.now,
        parsed.compose,
        parsed.project_missing,
        tuple(parsed.containers),
        parsed.log_errors,
        parsed.http,
        tuple(parsed.filesystems),
        parsed.newest_backup,
        parsed.backup_missing,
        parsed.probes,
        parsed.error,
        parsed.pg_archiver,
        parsed.services,
        parsed.service_http,
        parsed.record,
        parsed.metrics,
        tuple(parse_units(units, output)) if units else (),
    )


@dataclass
class _Parsed:
    """The facts read so far, one section at a time."""

    now: float = 0.0
    compose: str | None = None
    project_missing: bool = False
    containers: list[tuple[str, Container]] = field(default_factory=list)
    log_errors: dict[str, int] = field(default_factory=dict)
    http: tuple[int, str] | None = None
    filesystems: list[tuple[str, FsUsage | str]] = field(default_factory=list)
    newest_backup: float | None = None
    backup_missing: bool = False
    probes: dict[int, tuple[int, str]] = field(default_factory=dict)
    error: str = ""
    pg_archiver: tuple[int, str] | None = None
    services: tuple[str, ...] | None = None
    service_http: dict[str, tuple[int, str]] = field(default_factory=dict)
    record: str | None = None
    metrics: dict[int, Scrape] = field(default_factory=dict)

    def add(self, s: Section) -> None:
        if s.name == "metrics":
            index, code, size = ([*s.arg.split(" "), "", "", ""])[:3]
            self.metrics[_int(index)] = Scrape.from_section(_int(code), size, s.body)
        elif s.name == "record":
            self.record = s.body
        elif s.name == "now":
            self.now = float(s.body.strip() or 0)
        elif s.name == "compose":
            self.compose = s.arg
        elif s.name == "noproject":
            self.project_missing = True
        elif s.name == "services":
            if s.arg != "0":
                self.error = config_error(s.body, s.arg)
            else:
                self.services = tuple(line.strip() for line in s.body.splitlines() if _is_service(line))
        elif s.name == "ps" and s.arg != "0" and s.body.strip() and not self.error:
            self.error = f"compose ps failed: {s.body.strip()[-300:]}"
        elif s.name == "inspect" and s.body.strip():
            self._inspect(s.body)
        elif s.name == "logs":
            count = s.body.strip().splitlines()[-1:] or ["0"]
            self.log_errors[s.arg[:12]] = int(count[0]) if count[0].isdigit() else 0
        elif s.name == "http":
            self.http = (_int(s.arg), s.body.strip())
        elif s.name.startswith("http:"):
            self.service_http[s.name.removeprefix("http:")] = (_int(s.arg), s.body.strip())
        elif s.name == "fs":
            try:
                self.filesystems.append((s.arg, FsUsage.parse(s.arg, s.body)))
            except ValueError:
                self.filesystems.append((s.arg, s.body.strip() or "no data"))
        elif s.name == "backup":
            text = s.body.strip()
            if text == "missing":
                self.backup_missing = True
            elif text:
                self.newest_backup = float(text)
        elif s.name == "probe":
            index, _, code = s.arg.partition(" ")
            self.probes[_int(index)] = (_int(code), s.body.strip())
        elif s.name == "pgarchiver":
            self.pg_archiver = (_int(s.arg), s.body.strip())

    def _inspect(self, body: str) -> None:
        try:
            for data in json.loads(body):
                labels = (data.get("Config") or {}).get("Labels") or {}
                service = str(labels.get("com.docker.compose.service", ""))
                self.containers.append((service, Container.from_inspect(data)))
        except (ValueError, TypeError, AttributeError):
            self.error = "docker inspect printed something that is not JSON"


def _is_service(line: str) -> bool:
    """A line of `config --services` that is a service name (2>&1 mixes compose's warnings in)."""
    return bool(SERVICE_NAME.fullmatch(line.strip()))


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 1
