"""The engine: fan out over hosts in bounded batches, connect, lock, run a remediation, keep every result.

A remediation (`core.remediation.Remediation`) gathers facts and returns a plan; the engine owns the
order and the modes: it connects and locks each host, shows the plan in check mode or applies it,
opens the related hosts a remediation asks for (`ctx.open`), audits and notifies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from remediations.core import interrupt, startup
from remediations.core.context import HostContext, _Recorded, incident_message
from remediations.core.errors import HostError
from remediations.core.inventory import Host, Inventory, run_wide_vars
from remediations.core.lock import DEFAULT_LOCK_DIR, HostLock
from remediations.core.options import MaxFail, RunOptions
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, connect
from remediations.core.results import HostResult, RunResult, Status, StepResult, timed
from remediations.core.validate import check_vars
from remediations.reporting.audit import Actor, AuditLog, audit_path
from remediations.reporting.notify import NotifyConfig, environment_name, send, summary
from remediations.reporting.redact import Redactor

Listener = Callable[[HostResult], None]


class _Phase:
    """How far one host got outside the remediation's own steps: connect, lock, run, unlock."""

    def __init__(self) -> None:
        self.name = "connect"


class Engine:
    """Runs one remediation over selected hosts and keeps every host's result."""

    def __init__(
        self,
        inventory: Inventory,
        options: RunOptions,
        *,
        actor: Actor | None = None,
        listener: Listener | None = None,
        connect: Callable[[Host, float], Remote] = connect,
    ) -> None:
        self.inventory = inventory
        self.options = options
        self.actor = actor or Actor.current()
        self.listener = listener
        self.connect = connect
        self.global_vars = run_wide_vars(inventory)
        self.redactor = Redactor(secret_names=self.global_vars.get("secret_vars") or ())
        for host in inventory.hosts.values():
            self.redactor.learn(host.vars)
        self.audit = AuditLog(audit_path(self.global_vars.get("audit_log")), self.actor, self.redactor)
        self.notify_config = NotifyConfig.load(self.global_vars)
        self.warnings: list[str] = []

    def run(
        self, remediation: Remediation, hosts: Sequence[Host], arguments: Mapping[str, Any] | None = None
    ) -> RunResult:
        """Run `remediation` on `hosts`; `arguments` are what audit records say it was given
        (default: the remediation's attributes)."""
        given = remediation.arguments() if arguments is None else dict(arguments)
        arguments = {**given, **_option_arguments(self.options)}
        remediation.prepare(self.inventory)
        for host in hosts:
            check_vars(host)  # typed vars first: a remediation's own checks may read them
            remediation.validate(host)
            if not host.is_local:
                host.ssh_options  # noqa: B018 - raises UsageError for options that are bad input
        if any(not host.is_local for host in hosts):
            from remediations.core import connection  # noqa: F401 - the SSH client: part of start-up
        startup.done()
        run = RunResult(remediation.task, self.options.check)
        serial = self.options.serial or (None if self.options.check else remediation.default_serial)
        batches = _batches(list(hosts), serial)
        with timed() as clock, interrupt.handled():
            for index, batch in enumerate(batches):
                workers = min(self.options.parallel, len(batch))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="host") as pool:
                    results = list(pool.map(lambda h: self._host(remediation, h, arguments, run), batch))
                run.hosts.extend(results)
                failed = len(run.failed)
                remaining = [h for b in batches[index + 1 :] for h in b]
                stopping = interrupt.requested()
                if stopping:
                    run.interrupted = stopping
                    run.stopped_early = f"interrupted by {stopping}" + (
                        f"; {len(remaining)} remaining host(s) not started" if remaining else ""
                    )
                    why = f"not started: the run was interrupted by {stopping}"
                    self._skip(run, remaining, arguments, why)
                    break
                if remaining and self._max_fail().exceeded(failed, len(hosts)):
                    run.stopped_early = (
                        f"{failed} host(s) failed; {len(remaining)} remaining host(s) not started"
                    )
                    self._skip(run, remaining, arguments, "not started: the rollout stopped after a failure")
                    break
        run.duration = clock.elapsed
        self._notify(run, remediation.notify_anyway(run, hosts))
        return run

    def _skip(self, run: RunResult, hosts: Sequence[Host], arguments: Mapping[str, Any], why: str) -> None:
        for host in hosts:
            skipped = HostResult(host.name)
            skipped.add(StepResult("start", Status.SKIPPED, why))
            run.hosts.append(skipped)
            self._finish(run, skipped, arguments)

    def _max_fail(self) -> MaxFail:
        """A rolling run stops at its first failed batch unless --max-fail says otherwise."""
        limit = self.options.max_fail
        return limit if limit.count is not None or limit.percent is not None else MaxFail(count=0)

    def _host(
        self, remediation: Remediation, host: Host, arguments: Mapping[str, Any], run: RunResult
    ) -> HostResult:
        result = HostResult(host.name)
        stopping = interrupt.requested()
        if stopping:  # a host the pool had not started when the signal came
            why = f"not started: the run was interrupted by {stopping}"
            result.add(StepResult("start", Status.SKIPPED, why))
            self._finish(run, result, arguments)
            return result
        with timed() as clock:
            remote: Remote | None = None
            ctx: HostContext | None = None
            phase = _Phase()  # the step a failure outside the remediation's own steps is recorded as
            try:
                with timed() as connecting:
                    remote = self.connect(host, self.options.connect_timeout)
                # The deadline counts from the connection: the lock wait is part of it.
                remote.guard.set_deadline(remediation.deadline(host) + self.options.lock_wait)
                phase.name = "run"
                ctx = self._context(remediation, host, remote, result, arguments)
                self._run_on(remediation, ctx, run, phase)
            except _Recorded:
                pass
            except HostError as exc:
                duration = connecting.elapsed if phase.name == "connect" else 0.0
                message = str(exc)
                if ctx is not None and phase.name != "connect":
                    message = incident_message(exc, phase.name, ctx.last_done(), ctx.read_only)
                text = self.redactor.text(message)
                result.add(StepResult(phase.name, Status.FAILED, text, duration=duration))
            except Exception as exc:  # a bug must not hide the other hosts' results
                result.add(
                    StepResult(
                        phase.name,
                        Status.FAILED,
                        self.redactor.text(f"internal error: {type(exc).__name__}: {exc}"),
                    )
                )
            finally:
                if remote is not None:
                    remote.close()
        result.duration = clock.elapsed
        self._finish(run, result, arguments)
        return result

    def _context(
        self, remediation: Remediation, host: Host, remote: Remote, result: HostResult,
        arguments: Mapping[str, Any],
    ) -> HostContext:  # fmt: skip
        return HostContext(
            host, remote, self.options, self.redactor, result, arguments, remediation.task,
            self.actor.holder(remediation.task),
            read_only=self.options.check or not remediation.changes_hosts,
            opener=self._related(remediation),
        )  # fmt: skip

    def _run_on(self, remediation: Remediation, ctx: HostContext, run: RunResult, phase: _Phase) -> None:
        """Run the remediation on a connected host, under its lock when it changes hosts; `phase`
        says how far it got ("lock", "run", "unlock"), for a failure outside the remediation's steps."""
        host, arguments = ctx.host, ctx.arguments
        if not (remediation.changes_hosts and not self.options.check):
            if remediation.changes and not self.options.check:
                self._started(run, host, arguments, ctx.holder)
            remediation.run(ctx)
            return
        phase.name = "lock"
        with HostLock(
            ctx.remote,
            ctx.holder,
            self.options.lock_wait,
            str(host.get("lock_dir", DEFAULT_LOCK_DIR)),
            then=remediation.facts_under_lock(host),
        ) as lock:
            phase.name = "run"
            ctx.prefetched = lock.output
            self._started(run, host, arguments, ctx.holder)
            remediation.run(ctx)
            phase.name = "unlock"

    def _related(self, remediation: Remediation) -> Callable[[HostContext, Host], Any]:
        """How a remediation opens another host: connected here, locked unless the run changes
        nothing (check mode, a read-only task), its steps recorded in the asking host's result;
        closed when the block ends."""

        @contextmanager
        def open_related(parent: HostContext, host: Host) -> Iterator[HostContext]:
            remote = self.connect(host, self.options.connect_timeout)
            try:
                remote.guard.set_deadline(remediation.deadline(host) + self.options.lock_wait)
                read_only = self.options.check or not remediation.changes
                ctx = HostContext(
                    host, remote, self.options, self.redactor, parent.result, parent.arguments,
                    remediation.task, parent.holder, read_only=read_only, opener=parent._opener,
                )  # fmt: skip
                if read_only:
                    yield ctx
                    return
                lock_dir = str(host.get("lock_dir", DEFAULT_LOCK_DIR))
                with HostLock(remote, parent.holder, self.options.lock_wait, lock_dir):
                    yield ctx
            finally:
                remote.close()

        return open_related

    def _started(self, run: RunResult, host: Host, arguments: Mapping[str, Any], holder: str) -> None:
        try:
            self.audit.started(run, host.name, arguments, holder)
        except OSError as exc:
            self.warnings.append(f"audit log {self.audit.path} not written: {exc.strerror}")

    def _finish(self, run: RunResult, result: HostResult, arguments: Mapping[str, Any]) -> None:
        try:
            self.audit.host(run, result, arguments)
        except OSError as exc:
            self.warnings.append(f"audit log {self.audit.path} not written: {exc.strerror}")
        if self.listener is not None:
            self.listener(result)

    def _notify(self, run: RunResult, anyway: bool = False) -> None:
        if not (anyway or self.notify_config.wants(run)):
            return
        environment = self.notify_config.environment or environment_name(self.inventory.source)
        message = summary(run, self.actor.holder(run.task), environment, self.actor.run_id)
        self.warnings.extend(send(self.notify_config, message, self.redactor))


def _batches(hosts: list[Host], serial: int | None) -> list[list[Host]]:
    if not serial:
        return [hosts] if hosts else []
    return [hosts[i : i + serial] for i in range(0, len(hosts), serial)]


def _option_arguments(options: RunOptions) -> dict[str, Any]:
    return {
        "check": options.check,
        "diff": options.diff,
        "serial": options.serial,
        "parallel": options.parallel,
    }
