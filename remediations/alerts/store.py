"""The receiver's durable memory (SQLite, WAL): every alert it was sent, every action it decided,
and the circuits it opened. An alert is stored, with the actions it asks for, in the same
transaction as the POST is answered 2xx, so a receiver killed at any moment after that loses nothing;
one action per (alert, rule, host) is what makes Alertmanager's re-sends and HA duplicates harmless.

Action states:
    queued            decided, waits for the worker (a free slot, its (rule, host) lock)
    planning          approve/dry-run mode: its check-mode plan is being made
    awaiting-approval the plan was posted; `inv alerts.approve ID` queues it, until it expires
    running           its `inv` process runs (pid and output file recorded)
    succeeded failed  the process ended (its exit code)
    interrupted       it was running when the receiver stopped and left no result: never re-run
    planned           dry-run: the plan was posted, nothing runs
    cancelled expired cooled-down circuit-open refused   it did not run, and the reason says why
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, name TEXT NOT NULL, labels TEXT NOT NULL,
    status TEXT NOT NULL, starts_at TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    posts INTEGER NOT NULL DEFAULT 1, resolved_at REAL);
CREATE INDEX IF NOT EXISTS alerts_fingerprint ON alerts (fingerprint);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alert_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    alert_name TEXT NOT NULL, rule TEXT NOT NULL, host TEXT NOT NULL, mode TEXT NOT NULL,
    command TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL, started REAL, ended REAL, pid INTEGER,
    output TEXT, exit_code INTEGER, expires REAL, approved_by TEXT, plan TEXT,
    UNIQUE (alert_key, rule, host));
CREATE INDEX IF NOT EXISTS actions_state ON actions (state);
CREATE TABLE IF NOT EXISTS circuits (
    rule TEXT NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    since REAL NOT NULL, PRIMARY KEY (rule, host));
"""
WAITING = ("queued", "planning", "awaiting-approval")
RAN = ("running", "succeeded", "failed", "interrupted")
FINAL = (
    "succeeded",
    "failed",
    "interrupted",
    "planned",
    "cancelled",
    "expired",
    "cooled-down",
    "circuit-open",
    "refused",
)


class StoreError(Exception):
    """The store cannot be opened or written: the message says which file and why."""


@dataclass(frozen=True)
class Action:
    id: int
    alert_key: str
    fingerprint: str
    alert_name: str
    rule: str
    host: str
    mode: str
    command: tuple[str, ...]
    state: str
    reason: str
    created: float
    updated: float
    started: float | None
    ended: float | None
    pid: int | None
    output: str | None
    exit_code: int | None
    expires: float | None
    approved_by: str | None
    plan: str | None

    @classmethod
    def of_row(cls, row: sqlite3.Row) -> Action:
        data = dict(row)
        data["command"] = tuple(json.loads(data["command"]))
        return cls(**data)

    @property
    def key(self) -> str:
        """The circuit's and the lock's key: rule@host."""
        return f"{self.rule}@{self.host}"

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["command"] = list(self.command)
        return data


class Store:
    """One SQLite connection shared by the receiver's threads under a lock (writes are short)."""

    def __init__(self, path: Path, create: bool = True) -> None:
        """`create=False` (approve, reset, status): a store that is not there is an error, never a new
        empty one that would say "nothing open" about the receiver's real store elsewhere."""
        self.path = path
        self._lock = threading.RLock()
        if not create and not path.is_file():
            raise StoreError(f"{path}: no receiver store there (--store: the file `inv alerts.serve` uses)")
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a 2xx means it is on disk
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the receiver's store ({exc})") from None
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write ({exc})") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: cannot write ({exc})") from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params))
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read ({exc})") from None

    # ---- actions -------------------------------------------------------------------------------

    def actions(self, where: str = "1", params: Sequence[Any] = ()) -> list[Action]:
        sql = f"SELECT * FROM actions WHERE {where} ORDER BY id"  # noqa: S608 - our own clauses
        return [Action.of_row(r) for r in self.query(sql, params)]

    def action(self, action_id: int) -> Action | None:
        found = self.actions("id = ?", (action_id,))
        return found[0] if found else None

    def set_state(self, action_id: int, state: str, reason: str, **fields: Any) -> None:
        columns = {"state": state, "reason": reason, "updated": time.time(), **fields}
        sets = ", ".join(f"{name} = ?" for name in columns)
        with self.transaction() as db:
            sql = f"UPDATE actions SET {sets} WHERE id = ?"  # noqa: S608 - our own column names
            db.execute(sql, (*columns.values(), action_id))

    # ---- circuits ------------------------------------------------------------------------------

    def circuit(self, rule: str, host: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM circuits WHERE rule = ? AND host = ? AND state = 'open'", (rule, host)
        )
        return rows[0] if rows else None

    def open_circuit(self, db: sqlite3.Connection, rule: str, host: str, reason: str) -> bool:
        """Open it (True) unless it is open already (False: it was said once)."""
        found = db.execute("SELECT state FROM circuits WHERE rule = ? AND host = ?", (rule, host)).fetchone()
        if found is not None and found["state"] == "open":
            return False
        db.execute(
            "INSERT OR REPLACE INTO circuits (rule, host, state, reason, since) VALUES (?, ?, 'open', ?, ?)",
            (rule, host, reason, time.time()),
        )
        return True

    def close_circuit(self, rule: str, host: str, reason: str) -> bool:
        with self.transaction() as db:
            done = db.execute(
                "UPDATE circuits SET state = 'closed', reason = ?, since = ? "
                "WHERE rule = ? AND host = ? AND state = 'open'",
                (reason, time.time(), rule, host),
            )
            return done.rowcount > 0

    def reset_at(self, rule: str, host: str) -> float:
        """When a person last closed the circuit of (rule, host) (0: never): what came before does not
        count towards it opening again (attempts, a refire)."""
        sql = "SELECT since FROM circuits WHERE rule = ? AND host = ? AND state = 'closed'"
        rows = self.query(sql, (rule, host))
        return float(rows[0]["since"]) if rows else 0.0

    def open_circuits(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM circuits WHERE state = 'open' ORDER BY rule, host")
