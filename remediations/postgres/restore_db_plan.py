"""restore-db, the pure half: its settings, the facts it reads (and their parsers), the record it
keeps on the database host, and the decision. No host is touched here (see restore_db.py).

The record (`{state_dir}/restore-db-DATABASE.json` on the database host) is what makes a run
repeatable and an interrupted one recoverable:

    phase      "idle" (nothing in progress), "stopping" (the writers are being stopped),
               "restoring" (the new database is being made and checked), "swapped" (the names were
               swapped; the writers are still to be started)
    writers    the writers this task stopped (host:service), to start again
    new_database / old_database / dump    of the run in progress
    live       the last restore that finished: its dump (key, ETag), the database's oid, when
"""

# ruff: noqa: S608 - SQL here is built only from validated names, quoted (sql_literal)

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from remediations.actions.pg_checks import check_vars
from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.units import human_age as human_age
from remediations.core.units import human_bytes
from remediations.facts.postgres import positive_number

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
STAMP_FORMAT = "%Y%m%d_%H%M%S"  # UTC, lower-case: the suffix of the new and the old database
STAMP_LENGTH = len("20260101_000000")
NEW_INFIX, OLD_INFIX = "_restore_", "_old_"
PROTECTED = ("postgres", "template0", "template1")
DEFAULT_RPO_HOURS = 26.0
DEFAULT_EXPANSION = 4.0  # a custom-format dump restores to about this many times its size
WAL_MARGIN = 1.25  # the restore also writes about its size of WAL, mostly recycled as it goes
STATE_FILE = "restore-db-{database}.json"
IDLE, STOPPING, RESTORING, SWAPPED = "idle", "stopping", "restoring", "swapped"


def _human_bytes(count: float) -> str:
    return human_bytes(count, binary=True)


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Settings and the writers (validated before any host is touched)
# --------------------------------------------------------------------------------------------


def check_database(name: Any, what: str) -> str:
    """A production database name: a plain lower-case identifier short enough to carry the
    `_restore_STAMP` suffix, and not one of PostgreSQL's own databases."""
    text = str(name or "")
    longest = MAX_IDENTIFIER - len(NEW_INFIX) - STAMP_LENGTH
    if not NAME_RE.match(text) or len(text) > longest:
        raise UsageError(
            f"{what}: {validate.shown(text)} is not a database name this task restores "
            f"(lower-case letters, digits and _, a letter or _ first, at most {longest} "
            "characters)"
        )
    if text in PROTECTED:
        raise UsageError(f"{what}: {text} is PostgreSQL's own database; give the application's")
    return text


@dataclass(frozen=True)
class Writer:
    host: str
    service: str

    @property
    def label(self) -> str:
        return f"{self.host}:{self.service}"

    @classmethod
    def parse(cls, text: str, flag: str = "--stop") -> Writer:
        host, sep, service = str(text).partition(":")
        if not sep or not host or not service:
            raise UsageError(f"{flag} {validate.shown(text)}: give HOST:SERVICE (e.g. api1:django-api)")
        return cls(host, validate.check_service(service, flag))


@dataclass(frozen=True)
class Settings:
    database: str
    bucket: str
    prefix: str
    tables: Mapping[str, int]
    freshness: str
    rpo_hours: float
    expansion: float
    state_path: str


def settings(host: Host, database: str | None) -> Settings:
    where = f"{host.source}: host {host.name}"
    if database is None and not host.get("restore_db_database"):
        raise UsageError(
            f"{where}: give --database NAME or set restore_db_database (the database to restore)"
        )
    name = (
        check_database(database, "--database")
        if database is not None
        else check_database(host.get("restore_db_database"), f"{where}: restore_db_database")
    )
    tables, freshness = check_vars(host)
    state_dir = str(host.get("state_dir") or "/var/lib/remediations").rstrip("/")
    return Settings(
        database=name,
        bucket=str(host.require("backup_s3_bucket")),
        prefix=str(host.get("dump_s3_prefix", "dumps/") or ""),
        tables=tables,
        freshness=freshness,
        rpo_hours=positive_number(host, "backup_rpo_hours", DEFAULT_RPO_HOURS),
        expansion=positive_number(host, "restore_db_expansion", DEFAULT_EXPANSION),
        state_path=f"{state_dir}/{STATE_FILE.format(database=name)}",
    )


