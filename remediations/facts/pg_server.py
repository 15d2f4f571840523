"""Is the PostgreSQL server on a host up? One round trip for db-health and restart-db, and its parser.

What is read, on the database host, as its OS user (`as_user`, see facts.postgres):
- `pg_isready` on the cluster's port and socket: 0 accepting, 1 rejecting (starting up, in crash
  recovery, shutting down), 2 no answer, 3 not tried (bad parameters);
- with `postgres_data_dir`: `pg_ctl -D DIR status` (0 a postmaster runs, 3 none, 4 no data directory);
- when it accepts: one query (in recovery?, when the postmaster started, version, data directory,
  whether the application's database exists) and, for db-health, the check tables' row counts in it;
- when it does not: the server log's last lines: the unit's journal (`postgres_unit`), else
  `postgres_log_file`, else the newest *.log in /var/log/postgresql (Debian's place).
The SQL travels on psql's stdin; every shell argument is quoted.
"""

# ruff: noqa: S608 - the SQL here quotes its one value (sql_literal), a validated database name

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts.postgres import PgTarget, script, sql_literal
from remediations.facts.sections import parse_sections, section_map
from remediations.facts.systemd import journal_command

LOG_LINES = 30
LOG_DIR = "/var/log/postgresql"
ISREADY = {
    0: "accepting connections",
    1: "rejecting connections (starting up, in crash recovery or shutting down)",
    2: "no answer",
    3: "not asked (bad connection parameters)",
}


@dataclass(frozen=True)
class Cluster:
    """How the inventory says the cluster is run: a systemd unit, start/stop commands, or pg_ctl on
    its data directory."""

    pg: PgTarget
    data_dir: str = ""  # postgres_data_dir
    log_file: str = ""  # postgres_log_file
    unit: str = ""  # postgres_unit
    start_command: str = ""  # postgres_start_command (shared with restore-pitr)
    stop_command: str = ""  # postgres_stop_command
    start_timeout: float = 120.0

    @classmethod
    def of(cls, host: Host) -> Cluster:
        data_dir = validate.value(host, "postgres_data_dir") or ""
        unit = validate.value(host, "postgres_unit") or ""
        return cls(
            PgTarget.from_host(host),
            str(data_dir).rstrip("/"),
            str(validate.value(host, "postgres_log_file") or ""),
            str(unit),
            str(host.get("postgres_start_command") or ""),
            str(host.get("postgres_stop_command") or ""),
            float(validate.value(host, "postgres_start_timeout")),
        )

    @property
    def how(self) -> str:
        """unit | command | pg_ctl | "" (the inventory does not say how to start it)."""
        if self.unit:
            return "unit"
        if self.start_command:
            return "command"
        return "pg_ctl" if self.data_dir else ""

    def require_a_way(self, host: Host) -> None:
        if not self.how:
            raise UsageError(
                f"{host.source}: host {host.name}: restart-db needs to know how the cluster is run: set "
                "postgres_unit (a systemd unit), postgres_start_command, or postgres_data_dir (pg_ctl)"
            )

    def ctl(self, *args: str) -> str:
        """pg_ctl on the data directory, as the database's OS user."""
        argv = [self.pg.tool("pg_ctl"), "-D", self.data_dir, *args]
        return f"as_user {shlex.quote(self.pg.os_user)} {shlex.join(argv)}"

    def server_log(self) -> str:
        """Where its log is: the file, or the directory whose newest *.log is read."""
        return self.log_file or (f"{self.data_dir}.server.log" if self.how == "pg_ctl" else LOG_DIR)


def server_sql(database: str) -> str:
    exists = (
        f"exists(select 1 from pg_database where datname = {sql_literal(database)})" if database else "null"
    )
    return (
        "select json_build_object('in_recovery', pg_is_in_recovery(), "
        "'started', extract(epoch from pg_postmaster_start_time())::float8, "
        "'version', current_setting('server_version'), "
        "'data_directory', current_setting('data_directory'), "
        f"'database_exists', {exists});\n"
    )


def log_command(cluster: Cluster, lines: int = LOG_LINES) -> str:
    """The server log's last lines (stderr folded in: a log that cannot be read says why)."""
    if cluster.unit:
        return f"{journal_command(cluster.unit, lines)} 2>&1"
    q = shlex.quote
    where = cluster.server_log()
    user = q(cluster.pg.os_user)
    if cluster.log_file or cluster.how == "pg_ctl":
        return f"as_user {user} tail -n {int(lines)} -- {q(where)} 2>&1"
    return (
        f"f=$(ls -1t -- {q(where)}/*.log 2>/dev/null | head -n 1); "
        f'if [ -n "$f" ]; then echo "@@log $f"; as_user {user} tail -n {int(lines)} -- "$f" 2>&1; '
        f"else echo {q('no *.log in ' + where + ': set postgres_log_file')}; fi"
    )


