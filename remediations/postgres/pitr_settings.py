"""restore-pitr's settings: its inventory vars, validated before any host is touched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from remediations.actions import pitr_host as hostside
from remediations.actions.pg_checks import TABLE_RE
from remediations.core import units
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.facts.postgres import PgTarget, positive_number
from remediations.postgres import restore_drill

NOTHING = "nothing changed"
MIB = 1024 * 1024
DEFAULT_PART_MIB, MIN_PART_MIB, MAX_PART_MIB = 1024, 1, 5 * 1024  # one PUT is at most 5 GiB
DEFAULT_JSON = "/var/lib/remediations/restore-pitr-{host}.json"
DEFAULT_METRICS = "/var/lib/prometheus/node-exporter/restore_pitr_{host}.prom"


def refuse(why: str) -> HostError:
    """A refusal before anything was touched."""
    return HostError(f"{why}; {NOTHING}")


def target_time(value: Any, flag: str) -> float:
    return units.parse_timestamp(value, flag)


@dataclass(frozen=True)
class Settings:
    archive_dir: str
    base_dir: str
    spare_port: int
    recovery_timeout: float
    check_database: str
    checks: restore_drill.Settings
    json_path: str
    metrics_path: str
    log_file: str  # for pg_ctl start of the cluster ("" → beside the data directory)
    start_command: str
    stop_command: str
    s3: hostside.S3Source | None = None  # the archive's copy in S3, a second source of segments
    s3_bucket: str = ""
    s3_prefix: str = ""
    base_s3: BaseS3 | None = None  # base backups in S3 (with pitr_s3_credentials_file)


def credentials_file(host: Host) -> str:
    """pitr_s3_credentials_file ("" when unset); bad input when it is not an absolute path."""
    credentials = str(host.get("pitr_s3_credentials_file") or "")
    if credentials and not credentials.startswith("/"):
        raise UsageError(
            f"{host.source}: host {host.name}: pitr_s3_credentials_file must be an absolute path on the host"
        )
    return credentials


def _url(host: Host, bucket: str, prefix: str, credentials: str) -> hostside.S3Source:
    region = str(host.get("s3_region") or "us-east-1")
    endpoint = str(host.get("s3_endpoint_url") or "").rstrip("/")
    base = f"{endpoint}/{bucket}" if endpoint else f"https://{bucket}.s3.{region}.amazonaws.com"
    return hostside.S3Source(f"{base}/{quote(prefix, safe='/')}", credentials, region)


def s3_source(host: Host, where: str = "") -> tuple[hostside.S3Source | None, str, str]:
    """With pitr_s3_credentials_file: the S3 copy of the archive (wal_s3_bucket, wal_s3_prefix)."""
    credentials = credentials_file(host)
    if not credentials:
        return None, "", ""
    bucket = str(host.get("wal_s3_bucket") or host.get("backup_s3_bucket") or "")
    if not bucket:
        host.require("wal_s3_bucket")
    prefix = str(host.get("wal_s3_prefix", "wal/") or "")
    return _url(host, bucket, prefix, credentials), bucket, prefix


@dataclass(frozen=True)
class BaseS3:
    """Where base-backup uploads base backups and restore-pitr finds them in S3."""

    source: hostside.S3Source  # url = the prefix's URL
    bucket: str
    prefix: str
    part_size: int


def base_s3(host: Host) -> BaseS3 | None:
    """With pitr_s3_credentials_file and backup_s3_bucket: basebackup_s3_prefix (default
    basebackups/) in that bucket, in parts of basebackup_s3_part_size bytes; else None."""
    where = f"{host.source}: host {host.name}"
    credentials, bucket = credentials_file(host), str(host.get("backup_s3_bucket") or "")
    if not credentials or not bucket:
        return None
    prefix = str(host.get("basebackup_s3_prefix") or "basebackups/")
    if not prefix.endswith("/") or prefix.startswith("/") or ".." in prefix.split("/"):
        raise UsageError(f"{where}: basebackup_s3_prefix {prefix!r} must be a folder ending in '/'")
    raw = host.get("basebackup_s3_part_size", DEFAULT_PART_MIB * MIB)
    try:
        part = int(raw)
    except (TypeError, ValueError):
        part = -1
    if isinstance(raw, bool) or part % MIB or not MIN_PART_MIB * MIB <= part <= MAX_PART_MIB * MIB:
        raise UsageError(
            f"{where}: basebackup_s3_part_size must be bytes, a whole number of MiB from "
            f"{MIN_PART_MIB} MiB to {MAX_PART_MIB // 1024} GiB, got {raw!r}"
        )
    return BaseS3(_url(host, bucket, prefix, credentials), bucket, prefix, part)


def settings(host: Host) -> Settings:
    where = f"{host.source}: host {host.name}"
    archive_dir, base_dir = str(host.require("wal_archive_dir")), str(host.require("basebackup_local_dir"))
    for name, path in (("wal_archive_dir", archive_dir), ("basebackup_local_dir", base_dir)):
        if not path.startswith("/"):
            raise UsageError(f"{where}: {name} must be an absolute path")
    pg = PgTarget.from_host(host)
    spare = host.get("pitr_spare_port", pg.port + 1)
    if (
        isinstance(spare, bool)
        or not isinstance(spare, int)
        or not 1024 <= spare <= 65535
        or spare == pg.port
    ):
        raise UsageError(
            f"{where}: pitr_spare_port must be a free port number other than postgres_port, got {spare!r}"
        )
    raw = host.get("pitr_check_tables") or {}
    if not isinstance(raw, dict) or not all(TABLE_RE.match(str(t)) for t in raw):
        raise UsageError(f"{where}: pitr_check_tables must map [schema.]table names to minimum row counts")
    try:
        tables = {str(t): int(n or 0) for t, n in raw.items()}
    except (TypeError, ValueError):
        raise UsageError(f"{where}: pitr_check_tables: give each table a row count") from None
    checks = restore_drill.Settings("", "", "", tables, "", 1.0, "", "", False)
    database = str(host.get("pitr_check_database") or "postgres")
    if not restore_drill.NAME_RE.match(database):
        raise UsageError(f"{where}: pitr_check_database {database!r} must be a plain lower-case name")
    return Settings(
        archive_dir.rstrip("/"),
        base_dir.rstrip("/"),
        spare,
        positive_number(host, "pitr_recovery_timeout", 3600),
        database,
        checks,
        str(host.get("restore_pitr_json") or DEFAULT_JSON).replace("{host}", host.name),
        str(host.get("restore_pitr_metrics") or DEFAULT_METRICS).replace("{host}", host.name),
        str(host.get("postgres_log_file") or ""),
        str(host.get("postgres_start_command") or ""),
        str(host.get("postgres_stop_command") or ""),
        *s3_source(host, where),
        base_s3(host),
    )


DEFAULT_RESTORE_DIR = "/var/lib/postgresql/restore-pitr"


@dataclass(frozen=True)
class Onto:
    """The restore host of `--drill --onto HOST`: it restores from S3 only (the base backup and the
    WAL), into pitr_restore_dir, on its own spare port and a socket in the restore's directory."""

    host: Host
    pg: PgTarget
    credentials_file: str
    restore_dir: str
    spare_port: int


def onto_settings(host: Host) -> Onto:
    where = f"{host.source}: host {host.name}"
    credentials = credentials_file(host)
    if not credentials:
        raise UsageError(
            f"{where}: --onto {host.name} needs pitr_s3_credentials_file on it (a curl config file "
            "the database's OS user reads: the restore host fetches the backup and the WAL from S3)"
        )
    restore_dir = str(host.get("pitr_restore_dir") or DEFAULT_RESTORE_DIR).rstrip("/")
    if not restore_dir.startswith("/") or ".." in restore_dir.split("/"):
        raise UsageError(f"{where}: pitr_restore_dir must be an absolute path, got {restore_dir!r}")
    pg = PgTarget.from_host(host)
    spare = host.get("pitr_spare_port", pg.port + 1)
    if isinstance(spare, bool) or not isinstance(spare, int) or not 1024 <= spare <= 65535:
        raise UsageError(f"{where}: pitr_spare_port must be a port number, got {spare!r}")
    return Onto(host, pg, credentials, restore_dir, spare)
