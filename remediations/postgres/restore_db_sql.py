"""restore-db, its host side: the facts it reads of the server and of the dump (the SQL and shell
text, and their pure parsers), and the SQL and shell text of its changes. Every name is quoted
(sql_identifier, sql_literal, shlex.quote); the SQL travels on psql's stdin, never on a command line.
"""

# ruff: noqa: S608 - SQL here is built only from validated names, quoted (sql_literal, sql_identifier)

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remediations.actions import drill_fetch
from remediations.facts.postgres import PgTarget, script, sql_identifier, sql_literal

NEW_COMMENT = "remediations restore-db: being restored from "

# --------------------------------------------------------------------------------------------
# Facts: the server (one round trip with the record), the dump's read
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    version_num: int
    version: str
    data_directory: str
    free_bytes: int
    lock_capacity: int  # max_locks_per_transaction x (max_connections + max_prepared_transactions)
    exists: bool  # the production database
    oid: int = 0
    size: int = 0
    owner: str = ""
    encoding: str = ""
    collate: str = ""
    ctype: str = ""
    connections: int = 0
    databases: tuple[str, ...] = ()  # every database's name (leftovers, old copies)
    tools: tuple[str, ...] = ()  # of curl and python3, those the host has (its own GET of the dump)

    @property
    def major(self) -> int:
        """server_version_num with the minor digits zero (as `major_of`)."""
        num = self.version_num
        return num // 10000 * 10000 if num >= 100000 else num // 100 * 100


def server_sql(database: str) -> str:
    name = sql_literal(database)
    return (
        "select json_build_object("
        "'version_num', current_setting('server_version_num')::int, "
        "'version', current_setting('server_version'), "
        "'data_directory', current_setting('data_directory'), "
        "'lock_capacity', current_setting('max_locks_per_transaction')::int * "
        "(current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int), "
        f"'database', (select json_build_object('oid', d.oid::bigint, 'size', pg_database_size(d.oid), "
        "'owner', pg_get_userbyid(d.datdba), 'encoding', pg_encoding_to_char(d.encoding), "
        "'collate', d.datcollate, 'ctype', d.datctype, "
        "'connections', (select count(*) from pg_stat_activity a where a.datid = d.oid)) "
        f"from pg_database d where d.datname = {name}), "
        "'databases', (select json_agg(datname order by datname) from pg_database));\n"
    )


def parse_server(payload: Mapping[str, Any], free_bytes: int) -> Server:
    db = payload.get("database") or {}
    return Server(
        version_num=int(payload.get("version_num") or 0),
        version=str(payload.get("version") or ""),
        data_directory=str(payload.get("data_directory") or ""),
        free_bytes=free_bytes,
        lock_capacity=int(payload.get("lock_capacity") or 0),
        exists=bool(db),
        oid=int(db.get("oid") or 0),
        size=int(db.get("size") or 0),
        owner=str(db.get("owner") or ""),
        encoding=str(db.get("encoding") or ""),
        collate=str(db.get("collate") or ""),
        ctype=str(db.get("ctype") or ""),
        connections=int(db.get("connections") or 0),
        databases=tuple(str(n) for n in payload.get("databases") or ()),
    )


@dataclass(frozen=True)
class DumpRead:
    """What the host's pg_restore made of the whole dump (read to its end, the SQL discarded)."""

    ok: bool
    error: str = ""
    dumped_from: str = ""  # server version the dump was made from
    dumped_by: str = ""  # pg_dump's version
    entries: int = 0  # table-of-contents entries
    data_entries: int = 0  # of them, table data


DUMPED_FROM = "-- Dumped from database version "
DUMPED_BY = "-- Dumped by pg_dump version "
ENTRY = re.compile(r"^-- (?:Data for )?Name: .*; Type: ([A-Z ]+); Schema: ")
# the same in `pg_restore -l`'s listing (after read_pipeline's "@@toc " prefix)
TOC_FROM = re.compile(r"^@@toc ;\s+Dumped from database version: (.*)$")
TOC_BY = re.compile(r"^@@toc ;\s+Dumped by pg_dump version: (.*)$")
TOC_ENTRY = re.compile(r"^@@toc \d+; \d+ \d+ ")


