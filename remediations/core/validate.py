"""Bad input, refused in one place before any host is touched.

Two halves:
- the inventory var schema (`VARS`: name → kind, default, example), which the engine checks on every
  selected host before connecting, and through which readers get typed values (`value`);
- the checkers of arguments the tasks share: compose service names, PostgreSQL roles, S3 buckets,
  worker counts, whole numbers and duration bounds (durations themselves: core/units.py).

Every refusal is a UsageError of one line naming what was wrong (the file, host and var for a var)
and what to give instead. A value is shown shortened: it may be 100 kB of hostile text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from remediations.core.errors import UsageError
from remediations.core.inventory import Host

SHOWN_LENGTH = 40


def shown(value: object) -> str:
    """`value` as a message shows it: repr (quotes, escaped newlines and NULs), at most ~40 chars."""
    text = repr(value)
    return text if len(text) <= SHOWN_LENGTH else f"{text[: SHOWN_LENGTH - 4]}…{text[-3:]}"


# --------------------------------------------------------------------------------------------
# Kinds of values: a description for the message and a parser that raises ValueError
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    describe: str  # completes "X is not …"
    parse: Callable[[Any], Any]  # the typed value, or ValueError


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
_WHOLE = re.compile(r"-?[0-9]+\Z")


def _scalar_text(value: Any) -> str:
    """A YAML scalar as text (`ansible_user: 1000` is a name too); lists, mappings, booleans refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError
    return str(value)


def _number(value: Any, whole: bool) -> float:
    if isinstance(value, bool):  # YAML `yes` is a boolean, never the number 1
        raise ValueError
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 30 or not (_WHOLE if whole else _DECIMAL).match(text):
            raise ValueError
        number = float(text)
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise ValueError
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise ValueError
    return number


def number(low: float, high: float | None = None, *, above: bool = False, whole: bool = False,
           unit: str = "") -> Kind:  # fmt: skip
    """A number from `low` (or above it, with `above`) to `high` (None: no bound but finiteness);
    a whole one with `whole`."""
    what = ("a whole number" if whole else "a number") + (f" of {unit}" if unit else "")
    if high is None:
        bound = f"> {low:g}" if above else f"{low:g} or more"
    else:
        bound = f"> {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}"

    def parse(value: Any) -> float | int:
        got = _number(value, whole)
        if (high is not None and got > high) or got < low or (above and got == low):
            raise ValueError
        return int(got) if whole else got

    return Kind(f"{what} {bound}", parse)


def _text(value: Any, *, pattern: re.Pattern[str] | None = None, one_line: bool = True,
          absolute: bool = False, max_length: int = 4096) -> str:  # fmt: skip
    text = _scalar_text(value)
    if not text or len(text) > max_length or "\0" in text or (one_line and _CONTROL.search(text)):
        raise ValueError
    if absolute and not text.startswith("/"):
        raise ValueError
    if pattern is not None and not pattern.fullmatch(text):
        raise ValueError
    return text


def text(describe: str = "one line of text", **rules: Any) -> Kind:
    return Kind(describe, lambda value: _text(value, **rules))


def choice(*options: str) -> Kind:
    def parse(value: Any) -> str:
        got = _scalar_text(value).strip().lower()
        if got not in options:
            raise ValueError
        return got

    return Kind(f"one of {', '.join(options)}", parse)


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    got = _scalar_text(value).strip().lower()
    if got not in _TRUE | _FALSE:
        raise ValueError
    return got in _TRUE


def list_of(item: Kind, describe: str, *, single: bool = False) -> Kind:
    """A list of `item`s (with `single`, one item alone is a list of it)."""

    def parse(value: Any) -> list[Any]:
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError
        return [item.parse(v) for v in value]

    return Kind(describe, parse)


def mapping_of(key: Kind, item: Kind, describe: str) -> Kind:
    def parse(value: Any) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            raise ValueError
        return {key.parse(k): item.parse(v) for k, v in value.items() if v not in (None, "")}

    return Kind(describe, parse)