def resolve_writers(inventory: Inventory, host: Host, stop: Sequence[Writer]) -> list[tuple[Host, list[str]]]:
    """The app hosts and their writer services: `restore_db_writers` of the database host (a host
    pattern → the compose services on those hosts that write to this database) and every --stop;
    each host once, in inventory order, each with the vars a compose service needs."""
    where = f"{host.source}: host {host.name}: restore_db_writers"
    declared = host.get("restore_db_writers") or {}
    if not isinstance(declared, Mapping):
        raise UsageError(f"{where} must map host patterns to lists of services (e.g. {{api: [django-api]}})")
    wanted: dict[str, list[str]] = {}
    for pattern, services in declared.items():
        names = [services] if isinstance(services, str) else services
        if not isinstance(names, list) or not names:
            raise UsageError(f"{where}: {pattern}: give a list of compose services")
        for target in inventory.select(str(pattern), "restore_db_writers"):
            for service in names:
                checked = validate.check_service(service, f"restore_db_writers: {pattern}")
                wanted.setdefault(target.name, [])
                if checked not in wanted[target.name]:
                    wanted[target.name].append(checked)
    for writer in stop:
        if writer.host not in inventory.hosts:
            raise UsageError(f"--stop {writer.label}: no host {writer.host} in {inventory.source}")
        wanted.setdefault(writer.host, [])
        if writer.service not in wanted[writer.host]:
            wanted[writer.host].append(writer.service)
    resolved = []
    for name, target in inventory.hosts.items():
        if name in wanted:
            validate.check_vars(target)
            target.require("compose_project_dir")
            resolved.append((target, wanted[name]))
    return resolved


# --------------------------------------------------------------------------------------------
# Facts: the server and the record (one round trip), the dump's read
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

    @property
    def major(self) -> int:
        """server_version_num with the minor digits zero (as `major_of`)."""
        num = self.version_num
        return num // 10000 * 10000 if num >= 100000 else num // 100 * 100


def server_sql(database: str) -> str:
    from remediations.facts.postgres import sql_literal

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


def parse_dump_read(stdout: str, stderr: str) -> DumpRead:
    """Pure parser of the read: the lines `read_dump_command` keeps, then `@@rc N`."""
    code, dumped_from, dumped_by, entries, data = None, "", "", 0, 0
    for line in stdout.splitlines():
        if line.startswith("@@rc "):
            code = int(line[5:].strip() or -1)
        elif line.startswith(DUMPED_FROM):
            dumped_from = line[len(DUMPED_FROM) :].strip()
        elif line.startswith(DUMPED_BY):
            dumped_by = line[len(DUMPED_BY) :].strip()
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


@dataclass(frozen=True)
class Dump:
    key: str
    size: int
    modified: dt.datetime
    etag: str = ""

    def describe(self, bucket: str, now: dt.datetime) -> str:
        age = human_age((now - self.modified).total_seconds())
        return f"s3://{bucket}/{self.key} ({_human_bytes(self.size)}, {age} old)"


@dataclass
class State:
    phase: str = IDLE
    dump: str = ""
    new_database: str = ""
    old_database: str = ""
    writers: list[str] = field(default_factory=list)  # host:service this task stopped
    started_at: str = ""
    live: dict[str, Any] = field(default_factory=dict)  # key, etag, oid, restored_at, old_database

    @classmethod
    def parse(cls, text: str, path: str) -> State:
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
            return cls(
                phase=str(data.get("phase") or IDLE),
                dump=str(data.get("dump") or ""),
                new_database=str(data.get("new_database") or ""),
                old_database=str(data.get("old_database") or ""),
                writers=[str(w) for w in data.get("writers") or []],
                started_at=str(data.get("started_at") or ""),
                live=dict(data.get("live") or {}),
            )
        except (ValueError, AttributeError, TypeError):
            from remediations.core.errors import HostError

            raise HostError(
                f"{path} is not a restore-db record (not the JSON this task writes); "
                "look at it, move it away, and run again"
            ) from None

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "version": 1,
                    "phase": self.phase,
                    "dump": self.dump,
                    "new_database": self.new_database,
                    "old_database": self.old_database,
                    "writers": self.writers,
                    "started_at": self.started_at,
                    "live": self.live,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )

    def idle(self) -> State:
        return replace(self, phase=IDLE, dump="", new_database="", old_database="", writers=[], started_at="")


# --------------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterFacts:
    writer: Writer
    running: bool
    why: str  # its state, in words


@dataclass(frozen=True)
class Facts:
    conf: Settings
    server: Server
    state: State
    dump: Dump
    read: DumpRead
    writers: tuple[WriterFacts, ...]
    now: dt.datetime


@dataclass(frozen=True)
class Decision:
    action: str  # "nothing" | "refuse" | "restore" | "finish" | "rollback"
    reason: str
    new_database: str = ""
    old_database: str = ""  # the name production gets at the swap ("" when there is none)
    drop_first: tuple[str, ...] = ()  # a half-made database of an interrupted run
    stop: tuple[str, ...] = ()  # writers to stop now (running)
    start: tuple[str, ...] = ()  # writers to start at the end (stopped by this task)
    single_transaction: bool = True
    failure: str = ""  # after a rollback: why the run still fails (the preflight refused)


def stamped(database: str, infix: str, now: dt.datetime) -> str:
    return f"{database}{infix}{now.strftime(STAMP_FORMAT)}"


def disk_needed(conf: Settings, server: Server, dump: Dump) -> int:
    """Bytes the restore needs free: the bigger of the production database's size and the dump
    times `restore_db_expansion`, plus the WAL margin."""
    return int(max(server.size, dump.size * conf.expansion) * WAL_MARGIN)


