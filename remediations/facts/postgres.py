"""Shared by the PostgreSQL remediations (wal-cleanup, backup-check, restore-test).

PostgreSQL on a host: its client tools run there over the run's connection, as the database's OS user
(`postgres_os_user`, default postgres) through `runuser` when the connection is root and `sudo -n`
otherwise, over the local socket: no password is needed and none is ever on a command line.
`postgres_bin_dir` names the tools' directory (default: the PATH, Debian's wrappers);
`postgres_port` (default 5432) and `postgres_socket_dir` (default the tools' own) pick the cluster.

S3 runs on the controller with boto3: the standard AWS credential chain (environment, profile,
instance role; `aws_profile` picks a profile), `s3_endpoint_url` (or AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL) and `s3_region`. boto3 is imported only when a task needs it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remediations.core import units
from remediations.core.errors import CommandResult, HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.units import human_age as human_age
from remediations.facts.sections import MARK as MARK
from remediations.facts.sections import Section as Section
from remediations.facts.sections import parse_sections as parse_sections

DEFAULT_OS_USER = "postgres"
DEFAULT_PORT = 5432

# Runs a command as another OS user: runuser when we are root, sudo otherwise; from / so that the
# tools do not complain about a home directory they cannot read.
AS_USER = (
    'as_user() { u=$1; shift; ( cd / && if [ "$(id -un)" = "$u" ]; then "$@"; '
    'elif [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then runuser -u "$u" -- "$@"; '
    'else sudo -n -u "$u" -- "$@"; fi ); }'
)


# --------------------------------------------------------------------------------------------
# Output sections and small formatting helpers (pure)
# --------------------------------------------------------------------------------------------


def human_bytes(count: float) -> str:
    return units.human_bytes(count, binary=True)


def positive_number(host: Host, name: str, default: float) -> float:
    """A numeric inventory var; a bad value is bad input naming the var."""
    value = host.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number <= 0:
        raise UsageError(f"{host.source}: host {host.name}: {name} must be a positive number, got {value!r}")
    return number


# --------------------------------------------------------------------------------------------
# PostgreSQL tools on a host
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTarget:
    """How to run PostgreSQL's client tools on a host (from inventory vars)."""

    os_user: str = DEFAULT_OS_USER
    bin_dir: str = ""
    port: int = DEFAULT_PORT
    socket_dir: str = ""

    @classmethod
    def from_host(cls, host: Host) -> PgTarget:
        try:
            port = int(host.get("postgres_port", DEFAULT_PORT))
        except (TypeError, ValueError):
            raise UsageError(
                f"{host.source}: host {host.name}: postgres_port must be a port number"
            ) from None
        return cls(
            os_user=str(host.get("postgres_os_user") or DEFAULT_OS_USER),
            bin_dir=str(host.get("postgres_bin_dir") or ""),
            port=port,
            socket_dir=str(host.get("postgres_socket_dir") or ""),
        )

    def tool(self, name: str) -> str:
        return f"{self.bin_dir.rstrip('/')}/{name}" if self.bin_dir else name

    def argv(self, tool: str, *args: str) -> list[str]:
        """A client tool with the connection options (port, socket directory)."""
        connection = ["-p", str(self.port), *(["-h", self.socket_dir] if self.socket_dir else [])]
        return [self.tool(tool), *connection, *args]

    def shell(self, tool: str, *args: str) -> str:
        """Shell text that runs the tool as the database's OS user; every argument quoted."""
        return f"as_user {shlex.quote(self.os_user)} {shlex.join(self.argv(tool, *args))}"

    def psql(self, database: str = "postgres", *args: str) -> str:
        """psql reading SQL from stdin, unaligned tuples only, stopping at the first error."""
        return self.shell(
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, *args, "-f", "-"
        )


# pg_stat_archiver as one JSON object. `failing` is decided by the server, which compares the two
# timestamps as timestamps: the last attempt failed and nothing was archived since.
ARCHIVER_JSON_SQL = """(select row_to_json(a) from (
      select archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
             last_failed_time,
             coalesce(last_failed_time > last_archived_time, last_failed_time is not null) as failing,
             extract(epoch from now() - last_archived_time)::float8 as last_archived_age
      from pg_stat_archiver) a)"""


def archiver_failing(archiver: Mapping[str, Any]) -> bool:
    """The archiver's last attempt failed and no segment was archived since (WAL piles up in pg_wal/)."""
    return bool(archiver.get("failing"))


def describe_archiver(archiver: Mapping[str, Any]) -> str:
    """pg_stat_archiver's failures in one phrase."""
    failed = int(archiver.get("failed_count") or 0)
    if not failed:
        return "archiver: no failures"
    last = f"last on {archiver.get('last_failed_wal')} at {archiver.get('last_failed_time')}"
    if not archiver_failing(archiver):
        return f"archiver failed before: {failed} failure(s), {last}"
    archived = archiver.get("last_archived_wal")
    since = (
        f"nothing archived since {archived} at {archiver.get('last_archived_time')}"
        if archived
        else "nothing archived yet"
    )
    return f"archiver is FAILING: {failed} failure(s), {last}; {since}"


def sql_literal(text: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings, on by default since 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """A quoted identifier; `schema.table` becomes two quoted parts."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def script(*lines: str) -> str:
    """Shell text with the as_user helper defined first."""
    return "\n".join([AS_USER, *lines])


def must_ok(result: CommandResult, what: str) -> CommandResult:
    if not result.ok:
        raise HostError(f"{what} failed (exit {result.exit_code}): {result.tail()}", result)
    return result


# --------------------------------------------------------------------------------------------
# S3 on the controller
# --------------------------------------------------------------------------------------------