# Compose's rule for service names; 63 because compose makes the name a DNS alias on its network.
SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
# Compose v2's rule for project names.
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# What needs no quoting in SQL but for `-` and `.`, at most NAMEDATALEN - 1 bytes.
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$.-]{0,62}")
# systemd's characters for unit names (unit-name.c: letters, digits, `:-_.\\`, `@` once before an
# instance); only services are restarted here, and a name given without a suffix is NAME.service.
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\][A-Za-z0-9:_.\\-]*(?:@[A-Za-z0-9:_.\\-]+)?\.service")
UNIT_MAX = 255
ESCALATION_STEPS = ("restart", "stop-start")
WORD = re.compile(r"[^\s\x00-\x1f\x7f]{1,255}")
URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]{1,2000}")
REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+){1,4}")
# S3's rules for (non-legacy) bucket names: 3-63 characters, lower-case letters, digits, dots and
# hyphens, a letter or digit at each end, no "..", not an IP address, none of AWS's reserved forms.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED = re.compile(
    r"(?:xn--|sthree-|amzn-s3-demo-).*|.*(?:-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)|\d+\.\d+\.\d+\.\d+"
)

SERVICE = text("a compose service name (a letter or digit, then letters, digits, _ . -; at most 63)",
               pattern=SERVICE_NAME)  # fmt: skip
WORD_KIND = text("a name without spaces or control characters", pattern=WORD)
LINE = text()
PATH = text("a path (one line)")
ABSOLUTE = text("an absolute path (one line)", absolute=True)
URL_KIND = text("an http:// or https:// URL", pattern=URL)
BOOLEAN = Kind("true or false", _boolean)
PORT = Kind("a port number from 1 to 65535", number(1, 65535, whole=True).parse)
PERCENT = Kind("a percentage from 0 to 100", number(0, 100).parse)


def _bucket(value: Any) -> str:
    got = _scalar_text(value)
    if not BUCKET.fullmatch(got) or ".." in got or _BUCKET_RESERVED.fullmatch(got):
        raise ValueError
    return got


BUCKET_KIND = Kind("an S3 bucket name (3-63 lower-case letters, digits, . and -, a letter or digit at "
                   "each end)", _bucket)  # fmt: skip


_OTHER_UNIT_TYPES = (".socket", ".timer", ".target", ".mount", ".automount", ".swap", ".path", ".slice",
                     ".scope", ".device")


def _unit(value: Any) -> str:
    """A service unit's full name: `ringo-api` is `ringo-api.service`; another unit type is refused."""
    text = _scalar_text(value)
    if not text.endswith(".service"):
        if text.endswith(_OTHER_UNIT_TYPES):
            raise ValueError
        text += ".service"
    if len(text) > UNIT_MAX or not UNIT_NAME.fullmatch(text):
        raise ValueError
    return text


UNIT_KIND = Kind("a systemd service name (letters, digits, : _ . - \\, one @ before an instance; "
                 "NAME or NAME.service)", _unit)  # fmt: skip
UNIT_KEYS = {"health_url", "escalate", "health_timeout"}