def facts_command(cluster: Cluster, database: str = "", checks: str = "", log: bool = True) -> str:
    """The facts script: `@@isready N`, `@@ctl N` (+ its first lines), `@@server N` (+ the JSON),
    `@@checks N` (+ the JSON of `checks`, run in `database`), `@@log` (+ lines) when not accepting."""
    pg = cluster.pg
    lines = [
        f"{pg.shell('pg_isready', '-d', 'postgres', '-t', '5')} >/dev/null 2>&1",
        'ready=$?; echo "@@isready $ready"',
    ]
    if cluster.data_dir:
        status = cluster.ctl("status")
        lines.append(f'out=$({status} 2>&1); echo "@@ctl $?"; printf "%s\\n" "$out" | head -n 3')
    lines += [
        'if [ "$ready" = 0 ]; then',
        f"  out=$(printf '%s' {shlex.quote(server_sql(database))} | {pg.psql()} 2>&1)",
        '  echo "@@server $?"; printf "%s\\n" "$out" | tail -n 3',
    ]
    if database and checks:
        lines += [
            f"  out=$(printf '%s' {shlex.quote(checks)} | {pg.psql(database)} 2>&1)",
            '  echo "@@checks $?"; printf "%s\\n" "$out" | tail -n 3',
        ]
    if log:
        lines += ["else", '  echo "@@log"', f"  {log_command(cluster)}"]
    lines.append("fi")
    return script(*lines)


@dataclass(frozen=True)
class ServerFacts:
    """What the facts script saw."""

    isready: int | None = None  # pg_isready's exit code (None: the script did not run)
    ctl: int | None = None  # pg_ctl status's exit code (None: no data directory configured)
    ctl_said: str = ""
    server: dict[str, Any] = field(default_factory=dict)  # the server query's answer
    server_error: str = ""
    checks: dict[str, Any] | None = None  # the checks query's answer (None: not run or failed)
    checks_error: str = ""
    log: tuple[str, ...] = ()
    log_file: str = ""  # the file found in the log directory (none when the inventory names it)
    error: str = ""  # the host could not be asked

    @property
    def accepting(self) -> bool:
        return self.isready == 0

    @property
    def state(self) -> str:
        """up | starting | hung (a postmaster runs but does not answer) | down | no-cluster | unknown."""
        if self.error or self.isready is None:
            return "unknown"
        if self.ctl == 4:
            return "no-cluster"
        if self.isready == 0:
            return "up"
        if self.isready == 1:
            return "starting"
        if self.ctl == 0:
            return "hung"
        if self.isready == 2:
            return "down"
        return "unknown"

    @property
    def started(self) -> float | None:
        value = self.server.get("started")
        return float(value) if isinstance(value, int | float) else None

    def describe(self, port: int) -> str:
        """The server in one phrase: "accepting connections on port 5432 (PostgreSQL 15.4, primary)"."""
        if self.error:
            return f"not read: {self.error}"
        code = self.isready if self.isready is not None else -1
        said = ISREADY.get(code, f"pg_isready exit {self.isready}")
        if self.state == "up" and self.server:
            role = "in recovery (a standby, or replaying)" if self.server.get("in_recovery") else "primary"
            return f"{said} on port {port} (PostgreSQL {self.server.get('version')}, {role})"
        if self.state == "up":
            return f"{said} on port {port}, but the query failed: {self.server_error or 'no answer'}"
        running = {0: "a postmaster runs", 3: "no postmaster runs", 4: "no data directory"}.get(
            self.ctl if self.ctl is not None else -1, ""
        )
        ctl = f"; pg_ctl status: {running} ({self.ctl_said})" if running else ""
        return f"{said} on port {port}{ctl}"


def _json(body: str) -> dict[str, Any] | None:
    for line in reversed(body.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _code(arg: str) -> int | None:
    return int(arg) if arg.strip().lstrip("-").isdigit() else None


def parse_facts(output: str) -> ServerFacts:
    """Pure: the facts script's output."""
    found = section_map(parse_sections(output))
    if "isready" not in found:
        return ServerFacts(error=f"no answer from the facts script: {output.strip()[-300:] or 'no output'}")
    ctl = found.get("ctl")
    server, server_error = None, ""
    if "server" in found:
        section = found["server"]
        server = _json(section.body) if _code(section.arg) == 0 else None
        server_error = "" if server is not None else " ".join(section.body.split())[-300:]
    checks, checks_error = None, ""
    if "checks" in found:
        section = found["checks"]
        checks = _json(section.body) if _code(section.arg) == 0 else None
        checks_error = "" if checks is not None else " ".join(section.body.split())[-300:]
    log = found["log"].body.splitlines()[-LOG_LINES:] if "log" in found else []
    log_file = found["log"].arg if "log" in found else ""
    return ServerFacts(
        isready=_code(found["isready"].arg),
        ctl=_code(ctl.arg) if ctl is not None else None,
        ctl_said=" ".join(ctl.body.split())[:200] if ctl is not None else "",
        server=server or {},
        server_error=server_error,
        checks=checks,
        checks_error=checks_error,
        log=tuple(log),
        log_file=log_file,
    )
