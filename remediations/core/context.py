"""What a remediation sees of one host during a run: its vars, its connection, its steps, the plan runner.

The engine makes a `HostContext` per host. A remediation records steps on it (`ctx.step`, `ctx.record`)
and hands it its plan (`ctx.carry_out`): in check mode the plan is shown, otherwise applied. It never
asks which mode it is in. Related hosts (the env hosts of a rotation, a drill's restore host) are opened
through the engine with `ctx.open`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from remediations.core import interrupt
from remediations.core.errors import ConnectionLost, DeadlineExceeded, HostError, Interrupted
from remediations.core.inventory import Host
from remediations.core.options import RunOptions
from remediations.core.plan import Plan
from remediations.core.results import HostResult, Status, StepResult, timed
from remediations.reporting.redact import Redactor

if TYPE_CHECKING:  # paramiko stays out of `inv --list`
    from remediations.core.connection import Remote

Opener = Callable[["HostContext", Host], AbstractContextManager["HostContext"]]


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
        opener: Opener | None = None,
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
        self._opener = opener

    def carry_out(self, plan: Plan) -> bool:
        """Show the plan (check mode) or apply it; True when it was applied.

        Nothing to do: one ok step with the plan's reason. Check mode: one changed step per change,
        "would <summary>", with its diff. A real run applies the changes in order; a change whose
        apply raises a HostError fails the host there and the later changes are not made.
        """
        if plan.empty:
            self.record(plan.step, Status.OK, plan.reason, diff=plan.diff, **plan.data)
            return False
        if self.options.check:
            for change in plan.changes:
                data = {**plan.data, **change.data}
                if change.commands:
                    data["commands"] = list(change.commands)
                self.record(plan.check_step or change.step, Status.CHANGED, f"would {change.summary}",
                            diff=change.diff, **data)  # fmt: skip
            return False
        for change in plan.changes:
            data = change.data  # the commands are shown in check mode; a real run records what it did
            if change.own_steps:
                first = len(self.result.steps)
                change.apply(self)
                self._attach(self.result.steps[first:], change.diff, data)
                continue
            with self.step(change.step) as timer:
                message = change.apply(self)
                timer.done(Status.CHANGED, message or change.summary, diff=change.diff, **data)
        return True

    def _attach(self, steps: list[StepResult], diff: str, data: dict[str, Any]) -> None:
        """A change that recorded its own steps: its diff and data go with the last of them that
        changed something, unless one of them shows a diff of its own (so --diff shows it once)."""
        changed = [s for s in steps if s.status == Status.CHANGED]
        if not changed or any(s.diff for s in steps):  # a step that shows its own diff: not twice
            return
        last = changed[-1]
        if diff and not last.diff and self.options.diff:
            last.diff = self.redactor.text(diff)
        for key, value in self.redactor.data(data).items():
            last.data.setdefault(key, value)

    def open(self, host: Host) -> AbstractContextManager[HostContext]:
        """A context on another host this remediation needs (the env hosts of a rotation, a drill's
        restore host): connected by the engine, locked by it unless the run changes nothing, its steps
        recorded in this host's result. The run's own host is this context itself."""
        if host.name == self.host.name:
            return _same(self)
        if self._opener is None:
            raise HostError(f"{host.name}: this run cannot open other hosts")
        return self._opener(self, host)

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


@contextmanager
def _same(ctx: HostContext) -> Iterator[HostContext]:
    yield ctx


class _Recorded(Exception):
    """A HostError whose step result is already recorded."""


