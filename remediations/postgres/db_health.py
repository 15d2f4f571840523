"""db-health: does the PostgreSQL server on the host answer, and does its database hold its tables? Read-only.

facts   one round trip on the database host (`facts.pg_server`): pg_isready on the cluster's port
        and socket, `pg_ctl status` (with postgres_data_dir), one query (in recovery?, the
        postmaster's start time, the version) and the row counts of `restore_check_tables` in the
        application's database (--database, else restore_db_database); the server log's last lines
        when it does not accept connections;
decide  pure (`judge`): the server step fails unless it accepts connections and answers the query
        (with --primary, also unless it is out of recovery); the database step fails when the
        database is missing, a check table is missing or has fewer rows than its minimum;
apply   nothing: a red check fails the host (exit code 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions.pg_checks import check_vars
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.drill import checks_sql, evaluate, split
from remediations.facts.pg_server import Cluster, ServerFacts, facts_command, parse_facts
from remediations.facts.postgres import PgTarget
from remediations.facts.systemd import mask_line

FACTS_TIMEOUT = 90.0
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def check_database(value: Any, flag: str) -> str:
    text = str(value or "")
    if not text or not set(text) <= NAME_CHARS or text[0].isdigit() or len(text) > 63:
        raise UsageError(f"{flag} {text!r}: a database name is lower-case letters, digits and _ "
                         "(a letter or _ first, at most 63)")  # fmt: skip
    return text


@dataclass(frozen=True)
class TableChecks:
    """restore_check_tables, without the freshness column: a restore cannot make data fresher."""

    tables: Mapping[str, int]
    freshness: str = ""
    rpo_hours: float = 0.0


@dataclass(frozen=True)
class Verdict:
    server_ok: bool
    server: str
    database_ok: bool | None  # None: no database to check (or the server is down)
    database: str


def judge(facts: ServerFacts, port: int, database: str, tables: Mapping[str, int],
          primary: bool) -> Verdict:  # fmt: skip
    """Pure: the server's and the database's verdicts, each with its message."""
    said = facts.describe(port)
    server_ok = facts.state == "up" and bool(facts.server)
    if server_ok and primary and facts.server.get("in_recovery"):
        server_ok, said = False, f"{said}: --primary wants it out of recovery"
    if not server_ok and facts.log:
        where = f" ({facts.log_file})" if facts.log_file else ""
        said += f"; the server log's last {len(facts.log)} lines{where}:\n" + "\n".join(facts.log)
    if not database or not server_ok:
        return Verdict(server_ok, said, None, "")
    if facts.server.get("database_exists") is False:
        return Verdict(server_ok, said, False, f"database {database} does not exist")
    if facts.checks is None:
        return Verdict(server_ok, said, False, f"database {database}: the checks failed: "
                       f"{facts.checks_error or 'no answer'}")  # fmt: skip
    checks = TableChecks(tables)
    outcome = evaluate(checks, *split(facts.checks))
    return Verdict(server_ok, said, outcome.ok, f"database {database}: {outcome.summary(checks)}")


class DbHealth(Remediation):
    """Check that the host's PostgreSQL server accepts connections and its database holds its tables.

    Read-only. The server: pg_isready and one query, over the run's SSH connection as the database's
    OS user (postgres_port, postgres_socket_dir); in recovery or not; the server log's last lines when
    it is down (the postgres_unit's journal, postgres_log_file, or the newest log in
    /var/log/postgresql). The database (--database, default restore_db_database; none: the server
    only): it exists, and each table of restore_check_tables has at least its minimum rows.
    Exit code 0 healthy, 1 a check is red, 2 bad input.
    """

    task: ClassVar[str] = "db-health"
    params = args(
        Arg("database", "the database to check (default: the host's restore_db_database var)",
            parse=check_database, example="shop"),
        Arg("server_only", "check the server only, not the database's tables", kind="flag"),
        Arg("primary", "fail when the server is in recovery (a standby, or still replaying)", kind="flag"),
    )  # fmt: skip
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def __init__(self, database: str | None = None, server_only: bool = False, primary: bool = False) -> None:
        if database and server_only:
            raise UsageError("--database and --server-only: give one")
        self.database, self.server_only, self.primary = database, server_only, primary

    def validate(self, host: Host) -> None:
        super().validate(host)
        Cluster.of(host)
        self._database(host)
        check_vars(host)

    def _database(self, host: Host) -> str:
        if self.server_only:
            return ""
        if self.database:
            return self.database
        configured = host.get("restore_db_database")
        return check_database(configured, f"{host.source}: host {host.name}: restore_db_database") \
            if configured else ""  # fmt: skip

    def deadline(self, host: Host) -> float:
        return FACTS_TIMEOUT + 60.0

    def run(self, ctx: HostContext) -> None:
        cluster = Cluster.of(ctx.host)
        database = self._database(ctx.host)
        tables, _ = check_vars(ctx.host)
        checks = checks_sql(list(tables), "") if database else ""
        with ctx.step("facts") as step:
            result = ctx.remote.run(facts_command(cluster, database, checks), timeout=FACTS_TIMEOUT)
            facts = parse_facts(result.stdout)
            status = Status.FAILED if facts.error else Status.OK
            step.done(status, facts.error or f"read: pg_isready {facts.isready}", **_data(facts))
        if facts.error:
            return
        masked = ServerFacts(**{**vars(facts), "log": tuple(mask_line(line) for line in facts.log)})
        verdict = judge(masked, PgTarget.from_host(ctx.host).port, database, tables, self.primary)
        ctx.record("server", Status.OK if verdict.server_ok else Status.FAILED, verdict.server)
        if verdict.database_ok is not None:
            ctx.record("database", Status.OK if verdict.database_ok else Status.FAILED, verdict.database)


def _data(facts: ServerFacts) -> dict[str, Any]:
    return {"state": facts.state, "isready": facts.isready, "pg_ctl_status": facts.ctl,
            "in_recovery": facts.server.get("in_recovery"), "started": facts.started,
            "version": facts.server.get("version")}  # fmt: skip
