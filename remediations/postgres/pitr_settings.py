"""restore-pitr's settings: its inventory vars, validated before any host is touched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remediations.actions import pitr_host as hostside
from remediations.actions.pg_checks import TABLE_RE
from remediations.core import units
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.facts.postgres import PgTarget, positive_number
from remediations.postgres import restore_drill

NOTHING = "nothing changed"
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


def s3_source(host: Host, where: str) -> tuple[hostside.S3Source | None, str, str]:
    """With pitr_s3_credentials_file: the S3 copy of the archive (wal_s3_bucket, wal_s3_prefix)."""
    credentials = str(host.get("pitr_s3_credentials_file") or "")
    if not credentials:
        return None, "", ""
    if not credentials.startswith("/"):
        raise UsageError(f"{where}: pitr_s3_credentials_file must be an absolute path on the host")
    bucket = str(host.get("wal_s3_bucket") or host.get("backup_s3_bucket") or "")
    if not bucket:
        host.require("wal_s3_bucket")
    prefix = str(host.get("wal_s3_prefix", "wal/") or "")
    region = str(host.get("s3_region") or "us-east-1")
    endpoint = str(host.get("s3_endpoint_url") or "").rstrip("/")
    base = f"{endpoint}/{bucket}" if endpoint else f"https://{bucket}.s3.{region}.amazonaws.com"
    return hostside.S3Source(f"{base}/{prefix}", credentials, region), bucket, prefix


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
    )
