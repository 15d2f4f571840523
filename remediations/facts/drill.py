"""What a restored scratch database holds, for the restore drill: one query (the tables' existence
and row counts, the freshness column's existence and newest value) and its pure evaluation against
the configured checks.

The SQL is built from names the drill validated ([schema.]table, table.column: lower-case
identifiers) and quoted with sql_literal; it travels on psql's stdin, never on a command line. A
table that may be missing is counted through `query_to_xml` (the count's query is only planned
when `to_regclass` found the table), so one statement answers every check.
"""

# ruff: noqa: S608 - SQL here is built only from validated names, quoted (sql_literal)

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from remediations.core.units import human_age
from remediations.facts.postgres import sql_literal


class CheckSettings(Protocol):
    @property
    def tables(self) -> Mapping[str, int]: ...  # table: minimum rows
    @property
    def freshness(self) -> str: ...  # table.column, or ""
    @property
    def rpo_hours(self) -> float: ...


def _scalar(query: str, name: str) -> str:
    """SQL for the one value `query` answers (in its column `name`): NULL when it has none."""
    return f"(xpath('/row/{name}/text()', query_to_xml({query}, false, true, '')))[1]::text"


def checks_sql(tables: Sequence[str], freshness: str) -> str:
    """One statement answering every check as a JSON object: `t:TABLE` its row count (null when
    the table is missing), `c:TABLE.COLUMN` whether the column exists, `newest_age` the seconds
    since its newest value (null when it has none or is missing)."""
    parts = []
    for table in tables:
        regclass = f"to_regclass({sql_literal(table)})"
        count = _scalar(f"'select count(*) as n from ' || {regclass}::text", "n")
        parts.append(
            f"{sql_literal('t:' + table)}, case when {regclass} is null then null else {count}::bigint end"
        )
    if freshness:
        table, _, column = freshness.rpartition(".")
        regclass = f"to_regclass({sql_literal(table)})"
        present = (
            f"exists(select 1 from pg_attribute where attrelid = {regclass} "
            f"and attname = {sql_literal(column)} and not attisdropped)"
        )
        newest = _scalar(
            f"format('select extract(epoch from now() - max(%I))::float8 as a from %s', "
            f"{sql_literal(column)}, {regclass})",
            "a",
        )
        parts.append(f"{sql_literal('c:' + freshness)}, {present}")
        parts.append(f"'newest_age', case when {present} then {newest}::float8 end")
    return f"select json_build_object({', '.join(parts) or chr(39) + 'none' + chr(39) + ', true'});\n"


def split(answer: Mapping[str, Any]) -> tuple[dict[str, bool], dict[str, Any]]:
    """checks_sql's answer as (what exists, what was measured), evaluate's arguments."""
    exists = {k: (bool(v) if k.startswith("c:") else v is not None) for k, v in answer.items()}
    return exists, dict(answer)


@dataclass
class CheckOutcome:
    ok: bool
    problems: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    newest_age: float | None = None

    def summary(self, settings: CheckSettings) -> str:
        counts = ", ".join(f"{t} {n} rows" for t, n in self.rows.items())
        fresh = ""
        if settings.freshness and self.newest_age is not None:
            fresh = f"; newest {settings.freshness} {human_age(self.newest_age)} old"
        if self.ok:
            return f"checks passed: {counts or 'no tables configured'}{fresh}"
        return "checks FAILED: " + "; ".join(self.problems)


def evaluate(
    settings: CheckSettings, exists: Mapping[str, bool], measured: Mapping[str, Any]
) -> CheckOutcome:
    """Pure: the configured checks against what the scratch database holds."""
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