def _unit_settings(value: Any) -> dict[str, Any]:
    """One unit's settings in `systemd_units`: {health_url, escalate, health_timeout}, each optional."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping) or set(value) - UNIT_KEYS:
        raise ValueError
    url = value.get("health_url")
    escalate = value.get("escalate", ["restart", "stop-start"])
    escalate = [escalate] if isinstance(escalate, str) else escalate
    if not isinstance(escalate, list) or not escalate or len(set(escalate)) != len(escalate):
        raise ValueError
    if any(step not in ESCALATION_STEPS for step in escalate):
        raise ValueError
    timeout = value.get("health_timeout")
    return {
        "health_url": None if url in (None, "") else URL_KIND.parse(url),
        "escalate": tuple(escalate),
        "health_timeout": None if timeout in (None, "") else number(0, 86400, above=True).parse(timeout),
    }


def _systemd_units(value: Any) -> dict[str, dict[str, Any]]:
    """`systemd_units`: a mapping of unit names to their settings, or a list of names (no settings)."""
    if isinstance(value, list):
        value = {name: None for name in value}
    if not isinstance(value, Mapping):
        raise ValueError
    units = {_unit(name): _unit_settings(settings) for name, settings in value.items()}
    if len(units) != len(value):
        raise ValueError  # `api` and `api.service` both
    return units


SYSTEMD_UNITS = Kind("a mapping of systemd service names to {health_url: URL, escalate: [restart, "
                     "stop-start], health_timeout: seconds}, each optional", _systemd_units)  # fmt: skip
def _service_checks(value: Any) -> dict[str, dict[str, str]]:
    """{name: {verify: COMMAND, expect_same_as: COMMAND}}: each a command line of one line
    (expect_same_as optional), split into words by the task that runs it."""
    if not isinstance(value, Mapping):
        raise ValueError
    checks: dict[str, dict[str, str]] = {}
    for name, spec in value.items():
        if not isinstance(spec, Mapping) or not set(spec) <= {"verify", "expect_same_as"}:
            raise ValueError
        checks[_text(name, pattern=WORD)] = {k: _text(v, max_length=2000) for k, v in spec.items()
                                             if k == "verify" or v not in (None, "")}  # fmt: skip
        if "verify" not in checks[str(name)]:
            raise ValueError
    return checks


SERVICE_CHECKS = Kind("a mapping of check names to {verify: COMMAND, expect_same_as: COMMAND}",
                      _service_checks)  # fmt: skip


@dataclass(frozen=True)
class Var:
    kind: Kind
    example: str
    default: Any = None


DAY = 86400.0
VARS: dict[str, Var] = {
    # how to reach the host (the engine, connection)
    "ansible_host": Var(WORD_KIND, "10.0.0.3"),
    "ansible_port": Var(PORT, "22"),
    "ansible_user": Var(WORD_KIND, "deploy"),
    "ansible_connection": Var(choice("ssh", "local", "paramiko", "smart"), "ssh"),
    # the older names Ansible still honours (the later name wins, as in Host.address/port/user)
    "ansible_ssh_host": Var(WORD_KIND, "10.0.0.3"),
    "ansible_ssh_port": Var(PORT, "22"),
    "ansible_ssh_user": Var(WORD_KIND, "deploy"),
    "ansible_private_key_file": Var(PATH, "~/.ssh/id_ed25519"),
    "ansible_become": Var(BOOLEAN, "true", False),
    "ansible_become_user": Var(WORD_KIND, "root", "root"),
    "ansible_ssh_private_key_file": Var(PATH, "~/.ssh/id_ed25519"),
    "ansible_ssh_common_args": Var(text("text without NUL", one_line=False), "-o ProxyJump=bastion"),
    "lock_dir": Var(ABSOLUTE, "/run/lock"),
    "run_deadline": Var(number(0, 7 * DAY, above=True, unit="seconds"), "900"),
    "state_dir": Var(ABSOLUTE, "/var/lib/remediations"),
    "audit_log": Var(PATH, "/var/log/remediations/audit.jsonl"),
    "secret_vars": Var(list_of(WORD_KIND, "a list of variable names"), "[LICENSE_BLOB]", ()),
    "notify_environment": Var(WORD_KIND, "prod"),
    "notify_on": Var(choice("changes", "failures", "always", "never"), "failures"),
    "notify_slack_webhook": Var(URL_KIND, "https://hooks.slack.com/services/…"),
    "notify_telegram_api": Var(URL_KIND, "https://api.telegram.org"),
    "notify_telegram_bot_token": Var(WORD_KIND, "123456:ABC…"),
    "notify_telegram_chat_id": Var(WORD_KIND, "-1001234567890"),
    # the compose project (restart-api, ensure-healthy, set-env, rollback, rotations, health)
    "compose_project_dir": Var(PATH, "/srv/shop"),
    "compose_project_name": Var(
        text("a compose project name (lower-case letters, digits, - and _)", pattern=PROJECT_NAME), "shop"
    ),
    # unset: no -f, compose finds its files in the directory as by hand (README, "Compose files")
    "compose_files": Var(list_of(PATH, "a file name or a list of file names", single=True), "[compose.yaml]"),
    "api_service": Var(SERVICE, "api"),
    "api_health_url": Var(URL_KIND, "http://127.0.0.1:8080/health"),
    # each service's own health URL: restart-api, ensure-healthy, set-env, rollback, health
    "health_urls": Var(mapping_of(SERVICE, URL_KIND, "a mapping of service names to http(s) URLs"),
                       "{worker: 'http://127.0.0.1:8081/health'}", {}),
    "health_timeout": Var(number(0, DAY, above=True, unit="seconds"), "60", 60.0),
    "stop_timeout": Var(number(0, DAY, whole=True, unit="seconds"), "10", 10),
    "env_files": Var(mapping_of(SERVICE, PATH, "a mapping of service names to env file paths"),
                     "{api: .env}", {}),
    "env_backups_keep": Var(number(1, 1000, whole=True), "10", 10),
    # systemd services (restart-service, ensure-healthy, health)
    "systemd_units": Var(SYSTEMD_UNITS, "{ringo-api: {health_url: 'http://127.0.0.1:8000/health'}}", {}),
    # run-in-service --verify-check NAME: the verifies of commands run in a service
    "service_checks": Var(SERVICE_CHECKS, "{migrations: {verify: alembic current, expect_same_as: alembic "
                          "heads}}", {}),
    # PostgreSQL
    "postgres_port": Var(PORT, "5432", 5432),
    "postgres_tcp_host": Var(WORD_KIND, "127.0.0.1", "127.0.0.1"),
    "postgres_admin_user": Var(text("a PostgreSQL role name", pattern=ROLE_NAME), "postgres", "postgres"),
    "postgres_admin_passfile": Var(PATH, "~/.pgpass"),
    "postgres_login_database": Var(WORD_KIND, "postgres", "postgres"),
    "postgres_sslmode": Var(choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
                            "prefer", "prefer"),
    "postgres_os_user": Var(WORD_KIND, "postgres"),
    "postgres_bin_dir": Var(ABSOLUTE, "/usr/lib/postgresql/15/bin"),
    "postgres_socket_dir": Var(ABSOLUTE, "/var/run/postgresql"),
    # how the cluster is run (restart-db, db-health): a systemd unit, or pg_ctl on its data directory
    "postgres_unit": Var(UNIT_KIND, "postgresql@15-main"),
    "postgres_data_dir": Var(ABSOLUTE, "/var/lib/postgresql/15/main"),
    "postgres_log_file": Var(ABSOLUTE, "/var/log/postgresql/postgresql-15-main.log"),
    "postgres_start_timeout": Var(number(0, DAY, above=True, unit="seconds"), "120", 120.0),
    # backups, WAL archive, the restore drill, disk cleanup, the health check
    "backup_s3_bucket": Var(BUCKET_KIND, "shop-backups"),
    "wal_s3_bucket": Var(BUCKET_KIND, "shop-wal"),
    "wal_s3_prefix": Var(LINE, "wal/"),
    "dump_s3_prefix": Var(LINE, "dumps/"),
    "basebackup_s3_prefix": Var(LINE, "basebackups/"),
    "wal_archive_dir": Var(ABSOLUTE, "/var/lib/postgresql/wal-archive"),
    "wal_archive_suffix": Var(LINE, ".gz"),
    "wal_keep_base_backups": Var(number(1, 1000, whole=True), "2"),
    "wal_s3_readback_max": Var(number(0, 100000, whole=True), "64"),
    "health_pg_archiver": Var(BOOLEAN, "true"),
    "backup_dir": Var(PATH, "/var/backups/shop"),
    "backup_local_dir": Var(PATH, "/var/backups/postgresql"),
    "backup_glob": Var(LINE, "'*.dump'"),
    "backup_local_dump_glob": Var(LINE, "'*.dump'"),
    "backup_s3_url": Var(LINE, "s3://shop-backups/db/"),
    "backup_rpo_hours": Var(number(0, 87600, above=True, unit="hours"), "26"),
    "backup_keep_newest": Var(number(0, whole=True), "3"),
    "backup_max_age_days": Var(number(0, 36500, unit="days"), "7"),
    "dump_min_bytes": Var(number(0, above=True, unit="bytes"), "1048576"),
    "basebackup_min_bytes": Var(number(0, above=True, unit="bytes"), "1048576"),
    "health_backup_max_age_hours": Var(number(0, 87600, unit="hours"), "26"),
    "health_disk_warn_pct": Var(PERCENT, "80"),
    "health_disk_max_pct": Var(PERCENT, "90"),
    "health_log_errors_max": Var(number(0, whole=True), "0"),
    "restore_test_json": Var(PATH, "/var/lib/remediations/restore-test/{host}.json"),
    "restore_test_metrics": Var(PATH, "/var/lib/node_exporter/restore_test_{host}.prom"),
    "restore_test_notify_success": Var(BOOLEAN, "true", False),
    # S3 and AWS (controller-side tasks)
    "s3_endpoint_url": Var(URL_KIND, "https://s3.eu-west-1.amazonaws.com"),
    "aws_endpoint_url": Var(URL_KIND, "https://iam.amazonaws.com"),
    "iam_endpoint_url": Var(URL_KIND, "https://iam.amazonaws.com"),
    "sts_endpoint_url": Var(URL_KIND, "https://sts.eu-west-1.amazonaws.com"),
    "s3_region": Var(text("an AWS region name", pattern=REGION), "eu-west-1"),
    "aws_region": Var(text("an AWS region name", pattern=REGION), "eu-west-1"),
    "aws_profile": Var(WORD_KIND, "shop-admin"),
    "aws_verify_bucket": Var(BUCKET_KIND, "shop-assets"),
    "aws_key_propagation_timeout": Var(number(0, 3600, above=True, unit="seconds"), "60"),
    "s3_connect_timeout": Var(number(0.1, 600, unit="seconds"), "5"),
    "s3_read_timeout": Var(number(0.1, 3600, unit="seconds"), "30"),
    "s3_max_attempts": Var(number(1, 10, whole=True), "3"),
    "s3_progress_interval": Var(number(0.1, 3600, unit="seconds"), "10"),
    "progress_interval": Var(number(0.01, 3600, unit="seconds"), "60", 60.0),
    "s3_noncurrent_retention_days": Var(number(1, 36500, whole=True, unit="days"), "30", 30),
    # firewall, cron
    "firewall_state_dir": Var(ABSOLUTE, "/var/lib/remediations"),
    "cron_project_dir": Var(ABSOLUTE, "/opt/remediations"),
    "cron_inv": Var(ABSOLUTE, "/opt/remediations/.venv/bin/inv"),
    "cron_inventory": Var(ABSOLUTE, "/opt/remediations/inventories/prod.yml"),
}


def _bad_var(host: Host, name: str, raw: Any) -> UsageError:
    var = VARS[name]
    return UsageError(f"{host.source}: host {host.name}: {name}: {shown(raw)} is not {var.kind.describe} "
                      f"(e.g. {var.example})")  # fmt: skip


def _unset(raw: Any) -> bool:
    """`var:` and `var: ""` leave a var unset, as Host.require and the readers' `or default` take them."""
    return raw is None or raw == ""


