"""What the receiver does with one notification, inside the transaction that stores it: each alert
stored (or its re-send counted), each rule that fires queued as one action per (alert, rule, host),
a re-send or an HA peer's duplicate deduplicated, a resolved alert cancelling what still waits for it.

Nothing runs here: the worker (alerts/worker.py) runs actions later, so the POST is answered fast.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.alerts.payload import Alert, Notification, shown
from remediations.alerts.rules import Rule, decide, host_name
from remediations.alerts.store import WAITING, Action, Store
from remediations.core import registry
from remediations.core.inventory import Inventory


@dataclass(frozen=True)
class Event:
    """One decision the receiver made: audit-logged always, told to the channel when `tell`."""

    decision: str  # received | deduped | queued | awaiting-approval | … (README "Alerts")
    message: str
    fingerprint: str = ""
    alert: str = ""
    rule: str = ""
    host: str = ""
    action: int | None = None
    tell: bool = True


def about(action: Action, decision: str, message: str, tell: bool = True) -> Event:
    """An event about a stored action."""
    where = (action.fingerprint, action.alert_name, action.rule, action.host, action.id)
    return Event(decision, message, *where, tell=tell)


@dataclass
class Intake:
    events: list[Event] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.counts[event.decision] = self.counts.get(event.decision, 0) + 1


def command_for(rule: Rule, host: str, check: bool = False, approved: bool = False) -> list[str]:
    """The `inv` arguments of a rule's action on a host (always --json: the worker reads its result)."""
    if rule.kind == "runbook":
        argv = ["runbook", rule.target, "--host", host]
        for name, value in rule.args.items():
            argv += ["--var", f"{name}={value}"]
        # a runbook's own approve steps pause (exit 3) in auto mode; an approved action says yes
        return [*argv, *(["--check"] if check else ["--yes"] if approved else []), "--json"]
    kinds = {a.name: a.kind for a in registry.get(rule.target).params}
    argv = [rule.target, "--host", host]
    for name, value in rule.args.items():
        key = str(name).replace("-", "_")
        flag = "--" + key.replace("_", "-")
        if kinds.get(key) == "flag":
            argv += [flag] if value else []
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return [*argv, *(["--check"] if check else []), "--json"]


def command_text(argv: Sequence[str]) -> str:
    import shlex

    return "inv " + shlex.join(a for a in argv if a != "--json")


def receive(
    store: Store,
    notification: Notification,
    rules: Sequence[Rule],
    inventory: Inventory,
    now: float | None = None,
) -> Intake:
    """Store `notification` and decide; raises StoreError when it could not (the caller answers 5xx)."""
    now = time.time() if now is None else now
    out = Intake()
    by_name = {r.name: r for r in rules}
    with store.transaction() as db:
        for alert in notification.alerts:
            if not _store_alert(db, alert, now):
                out.add(
                    Event(
                        "deduped",
                        f"{_says(alert)}: already received ({alert.status}), nothing new",
                        alert.fingerprint,
                        alert.name,
                        tell=False,
                    )
                )
                continue
            if alert.status == "resolved":
                _resolve(db, alert, now, out)
                continue
            out.add(Event("received", f"{_says(alert)}: firing", alert.fingerprint, alert.name, tell=False))
            for decision in decide(rules, alert, inventory):
                rule = by_name[decision.rule]
                if decision.fires and decision.host is not None:
                    _queue(store, db, alert, rule, decision.host, now, out)
                elif "no inventory host" in decision.reason:
                    _refuse(db, alert, rule, decision.reason, now, out)
    return out


def _says(alert: Alert) -> str:
    where = shown(alert.labels.get("instance") or alert.labels.get("host") or "", 80)
    return f"{shown(alert.name, 80) or 'an alert'}{' on ' + where if where else ''}"


def _store_alert(db: sqlite3.Connection, alert: Alert, now: float) -> bool:
    """True when this is news: an alert not seen before, or one that resolved since."""
    row = db.execute("SELECT status FROM alerts WHERE key = ?", (alert.key,)).fetchone()
    if row is None:
        db.execute(
            "INSERT INTO alerts (key, fingerprint, name, labels, status, starts_at, first_seen, "
            "last_seen, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.key,
                alert.fingerprint,
                alert.name,
                json.dumps(dict(alert.labels), sort_keys=True),
                alert.status,
                alert.starts_at.isoformat(),
                now,
                now,
                now if alert.status == "resolved" else None,
            ),
        )
        return True
    news = row["status"] == "firing" and alert.status == "resolved"
    db.execute(
        "UPDATE alerts SET posts = posts + 1, last_seen = ?, status = CASE WHEN ? THEN "
        "'resolved' ELSE status END, resolved_at = CASE WHEN ? THEN ? ELSE resolved_at END WHERE key = ?",
        (now, news, news, now, alert.key),
    )
    return news


