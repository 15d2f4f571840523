"""The receiver's worker: runs the stored actions, a few at a time, each as its own `inv` process.

Each tick: approvals past their time expire; finished processes are read (their --json document);
then waiting actions start while there is a free slot, in the order they came, at most one per
(rule, host) at a time. Before an action starts it is checked again: its alert still firing (else
cancelled), the circuit of its (rule, host) closed, no other action there within the rule's
cooldown, fewer than `circuit.attempts` in `circuit.window` (else the circuit opens). A failed fix
opens the circuit too. Approved actions skip the cooldown and attempt count (a person decided), not
the lock.

A process outlives the receiver (its own session): stopped or killed, the receiver leaves it to
finish, and when it starts again it finds it by pid (and its run id in /proc/PID/environ), waits
for it and reads its result; one that left none is `interrupted`, never run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remediations.alerts.intake import about, command_text
from remediations.alerts.journal import Journal
from remediations.alerts.rules import Rule
from remediations.alerts.store import Action, Store, StoreError

RUN_ID_ENV = "REMEDIATIONS_RUN_ID"
TICK = 0.25


@dataclass
class Settings:
    inv: Sequence[str]  # how to start inv: [path] or [python, -m, invoke, …]
    cwd: str  # the project folder (its tasks.py)
    outputs: Path  # one PID.json / PID.log per action
    workers: int = 2
    approval_ttl: float = 3600.0
    action_timeout: float = 1800.0
    env: Mapping[str, str] | None = None


@dataclass
class _Running:
    action: Action
    proc: subprocess.Popen[bytes] | None  # None: a process an earlier receiver started
    deadline: float
    check: bool  # the plan of an approve/dry-run action
    signalled: int = 0  # 0, then SIGTERM, then SIGKILL


def run_id(action: Action, check: bool = False) -> str:
    return f"alert-{action.id}{'-plan' if check else ''}"


def check_argv(argv: Sequence[str]) -> list[str]:
    body = [a for a in argv if a not in ("--json", "--yes", "--check")]
    return [*body, "--check", "--json"]


class Worker:
    def __init__(self, store: Store, rules: Sequence[Rule], journal: Journal, settings: Settings) -> None:
        self.store = store
        self.rules = {r.name: r for r in rules}
        self.journal = journal
        self.settings = settings
        self.running: dict[int, _Running] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        settings.outputs.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ---- the loop ------------------------------------------------------------------------------

    def loop(self) -> None:
        self.recover()
        while not self.stopping.is_set():
            try:
                self.tick()
            except StoreError as exc:  # the disk is full or the file went away: say so, keep trying
                self.journal.say(f"the worker cannot use the store: {exc}")
            self.wake.wait(TICK)
            self.wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._expire(now)
        self._reap(now)
        for action in self.store.actions("state IN ('planning', 'queued')"):
            if len(self.running) >= self.settings.workers:
                break
            if action.id not in self.running:
                self._consider(action, now)
        self.journal.metrics.running.set(len(self.running))
        waiting = self.store.query(
            "SELECT COUNT(*) AS n FROM actions WHERE state IN ('queued', 'planning', 'awaiting-approval')"
        )
        self.journal.metrics.waiting.set(waiting[0]["n"])
        self.journal.metrics.circuits.set(len(self.store.open_circuits()))

    def tell(self, action: Action, decision: str, message: str, tell: bool = True) -> None:
        self.journal.record([about(action, decision, message, tell)])

    def _not_run(self, action: Action, state: str, reason: str, decision: str = "") -> bool:
        """Record why `action` does not run, tell the channel; False (for _allowed)."""
        self.store.set_state(action.id, state, reason)
        self.tell(action, decision or state, f"{action.alert_name} on {action.host}: {reason}")
        return False

    # ---- deciding to start ---------------------------------------------------------------------

    def _consider(self, action: Action, now: float) -> None:
        alert = self.store.query("SELECT status FROM alerts WHERE key = ?", (action.alert_key,))
        if not alert or alert[0]["status"] != "firing":
            reason = f"{action.alert_name} resolved before its turn: nothing runs"
            self.store.set_state(action.id, "cancelled", reason)
            self.tell(action, "cancelled", f"action {action.id} ({action.rule} on {action.host}): {reason}")
            return
        if any(r.action.rule == action.rule and r.action.host == action.host for r in self.running.values()):
            return  # the (rule, host) lock: it waits for the one running there
        rule = self.rules.get(action.rule)
        if rule is None:
            self.store.set_state(action.id, "cancelled", f"rule {action.rule} is no longer in the rules file")
            return
        if action.state == "queued" and not action.approved_by and not self._allowed(action, rule, now):
            return
        self._start(action, now, check=action.state == "planning")

    def _allowed(self, action: Action, rule: Rule, now: float) -> bool:
        circuit = self.store.circuit(action.rule, action.host)
        if circuit is not None:
            reason = (
                f"circuit {action.key} is open ({circuit['reason']}): not run; "
                f"`inv alerts.reset {action.key}` lets it run again"
            )
            return self._not_run(action, "circuit-open", reason)
        last = self.store.query(
            "SELECT id, COALESCE(ended, started) AS at FROM actions WHERE rule = ? "
            "AND host = ? AND started IS NOT NULL AND id != ? "
            "ORDER BY at DESC LIMIT 1",
            (action.rule, action.host, action.id),
        )
        if last and now - last[0]["at"] < rule.cooldown:
            reason = (
                f"cooled down: action {last[0]['id']} ran {action.rule} on {action.host} "
                f"{now - last[0]['at']:.0f} s ago (cooldown {rule.cooldown:g} s): not run"
            )
            return self._not_run(action, "cooled-down", reason)
        since = max(now - rule.circuit.window, self.store.reset_at(action.rule, action.host))
        recent = self.store.query(
            "SELECT COUNT(*) AS n FROM actions WHERE rule = ? AND host = ? AND started > ?",
            (action.rule, action.host, since),
        )
        if recent[0]["n"] >= rule.circuit.attempts:
            reason = (
                f"{recent[0]['n']} action(s) of {action.rule} on {action.host} started in the last "
                f"{rule.circuit.window:g} s, its circuit.attempts: it keeps being needed, look at why"
            )
            with self.store.transaction() as db:
                self.store.open_circuit(db, action.rule, action.host, reason)
            text = (
                f"circuit {action.key} is open ({reason}): not run; `inv alerts.reset {action.key}` to go on"
            )
            return self._not_run(action, "circuit-open", text, "circuit-opened")
        return True

    # ---- running -------------------------------------------------------------------------------

    def _start(self, action: Action, now: float, check: bool) -> None:
        argv = check_argv(action.command) if check else list(action.command)
        out = self.settings.outputs / f"{run_id(action, check)}.json"
        env = {
            **(self.settings.env if self.settings.env is not None else os.environ),
            RUN_ID_ENV: run_id(action, check),
        }
        try:
            with open(out, "wb") as stdout, open(out.with_suffix(".log"), "wb") as stderr:
                proc = subprocess.Popen(
                    [*self.settings.inv, *argv],
                    cwd=self.settings.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
        except OSError as exc:
            self.store.set_state(action.id, "failed", f"inv could not start: {exc}", started=now, ended=now)
            self.tell(action, "failed", f"action {action.id}: inv could not start ({exc})")
            return
        self.store.set_state(
            action.id,
            action.state if check else "running",
            action.reason,
            pid=proc.pid,
            output=str(out),
            **({} if check else {"started": now}),
        )
        self.running[action.id] = _Running(action, proc, now + self.settings.action_timeout, check)
        if not check:
            self.tell(
                action,
                "running",
                f"{action.alert_name} on {action.host}: running "
                f"`{command_text(action.command)}` (action {action.id})",
            )

    def _reap(self, now: float) -> None:
        for action_id, run in list(self.running.items()):
            code = run.proc.poll() if run.proc is not None else (None if _alive(run) else -1)
            if code is None and now > run.deadline:
                _kill(run)
                continue
            if code is None:
                continue
            del self.running[action_id]
            document = _document(Path(self.settings.outputs / f"{run_id(run.action, run.check)}.json"))
            if run.check:
                self._planned(run.action, document, now)
            else:
                self._ended(run.action, code, document, now)

    def _ended(self, action: Action, code: int, document: dict[str, Any] | None, now: float) -> None:
        if code == -1:  # a process of an earlier receiver: its exit code is in its document, if any
            code = int(document["exit_code"]) if document and "exit_code" in document else -1
        said = result_text(document)
        if code == -1:
            state, text = (
                "interrupted",
                "it was running when the receiver stopped and left no result: not run again",
            )
        elif code in (0, 3):
            state, text = "succeeded", f"done (exit {code}){': ' + said if said else ''}"
        else:
            state, text = "failed", f"FAILED (exit {code}){': ' + said if said else ''}"
        self.store.set_state(action.id, state, text[:2000], ended=now, exit_code=code)
        self.tell(
            action, state, f"{action.alert_name} on {action.host}: `{command_text(action.command)}` {text}"
        )
        if state == "failed":
            reason = f"action {action.id} failed (exit {code})"
            with self.store.transaction() as db:
                opened = self.store.open_circuit(db, action.rule, action.host, reason)
            if opened:
                self.tell(
                    action,
                    "circuit-opened",
                    f"circuit {action.key} opened: {reason}; automatic runs stop "
                    f"until `inv alerts.reset {action.key}`",
                )

    def _planned(self, action: Action, document: dict[str, Any] | None, now: float) -> None:
        plan = result_text(document) or "the check-mode run left no plan (see its log)"
        if action.mode == "dry-run":
            self.store.set_state(action.id, "planned", "dry-run: posted, never run", plan=plan[:4000])
            self.tell(
                action,
                "planned",
                f"{action.alert_name} on {action.host} (dry-run, not run): "
                f"`{command_text(action.command)}` would: {plan}",
            )
            return
        expires = now + self.settings.approval_ttl
        self.store.set_state(
            action.id, "awaiting-approval", "its plan was posted", plan=plan[:4000], expires=expires
        )
        at = time.strftime("%H:%M UTC", time.gmtime(expires))
        self.tell(
            action,
            "awaiting-approval",
            f"{action.alert_name} on {action.host}: approve action {action.id} "
            f"to run `{command_text(action.command)}` (`inv alerts.approve "
            f"{action.id}`, until {at}); its plan: {plan}",
        )

    def _expire(self, now: float) -> None:
        for action in self.store.actions("state = 'awaiting-approval' AND expires < ?", (now,)):
            reason = (f"nobody approved it in time: not run; re-sends of the same alert are not asked again: "
                      f"if it is still needed, run `{command_text(action.command)}` by hand")  # fmt: skip
            self.store.set_state(action.id, "expired", reason)
            self.tell(action, "expired", f"action {action.id} ({action.rule} on {action.host}): {reason}")

    def recover(self) -> None:
        """Actions an earlier receiver left running (or planning): watch their process, or mark them."""
        now = time.time()
        for action in self.store.actions("state IN ('running', 'planning') AND pid IS NOT NULL"):
            check = action.state == "planning"
            run = _Running(action, None, now + self.settings.action_timeout, check)
            if _alive(run):
                self.running[action.id] = run
                self.tell(
                    action,
                    "recovered",
                    f"action {action.id} still runs (pid {action.pid}) from before the "
                    f"restart: waiting for its result",
                    tell=False,
                )
            elif check:
                self.store.set_state(action.id, "planning", "its plan is made again", pid=None)
            else:
                self._ended(action, -1, _document(Path(action.output or "")), now)


def _alive(run: _Running) -> bool:
    pid = run.action.pid
    if not pid:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_ID_ENV}={run_id(run.action, run.check)}".encode() in environ.split(b"\0")


def _kill(run: _Running) -> None:
    pid = run.proc.pid if run.proc is not None else run.action.pid
    sig = signal.SIGTERM if run.signalled == 0 else signal.SIGKILL
    if pid:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)  # its own session: the task and what it started
    run.signalled = sig
    run.deadline += 30.0  # a task given SIGTERM finishes its step and exits 143; then SIGKILL


def _document(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def result_text(document: Mapping[str, Any] | None) -> str:
    """What a --json document says, per host, in one line: `api1 changed: restarted api`."""
    if not document:
        return ""
    if document.get("error"):
        return str(document["error"])[:500]
    parts = []
    for host in document.get("hosts") or []:
        if not isinstance(host, Mapping):
            continue
        why = host.get("message") or host.get("reason") or ""
        parts.append(f"{host.get('host')} {host.get('status')}{': ' + str(why) if why else ''}")
    return "; ".join(parts)[:1500]