def parse_dump_read(stdout: str, stderr: str) -> DumpRead:
    """Pure parser of the read: `read_pipeline`'s `@@toc` lines (or an older read's SQL comments),
    then `@@rc N`."""
    code, dumped_from, dumped_by, entries, data = None, "", "", 0, 0
    for line in stdout.splitlines():
        if line.startswith("@@rc "):
            code = int(line[5:].strip() or -1)
        elif line.startswith(DUMPED_FROM):
            dumped_from = line[len(DUMPED_FROM) :].strip()
        elif line.startswith(DUMPED_BY):
            dumped_by = line[len(DUMPED_BY) :].strip()
        elif line.startswith("@@toc "):
            found_from, found_by = TOC_FROM.match(line), TOC_BY.match(line)
            dumped_from = found_from.group(1).strip() if found_from else dumped_from
            dumped_by = found_by.group(1).strip() if found_by else dumped_by
            if TOC_ENTRY.match(line):
                entries += 1
                data += " TABLE DATA " in line
        else:
            match = ENTRY.match(line)
            if match:
                entries += 1
                data += match.group(1) == "TABLE DATA"
    if code != 0:
        said = [s.strip() for s in stderr.splitlines() if s.strip()]
        why = " ".join(said[-2:]) or ("the read did not finish" if code is None else f"exit {code}")
        return DumpRead(False, why, dumped_from, dumped_by, entries, data)
    return DumpRead(True, "", dumped_from, dumped_by, entries, data)