def check_vars(host: Host) -> None:
    """UsageError for the first var of `host` that is set but not of its kind (unset is fine: the
    default applies). Vars outside the schema are left alone: an inventory carries others too."""
    for name, var in VARS.items():
        raw = host.vars.get(name)
        if _unset(raw):
            continue
        try:
            var.kind.parse(raw)
        except (ValueError, TypeError):
            raise _bad_var(host, name, raw) from None


def value(host: Host, name: str) -> Any:
    """The typed value of a var of the schema, or its default when it is unset."""
    raw = host.vars.get(name)
    if _unset(raw):
        return VARS[name].default
    try:
        return VARS[name].kind.parse(raw)
    except (ValueError, TypeError):
        raise _bad_var(host, name, raw) from None


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------

MAX_WORKERS = 64
MAX_DURATION = 36500 * 86400  # 100 years: beyond it a date overflows, and no duration here needs it
MAX_LOCK_WAIT = 86400.0


def check_service(name: object, flag: str = "--service") -> str:
    """A compose service name, or UsageError (a name that could never exist never reaches a host)."""
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise UsageError(f"{flag} {shown(name)}: not a compose service name (a letter or digit, then "
                         "letters, digits, _ . -; at most 63 characters)")  # fmt: skip
    return name


def check_unit(name: object, flag: str = "--unit") -> str:
    """A systemd service's full name (`NAME` is `NAME.service`), or UsageError: a name that could not
    be a unit never reaches a host."""
    try:
        return _unit(name)
    except (ValueError, TypeError):
        raise UsageError(f"{flag} {shown(name)}: not {UNIT_KIND.describe}") from None


