"""What restore-test and restore-db share: the sanity checks of a restored database, the choice of
a dump in S3, and the stream of a dump from S3 into a command on the host.

The checks: the tables of `restore_check_tables` exist with at least their minimum row counts, and
the newest value of `restore_freshness_column` (table.column) is within `backup_rpo_hours` of the
server's clock. The SQL is built only from names validated by TABLE_RE / COLUMN_RE and quoted with
sql_literal / sql_identifier; it travels on psql's stdin, never on a command line.
"""

# ruff: noqa: S608 - SQL here is built only from validated names, quoted (see sql_literal)

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from remediations.core import interrupt
from remediations.core.errors import CommandResult, HostError, Interrupted, UsageError
from remediations.core.inventory import Host
from remediations.facts.postgres import human_age, sql_identifier, sql_literal

TABLE_RE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")
COLUMN_RE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


class CheckSpec(Protocol):
    """What the checks read of a task's settings."""

    @property
    def tables(self) -> Mapping[str, int]: ...

    @property
    def freshness(self) -> str: ...

    @property
    def rpo_hours(self) -> float: ...


def check_vars(host: Host) -> tuple[dict[str, int], str]:
    """(table → minimum rows, freshness column or "") from `restore_check_tables` and
    `restore_freshness_column`; bad input names the var."""
    where = f"{host.source}: host {host.name}"
    raw_tables = host.get("restore_check_tables") or {}
    if isinstance(raw_tables, list):
        raw_tables = {str(t): 0 for t in raw_tables}
    if not isinstance(raw_tables, Mapping):
        raise UsageError(f"{where}: restore_check_tables must map table names to minimum row counts")
    tables: dict[str, int] = {}
    for name, minimum in raw_tables.items():
        if not TABLE_RE.match(str(name)):
            raise UsageError(f"{where}: restore_check_tables: {name!r} is not a [schema.]table name")
        try:
            tables[str(name)] = int(minimum or 0)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: restore_check_tables: {name}: give a row count") from None
    freshness = str(host.get("restore_freshness_column") or "")
    if freshness and not COLUMN_RE.match(freshness):
        raise UsageError(f"{where}: restore_freshness_column {freshness!r} must be [schema.]table.column")
    return tables, freshness


# --------------------------------------------------------------------------------------------
# The checks (pure)
# --------------------------------------------------------------------------------------------


def existence_sql(tables: Sequence[str], freshness: str) -> str:
    parts = [f"{sql_literal('t:' + t)}, to_regclass({sql_literal(t)}) is not null" for t in tables]
    if freshness:
        table, _, column = freshness.rpartition(".")
        parts.append(
            f"{sql_literal('c:' + freshness)}, exists(select 1 from pg_attribute where attrelid = "
            f"to_regclass({sql_literal(table)}) and attname = {sql_literal(column)} and not attisdropped)"
        )
    return f"select json_build_object({', '.join(parts) or chr(39) + 'none' + chr(39) + ', true'});\n"


def measure_sql(tables: Sequence[str], freshness: str | None) -> str:
    parts = [f"{sql_literal('t:' + t)}, (select count(*) from {sql_identifier(t)})" for t in tables]
    if freshness:
        table, _, column = freshness.rpartition(".")
        parts.append(
            f"'newest_age', (select extract(epoch from now() - max({sql_identifier(column)}))::float8 "
            f"from {sql_identifier(table)})"
        )
    return f"select json_build_object({', '.join(parts) or chr(39) + 'none' + chr(39) + ', true'});\n"


@dataclass
class CheckOutcome:
    ok: bool
    problems: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    newest_age: float | None = None

    def summary(self, settings: CheckSpec) -> str:
        counts = ", ".join(f"{t} {n} rows" for t, n in self.rows.items())
        fresh = ""
        if settings.freshness and self.newest_age is not None:
            fresh = f"; newest {settings.freshness} {human_age(self.newest_age)} old"
        if self.ok:
            return f"checks passed: {counts or 'no tables configured'}{fresh}"
        return "checks FAILED: " + "; ".join(self.problems)


def evaluate(settings: CheckSpec, exists: Mapping[str, bool], measured: Mapping[str, Any]) -> CheckOutcome:
    """Pure: the configured checks against what the restored database holds."""
    outcome = CheckOutcome(ok=True)
    for table, minimum in settings.tables.items():
        if not exists.get(f"t:{table}"):
            outcome.problems.append(f"table {table} is missing")
            continue
        count = int(measured.get(f"t:{table}") or 0)
        outcome.rows[table] = count
        if count < minimum:
            outcome.problems.append(f"table {table} has {count} rows, fewer than the minimum {minimum}")
    if settings.freshness:
        if not exists.get(f"c:{settings.freshness}"):
            outcome.problems.append(f"column {settings.freshness} is missing")
        else:
            age = measured.get("newest_age")
            if age is None:
                outcome.problems.append(f"{settings.freshness} has no values")
            else:
                outcome.newest_age = float(age)
                if outcome.newest_age > settings.rpo_hours * 3600:
                    outcome.problems.append(
                        f"newest {settings.freshness} is {human_age(outcome.newest_age)} old, older than "
                        f"the RPO of {settings.rpo_hours:g}h"
                    )
    outcome.ok = not outcome.problems
    return outcome


# --------------------------------------------------------------------------------------------
# The dump in S3, and its stream into a command on the host
# --------------------------------------------------------------------------------------------


def choose_dump(objects: Sequence[Any], prefix: str, wanted: str | None, where: str) -> Any:
    """The S3 object (key, size, modified) to restore: the one `wanted` names (a key, or a name under
    `prefix`), else the newest; HostError naming `where` when there is none."""
    files = [o for o in objects if not o.key.endswith("/")]
    if wanted:
        names = {wanted, prefix + wanted}
        named = [o for o in files if o.key in names]
        if not named:
            raise HostError(f"no dump {wanted!r} under {where}")
        return named[0]
    if not files:
        raise HostError(f"no dump under {where}")
    return max(files, key=lambda o: (o.modified, o.key))


def stoppable(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, ended by a stop request (SIGINT, SIGTERM) with Interrupted: the stream is closed
    there, and the command on the host reads a cut input (pg_restore fails on it) rather than the
    whole dump."""
    try:
        for chunk in chunks:
            stopping = interrupt.requested()
            if stopping:
                raise Interrupted(f"interrupted by {stopping} while the dump was streaming")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def stream_into(remote: Any, command: str, chunks: Iterator[bytes], timeout: float) -> CommandResult:
    """Run `command` with `chunks` on its stdin as they come (`run_stream` of the SSH and local
    remotes); any other Remote gets them joined, through `run`'s stdin. The GET ends here, however
    the command did."""
    try:
        if hasattr(remote, "run_stream"):
            return remote.run_stream(command, chunks, timeout=timeout)  # type: ignore[no-any-return]
        return remote.run(command, stdin=b"".join(chunks), timeout=timeout)  # type: ignore[no-any-return]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
