"""The shared front end: run one remediation with the common flags, report, and return an exit code.

`tasks.py` (Invoke) is a thin layer over `execute`; a team's own fabfile can call it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remediations.core.errors import UsageError

if TYPE_CHECKING:  # the engine pulls in paramiko: imported when a task runs, not at `inv --list`
    from remediations.core.engine import Remediation, RunOptions
    from remediations.core.inventory import Host, Inventory
    from remediations.core.results import RunResult


@dataclass(frozen=True)
class Flags:
    """The flags every remediation task takes."""

    host: str | None = None
    inventory: str | None = None
    check: bool = False
    diff: bool = False
    json: bool = False
    # Numbers arrive as the flag's text (tasks.py gives Invoke no numeric defaults, so that bad text
    # is our one-line error, not Invoke's traceback); None means the default.
    parallel: int | str | None = None
    serial: int | str | None = None
    max_fail: str | None = None
    lock_wait: float | str | None = None

    def options(self) -> RunOptions:
        from remediations.core.engine import DEFAULT_LOCK_WAIT, DEFAULT_PARALLEL, MaxFail, RunOptions
        from remediations.core.validate import check_count, check_seconds

        return RunOptions(
            check=self.check,
            diff=self.diff,
            parallel=check_count(self.parallel, "--parallel") if _given(self.parallel) else DEFAULT_PARALLEL,
            serial=check_count(self.serial, "--serial") if _given(self.serial) else None,
            max_fail=MaxFail.parse(self.max_fail),
            lock_wait=check_seconds(self.lock_wait, "--lock-wait") if _given(self.lock_wait)
            else DEFAULT_LOCK_WAIT,
        )


def _given(value: object) -> bool:
    return value is not None and value != ""


COMMON_HELP = {
    "host": "host, group, comma list or glob from the inventory (e.g. prod, api1,api2, 'web*'); "
    "'!name' excludes",
    "inventory": "inventory YAML (default: $REMEDIATIONS_INVENTORY, else inventories/hosts.yml)",
    "check": "gather facts and show the plan; change nothing",
    "diff": "show what would change / changed, secrets masked",
    "json": "print the run's results as JSON (for scripts and cron)",
    "parallel": "at most N hosts at once (default 10)",
    "serial": "rolling batches of N hosts; later batches wait for earlier ones",
    "max-fail": "stop starting batches after more than N failed hosts, or more than P% (default 0 "
    "for rolling runs)",
    "lock-wait": "seconds to wait for another run's lock on a host (default 60)",
}


def execute(
    make: Callable[[], Remediation],
    flags: Flags,
    *,
    task: str,
    arguments: Mapping[str, Any] | None = None,
    targets: Callable[[Inventory], list[Host]] | None = None,
) -> tuple[int, RunResult | None]:
    """Run the remediation `make()` builds on the hosts `flags.host` selects.

    `targets` is for tasks that run on the controller (S3): it builds the hosts when --host is not
    given, and then a missing default inventory is no error (an empty one is used).
    Bad input prints one line to stderr, is audited, and returns exit code 2 with nothing run.
    """
    from remediations.core import inventory as inventory_mod
    from remediations.core.engine import Engine, run_wide_vars
    from remediations.reporting.audit import Actor, AuditLog, audit_path
    from remediations.reporting.output import Reporter
    from remediations.reporting.redact import Redactor

    reporter = Reporter(as_json=flags.json, show_diff=flags.diff)
    audit_log: str | None = None  # the inventory's audit_log var, once the inventory is read
    try:
        if not flags.host and targets is None:
            raise UsageError("--host is required: a host, a group, a comma list or a glob")
        options = flags.options()
        remediation = make()
        path = inventory_mod.inventory_path(flags.inventory)
        if targets is not None and not flags.host and path == inventory_mod.DEFAULT_INVENTORY \
                and not path.exists():
            inv = inventory_mod.Inventory(str(path))
        else:
            inv = inventory_mod.load(path)
        audit_log = run_wide_vars(inv).get("audit_log")
        hosts = inv.select(flags.host) if flags.host else targets(inv) if targets else []
        engine = Engine(inv, options, listener=reporter.host_done)
        run = engine.run(remediation, hosts)
    except UsageError as exc:
        message = str(exc)
        redactor = Redactor()
        record = {"host": flags.host, "check": flags.check, **(arguments or {})}
        print(f"error: {redactor.data(message)}", file=sys.stderr)
        try:
            AuditLog(audit_path(audit_log), Actor.current(), redactor).usage_error(task, record, message)
        except OSError as err:
            print(f"warning: audit log not written: {err.strerror}", file=sys.stderr)
        return UsageError.exit_code, None
    reporter.summary(run, engine.warnings)
    return run.exit_code, run
