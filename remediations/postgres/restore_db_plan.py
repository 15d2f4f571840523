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

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from remediations.actions.pg_checks import check_vars
from remediations.actions.writers import Writer as Writer
from remediations.actions.writers import WriterFacts as WriterFacts
from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.units import human_age as human_age
from remediations.core.units import human_bytes
from remediations.facts.postgres import positive_number
from remediations.postgres.restore_db_sql import DumpRead as DumpRead
from remediations.postgres.restore_db_sql import Server as Server
from remediations.postgres.restore_db_sql import major_of

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
FETCH_MODES = ("auto", "host", "controller")


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
class Settings:
    database: str
    bucket: str
    prefix: str
    tables: Mapping[str, int]
    freshness: str
    rpo_hours: float
    expansion: float
    state_path: str
    fetch: str = "auto"  # restore_fetch: who downloads the dump (the host with curl, or the controller)


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
    fetch = str(host.get("restore_fetch") or "auto")
    if fetch not in FETCH_MODES:
        raise UsageError(f"{where}: restore_fetch {fetch!r} must be one of {', '.join(FETCH_MODES)}")
    return Settings(
        database=name,
        bucket=str(host.require("backup_s3_bucket")),
        prefix=str(host.get("dump_s3_prefix", "dumps/") or ""),
        tables=tables,
        freshness=freshness,
        rpo_hours=positive_number(host, "backup_rpo_hours", DEFAULT_RPO_HOURS),
        expansion=positive_number(host, "restore_db_expansion", DEFAULT_EXPANSION),
        state_path=f"{state_dir}/{STATE_FILE.format(database=name)}",
        fetch=fetch,
    )


# --------------------------------------------------------------------------------------------
# Facts: the server and the record (one round trip), the dump's read
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dump:
    key: str
    size: int
    modified: dt.datetime
    etag: str = ""
    checksums: tuple[str, ...] = ()  # the listing's ChecksumAlgorithm (S3 keeps those)
    checksum_type: str = ""

    def describe(self, bucket: str, now: dt.datetime) -> str:
        age = human_age((now - self.modified).total_seconds())
        return f"s3://{bucket}/{self.key} ({_human_bytes(self.size)}, {age} old)"


@dataclass
class State:
    phase: str = IDLE
    dump: str = ""
    dump_etag: str = ""
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
                dump_etag=str(data.get("dump_etag") or ""),
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
                    "dump_etag": self.dump_etag,
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
        return replace(
            self,
            phase=IDLE,
            dump="",
            dump_etag="",
            new_database="",
            old_database="",
            writers=[],
            started_at="",
        )


# --------------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------------


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
