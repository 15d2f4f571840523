"""The engine: select hosts, fan out in bounded batches, lock, run a remediation, keep every result.

A remediation is a `Remediation`: it names its task, the inventory vars it requires, whether it
changes hosts (and so takes the host lock), and a `run(ctx)` that gathers facts, decides, applies
(unless ctx.check) and verifies, recording steps on `ctx`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.core import connection, interrupt
from remediations.core.connection import Remote
from remediations.core.errors import ConnectionLost, DeadlineExceeded, HostError, Interrupted, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.lock import DEFAULT_LOCK_DIR, HostLock
from remediations.core.results import HostResult, RunResult, Status, StepResult, timed
from remediations.core.validate import check_vars, value
from remediations.reporting.audit import Actor, AuditLog, audit_path
from remediations.reporting.notify import NotifyConfig, send, summary
from remediations.reporting.redact import Redactor

DEFAULT_PARALLEL = 10
DEFAULT_LOCK_WAIT = 60.0
DEFAULT_DEADLINE = 1800.0  # seconds a remediation may take on one host, unless it says otherwise


@dataclass(frozen=True)
class MaxFail:
    """Past how many failed hosts the remaining batches are not started: a count or a percentage."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> MaxFail:
        if text is None or str(text).strip() == "":
            return cls()
        text = str(text).strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise UsageError(
                f"--max-fail {text!r}: give a count (0 stops at the first failure) or a percentage "
                "such as 25%"
            ) from None

    def exceeded(self, failed: int, total: int) -> bool:
        if self.count is not None:
            return failed > self.count
        if self.percent is not None and total:
            return failed * 100.0 / total > self.percent
        return False


@dataclass(frozen=True)
class RunOptions:
    check: bool = False
    diff: bool = False
    parallel: int = DEFAULT_PARALLEL
    serial: int | None = None
    max_fail: MaxFail = field(default_factory=MaxFail)
    lock_wait: float = DEFAULT_LOCK_WAIT
    connect_timeout: float = connection.CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"--parallel {self.parallel}: give at least 1")
        if self.serial is not None and self.serial < 1:
            raise UsageError(f"--serial {self.serial}: give at least 1 (or leave it out)")
        if self.lock_wait < 0:
            raise UsageError(f"--lock-wait {self.lock_wait}: give a number of seconds, 0 or more")


class HostContext:
    """What a remediation sees of one host during one run."""

    def __init__(
        self,
        host: Host,
        remote: Remote,
        options: RunOptions,
        redactor: Redactor,
        result: HostResult,
        arguments: Mapping[str, Any],
        task: str = "",
        holder: str = "",
        read_only: bool = False,
    ) -> None:
        self.task = task
        self.read_only = read_only  # check mode, or a remediation that changes nothing
        self.holder = holder or task  # who holds the host locks of this run (user@machine: task)
        self.prefetched: str | None = None  # the output of Remediation.facts_under_lock, when it ran
        self.host = host
        self.remote = remote
        self.options = options
        self.redactor = redactor
        self.result = result
        self.arguments = arguments

    @property
    def check(self) -> bool:
        return self.options.check

    def var(self, name: str, default: Any = None) -> Any:
        return self.host.get(name, default)

    def record(
        self, step: str, status: Status, message: str, *, diff: str = "", duration: float = 0.0, **data: Any
    ) -> StepResult:
        return self.result.add(
            StepResult(
                step,
                status,
                self.redactor.text(message),
                self.redactor.text(diff) if self.options.diff else "",
                duration,
                self.redactor.data(data),
            )
        )

    def last_done(self) -> str:
        """The last step recorded on this host, in a few words, for "interrupted after …"."""
        if not self.result.steps:
            return "before any step"
        last = self.result.steps[-1]
        message = " ".join(last.message.split())
        message = message if len(message) <= 100 else message[:99] + "…"
        return f"{last.step} ({last.status.value}: {message})"

    @contextmanager
    def step(self, name: str) -> Iterator[StepTimer]:
        """Time a step; the block sets its outcome with `timer.done(status, message)`.

        A HostError raised inside records the step as failed and propagates to end the host. No
        step starts once the run was told to stop.
        """
        stopping = interrupt.requested()
        if stopping:
            self.record(name, Status.FAILED, f"interrupted by {stopping} after {self.last_done()}; "
                        f"{name} was not started")  # fmt: skip
            raise _Recorded(Interrupted(stopping))
        timer = StepTimer()
        with timed() as clock:
            try:
                yield timer
            except HostError as exc:
                clock.stop()
                message = incident_message(exc, name, self.last_done(), self.read_only)
                self.record(name, Status.FAILED, message, duration=clock.elapsed)
                raise _Recorded(exc) from exc
        self.record(name, timer.status, timer.message, diff=timer.diff, duration=clock.elapsed, **timer.data)


def incident_message(exc: HostError, during: str, after: str, read_only: bool) -> str:
    """The failure of a step, said so that the next person knows what state the host is in."""
    if isinstance(exc, ConnectionLost):
        if read_only:
            return f"connection lost during {during} (after {after}): {exc}; this run changes nothing"
        return (
            f"connection lost after {after}, during {during}; the host may be half-changed: {during} "
            f"was in progress. Not reconnected, nothing more was sent ({exc})"
        )
    if isinstance(exc, Interrupted):
        return f"{exc} after {after}, during {during}; {during} was stopped before it finished"
    if isinstance(exc, DeadlineExceeded):
        return f"{exc}; {during} was in progress (after {after})"
    return str(exc)