def major_of(version: str) -> int:
    """The major version as server_version_num counts it, minor digits zero: 160000 of "16.2 (Debian
    16.2-1)", 90600 of "9.6.24" (before 10 the major was two numbers); 0 when unknown."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    if not match:
        return 0
    first = int(match.group(1))
    return first * 10000 + (int(match.group(2) or 0) * 100 if first < 10 else 0)


def facts_command(pg: PgTarget, database: str, state_path: str) -> str:
    """One round trip: the record, the server's facts as JSON, the data directory's free bytes."""
    q = shlex.quote
    return script(
        f"state={q(state_path)}",
        'echo "@@state"; if [ -f "$state" ]; then cat -- "$state"; echo; fi',
        f"out=$(printf '%s' {q(server_sql(database))} | {pg.psql()} 2>&1) || "
        '{ echo "@@error"; printf "%s\\n" "$out"; exit 0; }',
        'echo "@@server"; printf "%s\\n" "$out" | tail -n 1',
        f"dd=$(printf '%s' 'show data_directory;' | {pg.psql()})",
        'echo "@@df"; df -P -B1 -- "$dd" | awk \'NR == 2 { print $4 }\'',
        'echo "@@tools"; for t in curl python3; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done',
    )


def read_pipeline(pg: PgTarget) -> str:
    """Shell text: the dump on stdin read to its end by the host's pg_restore (`-f /dev/null`: it
    makes all the SQL it would run, and throws it away), then `@@rc` and its exit code; tee hands
    a copy to `pg_restore -l` (a FIFO in a private folder), which reads the table of contents at
    its start (the versions, the entries: `@@toc` lines) while `cat` drains the rest."""
    listing, full = pg.shell("pg_restore", "-l"), pg.shell("pg_restore", "-f", "/dev/null")
    return (
        f't=$(mktemp -d /tmp/restore-db-read.XXXXXX) && mkfifo "$t/toc" || exit {drill_fetch.NO_TEMP}; '
        f"{{ {listing} 2>/dev/null | sed 's/^/@@toc /'; cat > /dev/null; }} < \"$t/toc\" & "
        f'tee "$t/toc" | {full}; echo "@@rc $?"; wait; rm -rf "$t"'
    )


def read_command(pg: PgTarget) -> str:
    """`read_pipeline` as a command (the dump streamed from the controller on its stdin)."""
    return script(read_pipeline(pg))


def host_read_command(pg: PgTarget, hasher: str, watch: bool) -> str:
    """`read_pipeline` fed by the host's own GET (`drill_fetch`: curl with a presigned URL on its
    stdin, the whole object counted and hashed; with `watch` a stop ends it)."""
    return script(*drill_fetch.stream_body(read_pipeline(pg), hasher, to_stdout=True, watch=watch))


def host_restore_command(pg: PgTarget, new: str, single: bool, hasher: str, watch: bool) -> str:
    """`restore_command`'s pg_restore fed by the host's own GET; on any failure once some of the
    dump came (a cut download included, and with `watch` a stop of the run) the host drops `new`
    itself."""
    options = ["--exit-on-error", *(["--single-transaction"] if single else [])]
    restore = pg.shell("pg_restore", *options, "-d", new)
    drop = f"printf '%s' {shlex.quote(drop_sql(new))} | {pg.psql()} >/dev/null 2>&1"
    body = drill_fetch.stream_body(restore, hasher, watch=watch)
    # when the host got none of the dump, pg_restore touched nothing: `new` stays for the
    # controller's stream (or its rollback)
    got_some = '{ [ "$(cat "$d/curl")" = 0 ] || ! grep -q "^fetch-bytes 0$" "$d/err"; }'
    return script(*body, f'if [ "$failed" != 0 ]; then {got_some} && {drop}; exit 1; fi')


# --------------------------------------------------------------------------------------------
# The changes
# --------------------------------------------------------------------------------------------


def drop_sql(name: str) -> str:
    return f"drop database if exists {sql_identifier(name)} with (force);\n"


def create_sql(name: str, server: Server, comment: str) -> str:
    """The new database as production is: template0, its owner, encoding and locale."""
    options = ["template template0"]
    if server.exists:
        options += [
            f"owner {sql_identifier(server.owner)}",
            f"encoding {sql_literal(server.encoding)}",
            f"lc_collate {sql_literal(server.collate)}",
            f"lc_ctype {sql_literal(server.ctype)}",
        ]
    return (
        f"create database {sql_identifier(name)} with {' '.join(options)};\n"
        f"comment on database {sql_identifier(name)} is {sql_literal(comment)};\n"
    )


def restore_command(pg: PgTarget, new: str, single: bool) -> str:
    """pg_restore reading the dump on stdin, owners and grants kept (the roles are the server's);
    when it fails (a cut stream included: the controller may be gone), the host drops `new` itself."""
    options = ["--exit-on-error", *(["--single-transaction"] if single else [])]
    restore = pg.shell("pg_restore", *options, "-d", new)
    drop = f"printf '%s' {shlex.quote(drop_sql(new))} | {pg.psql()} >/dev/null 2>&1"
    return script(f"{restore} || {{ status=$?; {drop}; exit $status; }}")


def swap_sql(database: str, new: str, old: str, version_num: int, comment: str) -> str:
    """One transaction: production's connections terminated (waited for, from PostgreSQL 14), its
    name given to the new database, the old one kept under `old`. Prints the new database's oid."""
    wait = ", 10000" if version_num >= 140000 else ""
    lines = ["begin;"]
    if old:
        lines += [
            f"select count(pg_terminate_backend(pid{wait})) from pg_stat_activity where datname = "
            f"{sql_literal(database)} and pid <> pg_backend_pid();",
            f"alter database {sql_identifier(database)} rename to {sql_identifier(old)};",
            f"comment on database {sql_identifier(old)} is "
            f"{sql_literal(f'remediations restore-db: {database} until {now_text()}; kept')};",
        ]
    lines += [
        f"alter database {sql_identifier(new)} rename to {sql_identifier(database)};",
        f"comment on database {sql_identifier(database)} is {sql_literal(comment)};",
        "commit;",
        f"select oid from pg_database where datname = {sql_literal(database)};",
    ]
    return "\n".join(lines) + "\n"


def now_text() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
