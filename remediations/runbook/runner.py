"""Run a runbook on hosts, one host after another: each step through the engine, every decision recorded.

Check mode runs every read-only check for real and every remediation in its own check mode, so the
path printed is the one the runbook would take given what the checks see now (a remediation that
would change something counts as "changed" for the `when` of later steps). A real run writes each
step to the audit log under the runbook's run id and keeps a state file per (runbook, host), so that
`--from STEP` resumes an interrupted or paused run with the earlier steps' results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from remediations.core import interrupt, registry
from remediations.core.engine import Engine
from remediations.core.errors import UsageError
from remediations.core.inventory import Host, Inventory, run_wide_vars
from remediations.core.options import RunOptions
from remediations.core.results import RunResult, Status
from remediations.reporting.audit import Actor, AuditLog, audit_path
from remediations.reporting.notify import NotifyConfig, environment_name, send
from remediations.reporting.redact import Redactor
from remediations.runbook.spec import Runbook, Step, missing_host_vars, substitute, task_arguments

PAUSED_EXIT_CODE = 3  # waiting for a person: like a warning, the run did not fail


@dataclass
class StepRecord:
    id: str
    task: str
    status: str
    message: str
    started: str = ""
    ended: str = ""
    note: str = ""  # how the runbook went on: jumped, retried, approved by …

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class HostRun:
    host: str
    status: str = "ok"
    reason: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    paused_at: str = ""
    interrupted: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "status": self.status, "reason": self.reason, "paused_at": self.paused_at,
                "interrupted": self.interrupted, "steps": [s.to_dict() for s in self.steps]}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    check: bool = False
    yes: bool = False
    from_step: str | None = None
    options: RunOptions = field(default_factory=RunOptions)
    values: Mapping[str, str] = field(default_factory=dict)  # the runbook's vars (--var)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class StateFile:
    """What a real run of a runbook on a host has done so far (for `--from`), 0600, written whole."""

    def __init__(self, folder: Path, runbook: str, host: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.:-]", "_", host)[:100]
        self.path = folder / f"{runbook}@{safe}.json"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, data: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


class Runner:
    def __init__(self, book: Runbook, inventory: Inventory, settings: Settings, actor: Actor, *,
                 out: Callable[[str], None] = print,
                 ask: Callable[[str], str] | None = None) -> None:  # fmt: skip
        self.book, self.inventory, self.settings, self.actor = book, inventory, settings, actor
        self.out, self.ask = out, ask
        variables = run_wide_vars(inventory)
        self.redactor = Redactor(secret_names=variables.get("secret_vars") or ())
        for host in inventory.hosts.values():
            self.redactor.learn(host.vars)
        self.audit = AuditLog(audit_path(variables.get("audit_log")), actor, self.redactor)
        self.state_dir = self.audit.path.parent / "runbooks"
        self.notify_config = NotifyConfig.load(variables)
        self.environment = self.notify_config.environment or environment_name(inventory.source)
        self.warnings: list[str] = []

    # ------------------------------------------------------------------------------- the hosts

    def run(self, hosts: list[Host]) -> list[HostRun]:
        for host in hosts:  # bad input before any host is touched
            missing = missing_host_vars(self.book, host)
            if missing:
                raise UsageError(f"runbook {self.book.name} needs the host var(s) {', '.join(missing)} "
                                 f"on {host.name}: set them in the inventory")  # fmt: skip
        done: list[HostRun] = []
        for i, host in enumerate(hosts):
            result = self.run_host(host)
            done.append(result)
            if result.status == "failed" or result.interrupted or result.paused_at:
                for other in hosts[i + 1 :]:
                    why = f"not started: the runbook on {host.name} ended {result.status}"
                    done.append(HostRun(other.name, "skipped", why))
                break
        return done

    def run_host(self, host: Host) -> HostRun:
        result = HostRun(host.name)
        results: dict[str, str] = {}
        messages: dict[str, str] = {}
        state = StateFile(self.state_dir, self.book.name, host.name)
        start = self._resume(state, results, messages) if self.settings.from_step else 0
        mode = "check mode: nothing is changed" if self.settings.check else f"run {self.actor.run_id}"
        self.out(f"runbook {self.book.name} on {host.name} ({mode})")
        record: dict[str, Any] = {"runbook": self.book.name, "host": host.name, "run_id": self.actor.run_id,
                  "started": now(), "steps": {}, "next": None, "finished": False}  # fmt: skip
        if start:
            old = state.load() or {}
            record["steps"] = {k: v for k, v in (old.get("steps") or {}).items() if k in results}
        i = start
        changed_before = False
        while i < len(self.book.steps):
            step = self.book.steps[i]
            stopping = interrupt.requested()
            if stopping:
                result.interrupted = stopping
                break
            if not self.settings.check:
                record["next"] = step.id
                state.save(record)
            rec, jump, path_status = self._step(step, host, results, messages, changed_before, result)
            result.steps.append(rec)
            results[step.id], messages[step.id] = path_status, rec.message
            record["steps"][step.id] = rec.to_dict()
            self._print(rec, len(result.steps))
            self._audit_step(host, rec)
            if result.paused_at or result.interrupted:
                break
            changed_before = changed_before or (rec.status == "changed" and self._changes(step))
            if jump is None:
                i += 1
            elif jump == "":
                break
            else:
                target = self.book.index(jump)
                for skipped in self.book.steps[i + 1 : target]:
                    results[skipped.id], messages[skipped.id] = "skipped", f"jumped over to {jump}"
                i = target
        self._outcome(result)
        if not self.settings.check:
            record.update(next=result.paused_at or (None if not result.interrupted else step.id),
                          finished=not (result.paused_at or result.interrupted),
                          status=result.status, ended=now())  # fmt: skip
            state.save(record)
            self._notify_outcome(host, result)
        return result

    def _resume(self, state: StateFile, results: dict[str, str], messages: dict[str, str]) -> int:
        start = self.book.index(str(self.settings.from_step))
        old = state.load()
        if old is None or old.get("runbook") != self.book.name:
            raise UsageError(f"--from {self.settings.from_step}: no recorded run of {self.book.name} on "
                             f"this host to resume ({state.path}); run it without --from")  # fmt: skip
        steps = old.get("steps") or {}
        for step in self.book.steps[:start]:
            seen = steps.get(step.id) or {}
            results[step.id] = str(seen.get("status", "skipped"))
            messages[step.id] = str(seen.get("message", "not run before --from"))
        return start

    # ------------------------------------------------------------------------------- one step

    def _step(self, step: Step, host: Host, results: Mapping[str, str], messages: Mapping[str, str],
              changed_before: bool, result: HostRun) -> tuple[StepRecord, str | None, str]:  # fmt: skip
        """The step's record, where to go next (None: the next step, "": the end, or a step id), and
        the status later `when`s see (in check mode a re-check after a would-be change counts as
        passed: what it re-checks was not changed)."""
        started = now()
        unmet = [name for name, wanted in step.when.items() if results.get(name, "skipped") not in wanted]
        if unmet:
            seen = ", ".join(f"{n} is {results.get(n, 'skipped')}" for n in unmet)
            why = f"when {step.condition()}: {seen}"
            rec = StepRecord(step.id, step.task, "skipped", why, started, now())
            return rec, None, "skipped"
        if step.kind == "notify":
            rec = self._notify_step(step, host, results, messages, started)
            return rec, self._success_jump(step), rec.status
        note = ""
        if step.approve:
            approved, note = self._approval(step, host)
            if not approved:
                result.paused_at = step.id
                why = (f"waiting for approval: `inv runbook {self.book.name} --host {host.name} "
                       f"--from {step.id} --yes` to go on")  # fmt: skip
                return StepRecord(step.id, step.task, "skipped", why, started, now(), note), None, "skipped"
        rec = self._task_step(step, host, started, note, result)
        if step.kind == "check" and changed_before and self.settings.check:
            if rec.status == "failed":
                rec.note = (f"failed now, before the changes above (check mode makes none); the path "
                            f"assumes they fix it, else: on failure {step.on_failure}")  # fmt: skip
                return rec, self._success_jump(step), "ok"
            rec.note = "read now: check mode did not make the changes above"
        if rec.status != "failed":
            return rec, self._success_jump(step), rec.status
        return rec, self._after_failure(step, host, rec), rec.status

    def _changes(self, step: Step) -> bool:
        return step.kind == "run" and step.mode != "check"

    @staticmethod
    def _success_jump(step: Step) -> str | None:
        return {"next": None, "end": ""}.get(step.on_success, step.on_success)

    def _approval(self, step: Step, host: Host) -> tuple[bool, str]:
        if self.settings.check:
            return True, "a real run asks for approval here"
        if self.settings.yes:
            return True, "approved by --yes"
        if self.ask is None:
            return False, "no terminal to ask on"
        answer = self.ask(f"step {step.id} ({step.task}) on {host.name} needs approval: type {step.id} "
                          f"to run it, anything else to stop: ")  # fmt: skip
        if answer.strip() == step.id:
            return True, f"approved at the terminal by {self.actor.user}"
        return False, "not approved at the terminal"

    def _task_step(self, step: Step, host: Host, started: str, note: str, result: HostRun) -> StepRecord:
        cls = registry.get(step.task)
        args = {k: substitute(v, self.settings.values, host) for k, v in step.args.items()}
        given = task_arguments(cls, args)
        targets = self._targets(step, cls, given, host)
        check = self.settings.check or step.mode == "check"
        if step.mode == "check" and not self.settings.check:
            note = (note + "; " if note else "") + "a preview: run in check mode"
        options = replace(self.settings.options, check=check)
        attempts = 1 + (0 if check else step.retries)
        run: RunResult | None = None
        for attempt in range(1, attempts + 1):
            remediation = cls.from_values(cls.params.parse(given))
            if step.timeout is not None:
                _cap_deadline(remediation, step.timeout)
            engine = Engine(self.inventory, options, actor=self.actor)
            engine.notify_config = NotifyConfig()  # the runbook tells the channel, not each step
            run = engine.run(remediation, targets, cls.params.audited(given))
            self.warnings.extend(engine.warnings)
            if run.interrupted:
                result.interrupted = run.interrupted
                break
            if not run.failed or attempt == attempts:
                break
            note = f"attempt {attempt} failed; retrying in {step.retry_delay:g} s"
            self.out(f"    {step.id}: {note}")
            time.sleep(step.retry_delay)
            note = f"failed {attempt} time(s) before"
        assert run is not None
        status, message = _summary(run)
        return StepRecord(step.id, step.task, status, message, started, now(), note)

    def _targets(self, step: Step, cls: Any, given: Mapping[str, Any], host: Host) -> list[Host]:
        if step.hosts == "runbook":
            if cls.runs_on_controller:
                return list(cls.targets(self.inventory, cls.params.parse(given)))
            return [host]
        if step.hosts == "controller":
            return list(cls.targets(self.inventory, cls.params.parse(given)))
        return self.inventory.select(step.hosts, f"step {step.id} hosts")

    def _after_failure(self, step: Step, host: Host, rec: StepRecord) -> str | None:
        """Where a real run goes after a failed step: None = next step, "" = stop, else a step id."""
        if step.on_failure == "continue":
            rec.note = (rec.note + "; " if rec.note else "") + "on_failure: continue"
            return None
        if step.on_failure in ("stop", "escalate"):
            if step.on_failure == "escalate":
                text = (f"ESCALATE runbook {self.book.name} on {host.name}: step {step.id} "
                        f"({step.task}) failed: {rec.message}")  # fmt: skip
                rec.note = self._send(text)
            return ""
        rec.note = (rec.note + "; " if rec.note else "") + f"on_failure: going to {step.on_failure}"
        return step.on_failure

    def _notify_step(self, step: Step, host: Host, results: Mapping[str, str], messages: Mapping[str, str],
                     started: str) -> StepRecord:  # fmt: skip
        text = self.redactor.text(render(step.target, self.book.name, host.name, self.actor.run_id,
                                         results, messages))  # fmt: skip
        if self.settings.check:
            return StepRecord(step.id, "notify", "ok", f"would send: {text}", started, now())
        return StepRecord(step.id, "notify", "ok", text, started, now(), self._send(text))

    def _send(self, text: str) -> str:
        if self.settings.check:
            return "check mode: not sent"
        config = self.notify_config
        if not (config.slack_webhook or (config.telegram_bot_token and config.telegram_chat_id)):
            return "not sent: no channel configured (notify_slack_webhook, notify_telegram_*)"
        failed = send(config, text, self.redactor)
        self.warnings.extend(failed)
        return "; ".join(failed) if failed else "sent"

    # ------------------------------------------------------------------------------- the end

    def _outcome(self, result: HostRun) -> None:
        statuses = [s.status for s in result.steps]
        last = result.steps[-1] if result.steps else None
        if result.interrupted:
            result.status, result.reason = "failed", f"interrupted by {result.interrupted}"
        elif result.paused_at:
            result.status = "skipped"
            result.reason = f"paused before {result.paused_at}: waiting for approval"
        elif last is not None and last.status == "failed" and "on_failure: continue" not in last.note:
            result.status, result.reason = "failed", f"stopped at {last.id}: {last.message}"
        else:
            result.status = "changed" if "changed" in statuses else "ok"
            ran = [s for s in result.steps if s.status != "skipped"]
            result.reason = "; ".join(f"{s.id} {s.status}" for s in ran) or "every step's condition was unmet"

    def _notify_outcome(self, host: Host, result: HostRun) -> None:
        failed = result.status == "failed"
        choices = {"always": True, "failures": failed, "changes": failed or result.status == "changed"}
        wanted = choices.get(self.notify_config.on, False)
        if not wanted or result.paused_at:
            return
        env = f" [{self.environment}]" if self.environment else ""
        lines = [f"{result.status.upper()}{env} runbook {self.book.name} on {host.name}: {result.reason}"]
        ran = [s for s in result.steps if s.status != "skipped"]
        lines += [f"{s.id} ({s.task}): {s.status}: {s.message}" for s in ran]
        lines.append(f"run {self.actor.run_id} by {self.actor.user}@{self.actor.controller}")
        self._send("\n".join(lines))

    def _print(self, rec: StepRecord, number: int) -> None:
        shown = "would change" if self.settings.check and rec.status == "changed" else rec.status
        note = f"  [{rec.note}]" if rec.note else ""
        self.out(f"  {number:>2} {rec.id:<16} {rec.task:<18} {shown:<12} {rec.message}{note}")

    def _audit_step(self, host: Host, rec: StepRecord) -> None:
        record = {"time": now(), "run_id": self.actor.run_id, "user": self.actor.user,
                  "controller": self.actor.controller, "task": f"runbook:{self.book.name}",
                  "arguments": {"runbook": self.book.name, "from": self.settings.from_step},
                  "check": self.settings.check, "host": host.name, "step": rec.id, "status": rec.status,
                  "message": rec.message, "note": rec.note, "step_task": rec.task,
                  "started": rec.started, "ended": rec.ended}  # fmt: skip
        try:
            self.audit.write_lines([record])
        except OSError as exc:
            self.warnings.append(f"audit log {self.audit.path} not written: {exc.strerror}")


def _cap_deadline(remediation: Any, cap: float) -> None:
    """The step's timeout caps the task's own deadline on each host (the engine enforces it)."""
    own = remediation.deadline

    def capped(host: Host) -> float:
        return min(float(own(host)), cap)

    remediation.deadline = capped


def _summary(run: RunResult) -> tuple[str, str]:
    if not run.hosts:
        return "skipped", "no host to run on"
    worst = max((h.status for h in run.hosts), key=lambda s: s.rank)
    if len(run.hosts) == 1:
        return worst.value, run.hosts[0].message
    parts = [f"{h.host}: {h.status.value}" + (f" ({h.message})" if h.status != Status.OK else "")
             for h in run.hosts]  # fmt: skip
    return worst.value, "; ".join(parts)


def render(text: str, runbook: str, host: str, run_id: str, results: Mapping[str, str],
           messages: Mapping[str, str]) -> str:  # fmt: skip
    """A notify step's text with its fields filled (the fields were checked when the runbook was read)."""
    out: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        fixed = {"host": host, "runbook": runbook, "run_id": run_id}
        if name in fixed:
            out.append(fixed[name])
            continue
        ref, _, attr = name.partition(".")
        source = results if attr == "status" else messages
        out.append(source.get(ref, "not run"))
    return "".join(out)


def exit_code(runs: list[HostRun]) -> int:
    for r in runs:
        if r.interrupted:
            return {"SIGINT": 130, "SIGTERM": 143}.get(r.interrupted, 1)
    if any(r.status == "failed" for r in runs):
        return 1
    if any(r.paused_at for r in runs):
        return PAUSED_EXIT_CODE
    return 0