class StepTimer:
    def __init__(self) -> None:
        self.status = Status.OK
        self.message = ""
        self.diff = ""
        self.data: dict[str, Any] = {}

    def done(self, status: Status, message: str, diff: str = "", **data: Any) -> None:
        self.status, self.message, self.diff = status, message, diff
        self.data.update(data)


class _Recorded(Exception):
    """A HostError whose step result is already recorded."""


class Remediation:
    """Base of every remediation; subclasses set the class vars and implement `run`."""

    task: ClassVar[str] = ""
    changes_hosts: ClassVar[bool] = True  # takes the host lock
    changes: ClassVar[bool] = True  # changes something (hosts, S3, IAM): a real run leaves "started"
    required_vars: ClassVar[tuple[str, ...]] = ()
    default_serial: ClassVar[int | None] = None

    def prepare(self, inventory: Inventory) -> None:
        """Resolve what the remediation needs from the inventory besides its targets (other hosts);
        raise UsageError for bad input. Called once, before any host is touched."""

    def validate(self, host: Host) -> None:
        """Raise UsageError for anything missing on `host`, before any host is touched."""
        for name in self.required_vars:
            host.require(name)

    def run(self, ctx: HostContext) -> None:
        raise NotImplementedError

    def deadline(self, host: Host) -> float:
        """Seconds the whole remediation may take on `host` (connect to unlock); past it the host
        fails and nothing more is sent to it. The `run_deadline` var overrides it."""
        configured = value(host, "run_deadline")
        return DEFAULT_DEADLINE if configured is None else float(configured)

    def facts_under_lock(self, host: Host) -> str:
        """Shell text to run as soon as the host lock is held, its output handed to `run` as
        `ctx.prefetched` (one round trip instead of two); "" for none."""
        return ""

    def notify_anyway(self, run: RunResult, hosts: Sequence[Host]) -> bool:
        """True to notify about this run whatever `notify_on` says (e.g. a drill's success)."""
        return False

    def arguments(self) -> dict[str, Any]:
        """The task's own arguments, for audit records (secrets are redacted on the way out)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


Listener = Callable[[HostResult], None]


class Engine:
    """Runs one remediation over selected hosts and keeps every host's result."""

    def __init__(
        self,
        inventory: Inventory,
        options: RunOptions,
        *,
        actor: Actor | None = None,
        listener: Listener | None = None,
        connect: Callable[[Host, float], Remote] = connection.connect,
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

    def run(self, remediation: Remediation, hosts: Sequence[Host]) -> RunResult:
        arguments = {**remediation.arguments(), **_option_arguments(self.options)}
        remediation.prepare(self.inventory)
        for host in hosts:
            check_vars(host)  # typed vars first: a remediation's own checks may read them
            remediation.validate(host)
            if not host.is_local:
                host.ssh_options  # noqa: B018 - raises UsageError for options that are bad input
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
            phase = "connect"  # the step a failure outside the remediation's own steps is recorded as
            try:
                with timed() as connecting:
                    remote = self.connect(host, self.options.connect_timeout)
                # The deadline counts from the connection: the lock wait is part of it.
                remote.guard.set_deadline(remediation.deadline(host) + self.options.lock_wait)
                phase = "run"
                ctx = HostContext(
                    host, remote, self.options, self.redactor, result, arguments, remediation.task,
                    self.actor.holder(remediation.task),
                    read_only=self.options.check or not remediation.changes_hosts,
                )
                if remediation.changes_hosts and not self.options.check:
                    phase = "lock"
                    with HostLock(
                        remote,
                        self.actor.holder(remediation.task),
                        self.options.lock_wait,
                        str(host.get("lock_dir", DEFAULT_LOCK_DIR)),
                        then=remediation.facts_under_lock(host),
                    ) as lock:
                        phase = "run"
                        ctx.prefetched = lock.output
                        self._started(run, host, arguments, ctx.holder)
                        remediation.run(ctx)
                        phase = "unlock"
                else:
                    if remediation.changes and not self.options.check:
                        self._started(run, host, arguments, ctx.holder)
                    remediation.run(ctx)
            except _Recorded:
                pass
            except HostError as exc:
                duration = connecting.elapsed if phase == "connect" else 0.0
                message = str(exc)
                if ctx is not None and phase != "connect":
                    message = incident_message(exc, phase, ctx.last_done(), ctx.read_only)
                result.add(StepResult(phase, Status.FAILED, self.redactor.text(message), duration=duration))
            except Exception as exc:  # a bug must not hide the other hosts' results
                result.add(
                    StepResult(
                        phase,
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
        self.warnings.extend(
            send(self.notify_config, summary(run, self.actor.holder(run.task)), self.redactor)
        )


def run_wide_vars(inventory: Inventory) -> dict[str, Any]:
    """Vars every host shares (in practice, `all` vars): where run-wide settings live."""
    hosts = list(inventory.hosts.values())
    if not hosts:
        return {}
    first = dict(hosts[0].vars)
    return {k: v for k, v in first.items() if all(h.vars.get(k) == v for h in hosts[1:])}


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


def controller_host(inventory: Inventory, name: str) -> Host:
    """The controller itself as a target (`ansible_connection: local`), with the run-wide vars:
    for tasks whose work is done from the controller (S3, backup checks, cron)."""
    return Host(name, {**run_wide_vars(inventory), "ansible_connection": "local"}, (), inventory.source)