def _resolve(db: sqlite3.Connection, alert: Alert, now: float, out: Intake) -> None:
    """Resolved: every earlier firing of the same alert too (Alertmanager may send the resolved one
    with another startsAt), and whatever still waits for it is cancelled."""
    db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = COALESCE(resolved_at, ?) "
        "WHERE fingerprint = ? AND status = 'firing'",
        (now, alert.fingerprint),
    )
    marks = ",".join("?" * len(WAITING))
    waiting = db.execute(
        f"SELECT id, rule, host, state FROM actions WHERE fingerprint = ? "  # noqa: S608 - marks only
        f"AND state IN ({marks})",
        (alert.fingerprint, *WAITING),
    ).fetchall()
    out.add(Event("resolved", f"{_says(alert)}: resolved", alert.fingerprint, alert.name, tell=False))
    for row in waiting:
        reason = f"{alert.name} resolved before its turn ({row['state']}): nothing runs"
        db.execute(
            "UPDATE actions SET state = 'cancelled', reason = ?, updated = ? WHERE id = ?",
            (reason, now, row["id"]),
        )
        out.add(
            Event(
                "cancelled",
                f"action {row['id']} ({row['rule']} on {row['host']}): {reason}",
                alert.fingerprint,
                alert.name,
                row["rule"],
                row["host"],
                row["id"],
            )
        )


def _queue(
    store: Store, db: sqlite3.Connection, alert: Alert, rule: Rule, host: str, now: float, out: Intake
) -> None:
    _refire(store, db, alert, rule, host, now, out)
    argv = command_for(rule, host)
    state = "queued" if rule.mode == "auto" else "planning"
    done = db.execute(
        "INSERT OR IGNORE INTO actions (alert_key, fingerprint, alert_name, rule, host, mode, "
        "command, state, reason, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            alert.key,
            alert.fingerprint,
            alert.name,
            rule.name,
            host,
            rule.mode,
            json.dumps(argv),
            state,
            f"{alert.name} fired",
            now,
            now,
        ),
    )
    if done.rowcount == 0:
        out.add(
            Event(
                "deduped",
                f"{_says(alert)}: {rule.name} on {host} was decided before",
                alert.fingerprint,
                alert.name,
                rule.name,
                host,
                tell=False,
            )
        )
        return
    what = {"auto": "will run", "approve": "needs approval for", "dry-run": "would run (dry-run)"}[rule.mode]
    out.add(
        Event(
            state,
            f"{_says(alert)}: rule {rule.name} {what} `{command_text(argv)}` (action {done.lastrowid})",
            alert.fingerprint,
            alert.name,
            rule.name,
            host,
            done.lastrowid,
            tell=False,
        )
    )


def _refire(
    store: Store, db: sqlite3.Connection, alert: Alert, rule: Rule, host: str, now: float, out: Intake
) -> None:
    """The same alert firing again soon after a "successful" fix: the fix did not hold."""
    row = db.execute(
        "SELECT id, ended FROM actions WHERE fingerprint = ? AND rule = ? AND host = ? AND "
        "state = 'succeeded' AND alert_key != ? ORDER BY ended DESC LIMIT 1",
        (alert.fingerprint, rule.name, host, alert.key),
    ).fetchone()
    if row is None or row["ended"] is None or now - row["ended"] > rule.circuit.refire:
        return
    reset = db.execute("SELECT since FROM circuits WHERE rule = ? AND host = ? AND state = 'closed'",
                       (rule.name, host)).fetchone()  # fmt: skip
    if reset is not None and reset["since"] >= row["ended"]:
        return  # a person closed the circuit after that fix: it does not count against the next one
    reason = (
        f"{alert.name} fired again {now - row['ended']:.0f} s after action {row['id']} fixed it "
        f"(within {rule.circuit.refire:g} s): the fix does not hold"
    )
    if store.open_circuit(db, rule.name, host, reason):
        out.add(
            Event(
                "circuit-opened",
                f"circuit {rule.name}@{host} opened: {reason}; automatic runs stop "
                f"until `inv alerts.reset {rule.name}@{host}`",
                alert.fingerprint,
                alert.name,
                rule.name,
                host,
            )
        )


def _refuse(db: sqlite3.Connection, alert: Alert, rule: Rule, reason: str, now: float, out: Intake) -> None:
    label = host_name(alert.labels.get(rule.host_label, ""))
    text = f"{_says(alert)}: rule {rule.name} {reason}"
    done = db.execute(
        "INSERT OR IGNORE INTO actions (alert_key, fingerprint, alert_name, rule, host, mode, "
        "command, state, reason, created, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, '[]', 'refused', ?, ?, ?)",
        (alert.key, alert.fingerprint, alert.name, rule.name, label, rule.mode, text, now, now),
    )
    if done.rowcount:
        out.add(Event("refused", text, alert.fingerprint, alert.name, rule.name, label, done.lastrowid))


def status_counts(store: Store) -> dict[str, Any]:
    rows = store.query("SELECT state, COUNT(*) AS n FROM actions GROUP BY state")
    return {r["state"]: r["n"] for r in rows}
