"""The base class of every remediation: its declaration (task, arguments, vars) and its four steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from remediations.core.args import Args
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Plan
from remediations.core.validate import value

if TYPE_CHECKING:
    from remediations.core.context import HostContext
    from remediations.core.results import RunResult

DEFAULT_DEADLINE = 1800.0  # seconds a remediation may take on one host, unless it says otherwise


class Remediation:
    """Base of every remediation.

    A subclass names its task, declares its arguments (`params`, parsed before the constructor sees
    them: `cls(**values)`), the vars it requires, whether it changes hosts (and so takes the host
    lock), and implements the four steps:

        gather(ctx)                  the facts, in as few round trips as possible (None: a failed
                                     facts step was recorded and the host ends there)
        decide(ctx, facts) -> Plan   what to change, or nothing and why; no change is made here
        verify(ctx, facts, plan)     after the plan was applied: re-read what proves it took

    The engine runs them: in check mode the plan is shown, otherwise applied, then verified. A
    read-only task (`changes = False`) may override `run` instead: it has no plan to show.
    Subclasses that set `task` are registered: the CLI is built from the registry.
    """

    task: ClassVar[str] = ""
    params: ClassVar[Args] = Args()
    runs_on_controller: ClassVar[bool] = False  # its work is done from here (S3, IAM): --host optional
    default_hosts: ClassVar[str | None] = None  # the pattern used when --host is not given
    cron_safe: ClassVar[bool] = False  # idempotent and unattended: install-cron may schedule it
    changes_hosts: ClassVar[bool] = True  # takes the host lock
    changes: ClassVar[bool] = True  # changes something (hosts, S3, IAM): a real run leaves "started"
    required_vars: ClassVar[tuple[str, ...]] = ()
    default_serial: ClassVar[int | None] = None
    check_shows_diff: ClassVar[bool] = False  # --check implies --diff (the plan is a listing: S3 keys)
    host_help: ClassVar[str] = ""  # the task's own help for --host, if it is not the common one

    def prepare(self, inventory: Inventory) -> None:
        """Resolve what the remediation needs from the inventory besides its targets (other hosts);
        raise UsageError for bad input. Called once, before any host is touched."""

    def validate(self, host: Host) -> None:
        """Raise UsageError for anything missing on `host`, before any host is touched."""
        for name in self.required_vars:
            host.require(name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("task"):
            from remediations.core.registry import register

            register(cls)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        """The remediation for parsed argument values (see `params`); UsageError for bad combinations."""
        return cls(**values)

    @classmethod
    def targets(cls, inventory: Inventory, values: dict[str, Any]) -> list[Host]:
        """The hosts to run on when --host is not given (controller tasks); [] means --host is required."""
        if cls.runs_on_controller:
            from remediations.core.inventory import controller_host

            return [controller_host(inventory, cls.controller_name(values))]
        return []

    @classmethod
    def controller_name(cls, values: dict[str, Any]) -> str:
        """The name of the controller target in results ("s3:BUCKET", "controller")."""
        return "controller"

    @classmethod
    def report(cls, run: RunResult, as_json: bool) -> None:
        """Print what the task shows after its run (a table, a listing); nothing by default."""

    def gather(self, ctx: HostContext) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: implement gather/decide, or run")

    def decide(self, ctx: HostContext, facts: Any) -> Plan:
        raise NotImplementedError(f"{type(self).__name__}: implement decide")

    def verify(self, ctx: HostContext, facts: Any, plan: Plan) -> None:
        """After the plan was applied: re-read what proves it took; nothing by default."""

    def run(self, ctx: HostContext) -> None:
        facts = self.gather(ctx)
        if facts is None:
            return
        plan = self.decide(ctx, facts)
        if ctx.carry_out(plan):
            self.verify(ctx, facts, plan)

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
        """The task's own arguments, for audit records when none were declared (secrets are redacted
        on the way out); the CLI audits the declared arguments instead (`Args.audited`)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
