"""The front end: the Invoke collection built from the registry, and `execute`, which runs one
remediation with the common flags, reports, and returns an exit code.

`tasks.py` is `collection()`; a team's own tasks file or fabfile can call `execute` or `run_task` too.
Exit code: 0 when no host failed, 1 when one did, 2 for bad input (nothing run), 3 when none failed
but a step warned, 130/143 when interrupted.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.tasks import Task, task

from remediations.core import registry
from remediations.core.errors import UsageError
from remediations.core.options import DEFAULT_LOCK_WAIT, DEFAULT_PARALLEL

if TYPE_CHECKING:  # the engine pulls in paramiko: imported when a task runs, not at `inv --list`
    from remediations.core.inventory import Host, Inventory
    from remediations.core.options import RunOptions
    from remediations.core.remediation import Remediation
    from remediations.core.results import RunResult
    from remediations.reporting.audit import Actor


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
        from remediations.core.options import MaxFail, RunOptions
        from remediations.core.units import parse_seconds
        from remediations.core.validate import MAX_LOCK_WAIT, check_count

        return RunOptions(
            check=self.check,
            diff=self.diff,
            parallel=check_count(self.parallel, "--parallel") if _given(self.parallel) else DEFAULT_PARALLEL,
            serial=check_count(self.serial, "--serial") if _given(self.serial) else None,
            max_fail=MaxFail.parse(self.max_fail),
            lock_wait=parse_seconds(self.lock_wait, "--lock-wait", LOCK_WAIT_HINT, high=MAX_LOCK_WAIT)
            if _given(self.lock_wait) else DEFAULT_LOCK_WAIT,
        )


LOCK_WAIT_HINT = "give a duration from 0 to 1d such as 30, 1.5, 90s or 5m (a bare number is seconds)"


def _given(value: object) -> bool:
    return value is not None and value != ""


COMMON_HELP = {
    "host": "host, group, comma list or glob from the inventory (e.g. prod, api1,api2, 'web*'); "
    "'!name' excludes",
    "inventory": "inventory file, YAML, INI or JSON as Ansible reads it "
    "(default: $REMEDIATIONS_INVENTORY, else inventories/hosts.yml)",
    "check": "gather facts and show the plan; change nothing",
    "diff": "show what would change / changed, secrets masked",
    "json": "print the run's results as JSON (for scripts and cron)",
    "parallel": f"at most N hosts at once (default {DEFAULT_PARALLEL})",
    "serial": "rolling batches of N hosts; later batches wait for earlier ones",
    "max-fail": "stop starting batches after more than N failed hosts, or more than P% (default 0 "
    "for rolling runs)",
    "lock-wait": f"seconds to wait for another run's lock on a host (default {DEFAULT_LOCK_WAIT:g}); "
    "a duration such as 1.5, 90s or 5m",
}


def execute(
    make: Callable[[], Remediation],
    flags: Flags,
    *,
    task: str,
    arguments: Mapping[str, Any] | None = None,
    targets: Callable[[Inventory], list[Host]] | None = None,
    declared: bool = False,
) -> tuple[int, RunResult | None]:
    """Run the remediation `make()` builds on the hosts `flags.host` selects.

    `targets` is for tasks that run on the controller (S3): it builds the hosts when --host is not
    given, and then a missing default inventory is no error (an empty one is used).
    Bad input prints one line to stderr, is audited, and returns exit code 2 with nothing run.
    With `declared`, `arguments` (the declaration's audited values) are what every audit record of the
    run says it was given, bad input and good runs alike.
    """
    import datetime as dt

    from remediations.core import inventory as inventory_mod
    from remediations.core.engine import Engine
    from remediations.core.inventory import run_wide_vars
    from remediations.reporting.audit import Actor
    from remediations.reporting.output import Reporter, RunInfo

    reporter = Reporter(as_json=flags.json, show_diff=flags.diff)
    audit_log: str | None = None  # the inventory's audit_log var, once the inventory is read
    actor = Actor.current()
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
        engine = Engine(inv, options, actor=actor, listener=reporter.host_done)
        started = dt.datetime.now(dt.UTC)
        run = engine.run(remediation, hosts, dict(arguments or {}) if declared else None)
        ended = dt.datetime.now(dt.UTC)
    except UsageError as exc:
        return _usage_error(exc, flags, task, arguments, audit_log, actor), None
    options_given = ("check", "diff", "parallel", "serial", "max_fail", "lock_wait")
    given = {"host": flags.host, "inventory": flags.inventory, **(arguments or {}),
             **{name: getattr(flags, name) for name in options_given}}  # fmt: skip
    info = RunInfo(actor.run_id, engine.redactor.data(given), started, ended)
    reporter.summary(run, engine.warnings, info)
    return run.exit_code, run


def _usage_error(exc: UsageError, flags: Flags, task: str, arguments: Mapping[str, Any] | None,
                 audit_log: str | None, actor: Actor) -> int:  # fmt: skip
    """Bad input: one line on stderr (and a JSON error object on stdout with --json), audited."""
    import json

    from remediations.reporting.audit import AuditLog, audit_path
    from remediations.reporting.output import error_document
    from remediations.reporting.redact import Redactor

    redactor = Redactor()
    message = redactor.data(str(exc))
    record = {"host": flags.host, "check": flags.check, **(arguments or {})}
    if flags.json:
        try:
            print(json.dumps(error_document(message, UsageError.exit_code)), flush=True)
        except BrokenPipeError:
            from remediations.invoke_errors import reader_gone

            reader_gone()
    print(f"error: {message}", file=sys.stderr)
    try:
        AuditLog(audit_path(audit_log), actor, redactor).usage_error(task, record, str(exc))
    except OSError as err:
        print(f"warning: audit log not written: {err.strerror}", file=sys.stderr)
    return UsageError.exit_code


# ------------------------------------------------------------------------- the Invoke collection

COMMON_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
    for name, default in (
        ("host", None),
        ("inventory", None),
        ("check", False),
        ("diff", False),
        ("json", False),
        # No numeric defaults: Invoke would parse the number itself, and a traceback is its answer
        # to bad text. Flags parses them, with one line for bad input.
        ("parallel", None),
        ("serial", None),
        ("max_fail", None),
        ("lock_wait", None),
    )
]
COMMON_NAMES = {p.name for p in COMMON_PARAMS}
_CONTEXT = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)

# The only short forms: each means the same in every task, and none destroys or creates anything
# (Invoke's automatic ones made `-c` --create in one task and `-d` --delete-new in another).
# Invoke's own core flags already take c d D e f F h l p r R T V w.
SHORT_FLAGS = {"host": "H", "inventory": "i", "check": "C"}


class RemediationTask(Task[Any]):
    """An Invoke task with no automatic short flags: only SHORT_FLAGS, the same in every task."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        """Invoke starts a repeatable flag's raw value as [] rather than None, so a bare `--service`
        passed its "needed value" check and meant every service: here it starts as None, and a
        repeatable flag given without a value is a parse error like any other."""
        arguments: list[Argument] = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.kind is list:
                argument.raw_value = None
        return arguments

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts


def run_task(cls: type[Remediation], flags: Flags, given: Mapping[str, Any]) -> tuple[int, RunResult | None]:
    """Run the declared remediation `cls` with the flags' text `given` (parsed by `cls.params`)."""
    values: dict[str, Any] = {}

    def make() -> Remediation:
        values.update(cls.params.parse(given))
        return cls.from_values(dict(values))

    def targets(inventory: Inventory) -> list[Host]:
        return cls.targets(inventory, values)

    if not flags.host and cls.default_hosts:
        flags = replace(flags, host=cls.default_hosts)
    if flags.check and cls.check_shows_diff:
        flags = replace(flags, diff=True)
    code, run = execute(make, flags, task=cls.task, arguments=cls.params.audited(given),
                        targets=targets if cls.runs_on_controller else None, declared=True)  # fmt: skip
    if run is not None:
        try:
            cls.report(run, flags.json)
            sys.stdout.flush()
        except BrokenPipeError:  # `inv health … | head -1`: the run is done, the reader went away
            from remediations.invoke_errors import reader_gone

            reader_gone()
    return code, run


def declared_task(cls: type[Remediation]) -> Task[Any]:
    """The Invoke task of a declared remediation: its flags, help and docstring from the class."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [inspect.Parameter(a.name, keyword, default=a.cli_default) for a in cls.params.flags()]
    rest = cls.params.rest()

    def body(c: Context, **kwargs: Any) -> None:
        flags = Flags(**{k: v for k, v in kwargs.items() if k in COMMON_NAMES})
        given = {k: v for k, v in kwargs.items() if k not in COMMON_NAMES}
        if rest is not None:  # the words after `--`, as typed (Invoke keeps them only space-joined)
            from remediations.invoke_errors import remainder

            given[rest.name] = remainder()
        code, _ = run_task(cls, flags, given)
        if code:
            raise Exit(code=code)

    body.__signature__ = inspect.Signature([_CONTEXT, *own, *COMMON_PARAMS])  # type: ignore[attr-defined]
    body.__name__ = cls.task.replace("-", "_")
    body.__doc__ = inspect.getdoc(cls)
    common = {**COMMON_HELP, **({"host": cls.host_help} if cls.host_help else {})}
    made: Task[Any] = task(name=cls.task, help={**common, **cls.params.help()}, klass=RemediationTask,
                           iterable=cls.params.repeatable())(body)  # fmt: skip
    return made


class PendingTask(RemediationTask):
    """A declared remediation's task before its module is imported.

    Its name comes from the registry's index; the first use of anything else (its flags, its
    docstring, its body: what Invoke's parser, `--help`, `--list` and the executor read) imports the
    remediation's module and makes this the task `declared_task` builds. `inv TASK` parses against
    the tasks the command line names (`only_named`), so that the other modules are never imported.
    """

    def __init__(self, name: str) -> None:  # the real task's __init__ runs on first use (resolve)
        self._name = name
        self.__name__ = name.replace("-", "_")
        self.aliases: tuple[str, ...] = ()
        self.is_default = False

    @property
    def resolved(self) -> bool:
        return "body" in self.__dict__

    def resolve(self) -> None:
        if not self.resolved:
            self.__dict__.update(declared_task(registry.get(self.name)).__dict__)

    def __getattr__(self, attr: str) -> Any:  # only for attributes the instance does not have yet
        if attr.startswith("__") or "_name" not in self.__dict__ or self.resolved:
            raise AttributeError(attr)  # copy's and inspect's probes; a half-built copy; a real miss
        self.resolve()
        return getattr(self, attr)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]  # Invoke's --list reads it
        self.resolve()
        doc: str | None = self.__dict__.get("__doc__")
        return doc


def collection(*extra: Task[Any], lazy: bool = True) -> Collection:
    """Every remediation of the registry as an Invoke task, its flags from its declaration, plus
    `extra` tasks of a team's own (a registered task of the same name is left to theirs).

    With `lazy` (the default) the tasks are PendingTasks: no remediation module is imported until a
    task is used; `lazy=False` imports every module and builds every task now.
    """
    from remediations.alerts.task import alerts_collection
    from remediations.runbook.task import runbook_task

    ns = Collection()
    taken = {t.name for t in extra}
    if "runbook" not in taken:
        ns.add_task(runbook_task())  # runs registered tasks in sequence: not itself a remediation
    if "alerts" not in taken:
        ns.add_collection(alerts_collection())  # alerts.test: the rules against a payload, offline
    for name in registry.names() if lazy else registry.discover():
        if name not in taken:
            ns.add_task(PendingTask(name) if lazy else declared_task(registry.get(name)))
    for made in extra:
        ns.add_task(made)
    return ns


def only_named(ns: Collection, tokens: Iterable[str]) -> Collection | None:
    """A copy of `ns` without the pending tasks that none of `tokens` (the command line) names,
    or None when there is none to leave out."""
    named = {ns.transform(token) for token in tokens if not token.startswith("-")}
    left_out = [name for name, made in ns.tasks.items()
                if isinstance(made, PendingTask) and not made.resolved and name not in named]  # fmt: skip
    if not left_out:
        return None
    only = copy.copy(ns)
    only.tasks = copy.copy(ns.tasks)  # a pending task has no aliases: the shared alias map stays right
    for name in left_out:
        del only.tasks[name]  # type: ignore[no-untyped-call]
    return only


def every_task(ns: Collection) -> None:
    """Add to a lazy `ns` the tasks that the index does not name but a remediation module declares
    (imports every module: for --list, --complete and a command line that does not parse)."""
    if any(isinstance(made, PendingTask) for made in ns.tasks.values()):
        for name in registry.discover():
            if name not in ns.tasks:
                ns.add_task(PendingTask(name))