def check_services(names: Iterable[object], flag: str = "--service") -> list[str]:
    return [check_service(n, flag) for n in names]


# Roles a password rotation must never touch: the bootstrap superuser and PostgreSQL's own.
RESERVED_ROLES = frozenset({"postgres", "public", "current_user", "current_role", "session_user", "none"})


def check_role(role: object, admin_user: str | None = None, flag: str = "--role") -> str:
    """A PostgreSQL login role a rotation may change: a plain name, not the superuser this task
    connects as, not `postgres`, not one of PostgreSQL's reserved (pg_*) roles."""
    if not isinstance(role, str) or not ROLE_NAME.fullmatch(role):
        raise UsageError(f"{flag} {shown(role)}: give the name of a PostgreSQL login role (a letter or _, "
                         "then letters, digits, _ $ . -; at most 63 characters)")  # fmt: skip
    lowered = role.lower()
    if lowered in RESERVED_ROLES or lowered.startswith("pg_") or (admin_user and role == admin_user):
        raise UsageError(f"{flag} {role}: a superuser or reserved role (the admin role this task "
                         "connects as, postgres, pg_*); rotate it by hand")  # fmt: skip
    return role


def check_bucket(bucket: object, flag: str = "--bucket") -> str:
    """An S3 bucket name by S3's naming rules (legacy names with capitals or _ are not accepted)."""
    try:
        return _bucket(bucket)
    except ValueError:
        raise UsageError(f"{flag} {shown(bucket)}: not {BUCKET_KIND.describe}") from None


def check_count(value: object, flag: str, low: int = 1, high: int | None = None) -> int:
    """A whole number from `low` (to `high`), from a flag's text or an int."""
    try:
        return int(number(low, high, whole=True).parse(value))
    except (ValueError, TypeError):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise UsageError(f"{flag} {shown(value)}: give a whole number {span}") from None


def check_workers(value: object, flag: str = "--workers") -> int:
    """Copies in flight at once: 1 to MAX_WORKERS (each holds a thread and an HTTP connection)."""
    return check_count(value, flag, 1, MAX_WORKERS)


def check_duration(seconds: float, flag: str, text: object) -> float:
    """`seconds` parsed from `text`, refused past MAX_DURATION (and when not finite)."""
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION:
        raise UsageError(f"{flag} {shown(text)}: too long; give at most {MAX_DURATION // 86400}d")
    return seconds