def already_live(state: State, server: Server, dump: Dump) -> bool:
    """The record says the last finished restore was of this very dump (key and ETag) and the
    production database is still the one it made (its oid): a re-run has nothing to do."""
    live = state.live
    return (
        state.phase == IDLE
        and server.exists
        and bool(dump.key)
        and live.get("key") == dump.key
        and str(live.get("etag", "")) == dump.etag
        and int(live.get("oid") or 0) == server.oid
    )


def preflight(facts: Facts) -> str:
    """Why the restore must not start ("" when it may): the dump's read, the versions, the disk."""
    conf, server, dump, read = facts.conf, facts.server, facts.dump, facts.read
    where = f"s3://{conf.bucket}/{dump.key}"
    if not read.ok:
        return f"the dump {where} does not read to its end on the host: {read.error}"
    source = major_of(read.dumped_from)
    if source and server.major and source > server.major:
        return (
            f"the dump is from PostgreSQL {read.dumped_from} and the server is {server.version}: a dump "
            "restores into the same or a newer major version"
        )
    needed = disk_needed(conf, server, dump)
    if server.free_bytes < needed:
        return (
            f"{server.data_directory} has {_human_bytes(server.free_bytes)} free, the restore needs about "
            f"{_human_bytes(needed)} (the database or {conf.expansion:g}x the dump, plus WAL)"
        )
    return ""


def decide(facts: Facts, abort: bool) -> Decision:
    """Pure: what this run does, from the record, the server, the dump and the writers."""
    conf, server, state = facts.conf, facts.server, facts.state
    running = tuple(w.writer.label for w in facts.writers if w.running)
    recorded = tuple(state.writers)
    start_again = tuple(dict.fromkeys([*recorded, *running]))
    half_made = tuple(n for n in (state.new_database,) if n and n in server.databases)
    if state.phase == SWAPPED:
        return Decision(
            "finish",
            f"an earlier run swapped {conf.database} (the old one is "
            f"{state.old_database or 'none'}) but did not start the writers: starting them",
            start=recorded,
        )
    interrupted = state.phase in (STOPPING, RESTORING)
    if abort:
        if not interrupted:
            return Decision("nothing", "no interrupted restore-db run to roll back")
        return Decision(
            "rollback",
            f"rolling back the interrupted run of {state.started_at or 'earlier'}",
            drop_first=half_made,
            start=recorded,
        )
    if already_live(state, server, facts.dump):
        return Decision(
            "nothing",
            f"{conf.database} already holds s3://{conf.bucket}/{facts.dump.key} "
            f"(restored {state.live.get('restored_at', '')}); nothing to do: a newer dump (--latest) or "
            "another --dump restores again",
        )
    refused = preflight(facts)
    if refused:
        if interrupted:  # an interrupted run left the writers stopped: put them back
            return Decision(
                "rollback",
                f"{refused}; rolling back the interrupted run",
                drop_first=half_made,
                start=recorded,
                failure=f"{refused}; the interrupted run was rolled back",
            )
        return Decision("refuse", f"{refused}; nothing changed")
    new = stamped(conf.database, NEW_INFIX, facts.now)
    old = stamped(conf.database, OLD_INFIX, facts.now) if server.exists else ""
    single = facts.read.entries <= server.lock_capacity // 2
    return Decision("restore", "restore", new, old, half_made, running, start_again, single)


def describe(facts: Facts, decision: Decision) -> list[str]:
    """The plan in words, one line a step (check mode shows them)."""
    conf, server = facts.conf, facts.server
    lines = []
    if decision.action == "restore":
        lines.append(
            f"use dump {facts.dump.describe(conf.bucket, facts.now)}, made by pg_dump "
            f"{facts.read.dumped_by or '?'} from PostgreSQL {facts.read.dumped_from or '?'}"
        )
    for name in decision.drop_first:
        lines.append(f"drop {name}, left half-made by an interrupted run")
    stopped = [
        w.writer.label for w in facts.writers if not w.running and w.writer.label not in decision.start
    ]
    if decision.stop:
        lines.append(f"stop the writers {', '.join(decision.stop)}")
    if stopped and decision.action == "restore":
        lines.append(f"leave {', '.join(stopped)} as they are (not running)")
    if decision.action == "restore":
        mode = (
            "--single-transaction"
            if decision.single_transaction
            else f"--exit-on-error (its {facts.read.entries} entries exceed half the server's lock table)"
        )
        lines.append(
            f"restore it into a new database {decision.new_database} (template0, owner "
            f"{server.owner or 'postgres'}) with pg_restore {mode}"
        )
        lines.append(
            f"check {len(conf.tables)} table(s)" + (f" and {conf.freshness}" if conf.freshness else "")
        )
        swap = (
            f"rename {conf.database} to {decision.old_database} (kept), then "
            if decision.old_database
            else ""
        )
        lines.append(
            f"swap in one transaction: {swap}{decision.new_database} to {conf.database}"
            + (f" ({server.connections} connection(s) to it terminated)" if server.exists else "")
        )
    if decision.start:
        lines.append(f"start the writers {', '.join(decision.start)} and wait until they are healthy")
    return lines
