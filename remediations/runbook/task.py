"""`inv runbook NAME --host H [--check] [--from STEP] [--yes]`, `inv runbook --list`, `--show NAME`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task, task

from remediations.cli import COMMON_HELP, Flags, RemediationTask, _usage_error
from remediations.core.errors import UsageError

HELP = {
    "name": "the runbook to run or show (`inv runbook --list` names them)",
    "host": "host, group, comma list or glob: the runbook runs on each, one after another, and stops "
    "at the first host where it fails",
    "inventory": COMMON_HELP["inventory"],
    "check": "run every read-only check for real and every remediation in its own check mode; show "
    "the path the runbook would take; change nothing",
    "json": "print each host's steps as JSON",
    "from": "resume the last real run on these hosts at this step (its earlier steps' results are read "
    "from the run's state file)",
    "yes": "approve the steps marked `approve: true` (without it a real run asks at the terminal, and "
    "pauses when there is none)",
    "list": "list the runbooks (shipped, the inventory's runbook_dirs, --dir)",
    "show": "show a runbook's steps, conditions and the seed steps it covers",
    "dir": "a folder of your own runbooks, read before the shipped ones",
    "var": "a runbook var, NAME=VALUE; repeat for several (`--show NAME` lists its vars)",
}


def folders(directory: str | None, inventory_path: Path | None, configured: Any) -> list[Path]:
    from remediations.runbook.spec import search_path

    extra: list[str] = [directory] if directory else []
    if isinstance(configured, str):
        configured = [configured]
    for item in configured or []:
        base = inventory_path.parent if inventory_path is not None else Path.cwd()
        extra.append(str(base / str(item)))
    return search_path(extra)


def body(c: Context, name: str | None = None, host: str | None = None, inventory: str | None = None,
         check: bool = False, json: bool = False, from_: str | None = None, yes: bool = False,
         list_: bool = False, show: str | None = None, dir: str | None = None,
         var: list[str] | None = None) -> None:  # fmt: skip
    """Run an incident runbook: checks, remediations and notifications in order, with conditions.

    Check mode runs the read-only checks for real and every remediation in its own check mode, and
    shows the path the runbook would take. A real run records every step in the audit log under one
    run id; `--from STEP` resumes it. Steps marked `approve: true` ask first (or take --yes).
    Exit code: 0 done, 1 a step failed and the runbook stopped, 2 bad input (nothing run), 3 paused
    for an approval, 130/143 interrupted (resume with --from).
    """
    flags = Flags(host=host, inventory=inventory, check=check, json=json)
    code = main(flags, name or "", from_, yes, list_, show, dir, var or [])
    if code:
        raise Exit(code=code)


def main(flags: Flags, name: str, from_step: str | None, yes: bool, list_: bool, show: str | None,
         directory: str | None, given_vars: list[str]) -> int:  # fmt: skip
    from remediations.core import inventory as inventory_mod
    from remediations.core.inventory import run_wide_vars
    from remediations.reporting.audit import Actor

    actor = Actor.current()
    arguments = {"runbook": name or show, "from": from_step, "yes": yes,
                 "var": [v.partition("=")[0] for v in given_vars]}  # names only: a value may be secret
    audit_log = None
    try:
        path = inventory_mod.inventory_path(flags.inventory)
        inv = inventory_mod.load(path) if flags.host or flags.inventory or path.exists() else None
        variables = run_wide_vars(inv) if inv is not None else {}
        audit_log = variables.get("audit_log")
        search = folders(directory, path if inv is not None else None, variables.get("runbook_dirs"))
        if list_ or show:
            try:
                return _document(search, show, flags.json)
            except BrokenPipeError:  # `inv runbook --list | head -1`
                from remediations.invoke_errors import reader_gone

                reader_gone()
                return 0
        return _run(flags, name, from_step, yes, inv, search, actor, _pairs(given_vars))
    except UsageError as exc:
        return _usage_error(exc, flags, "runbook", arguments, audit_log, actor)


def _pairs(given: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--var {key or item!r}: give NAME=VALUE")
        out[key] = value
    return out


def _run(flags: Flags, name: str, from_step: str | None, yes: bool, inv: Any, search: list[Path],
         actor: Any, given_vars: dict[str, str]) -> int:  # fmt: skip
    from remediations.core import interrupt
    from remediations.reporting.audit import Actor
    from remediations.runbook import runner, spec

    if not name:
        raise UsageError("give a runbook name, e.g. inv runbook api-down --host api1 "
                         "(`inv runbook --list` shows them)")
    book = spec.find(name, search)
    values = book.values(given_vars)
    if flags.host and inv is not None:
        hosts = inv.select(flags.host)
    elif _controller_only(book):  # S3 and the like: the runbook runs once, from here
        from remediations.core.inventory import Inventory, controller_host

        inv = inv if inv is not None else Inventory("<no inventory>")
        hosts = [controller_host(inv, "controller")]
    else:
        raise UsageError("--host is required: the host (or group) the runbook runs on")
    if from_step is not None:
        book.index(from_step)  # an unknown step is bad input before anything runs
        if len(hosts) != 1:
            raise UsageError("--from resumes one host's run: give one host")
        old = runner.StateFile(runner_state_dir(inv), book.name, hosts[0].name).load() or {}
        if isinstance(old.get("run_id"), str):  # the resumed run keeps its run id
            actor = Actor(actor.user, actor.controller, old["run_id"])
    settings = runner.Settings(check=flags.check, yes=yes, from_step=from_step, options=flags.options(),
                               values=values)  # fmt: skip
    lines: list[str] = []
    out = lines.append if flags.json else print
    ask = _ask if sys.stdin.isatty() and not flags.json else None
    run = runner.Runner(book, inv, settings, actor, out=lambda text: out(text), ask=ask)
    with interrupt.handled():
        results = run.run(hosts)
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if flags.json:
        doc = {"runbook": book.name, "run_id": actor.run_id, "check": flags.check,
               "hosts": [r.to_dict() for r in results]}  # fmt: skip
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            print(f"{book.name} on {r.host}: {r.status}: {r.reason}")
    return runner.exit_code(results)


def _controller_only(book: Any) -> bool:
    from remediations.core import registry

    tasks = [s for s in book.steps if s.kind != "notify"]
    return bool(tasks) and all(s.hosts == "controller" or registry.get(s.target).runs_on_controller
                               for s in tasks)  # fmt: skip


def runner_state_dir(inv: Any) -> Path:
    from remediations.core.inventory import run_wide_vars
    from remediations.reporting.audit import audit_path

    return audit_path(run_wide_vars(inv).get("audit_log")).parent / "runbooks"


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        return ""


def _document(search: list[Path], show: str | None, as_json: bool) -> int:
    from remediations.runbook import spec

    books = [spec.find(show, search)] if show else spec.every(search)
    if as_json:
        print(json.dumps([describe(b) for b in books], indent=2))
        return 0
    for book in books:
        if not show:
            print(f"{book.name:<20} {len(book.steps):>2} steps  {book.description}")
            continue
        print(f"{book.name}: {book.description}\n  from {book.source}")
        for number, step in enumerate(book.steps, 1):
            print(f"  {number:>2} {step.id:<16} {_what(step)}")
            for line in _details(step):
                print(f"       {line}")
        if book.seeds:
            print("  covers the seed steps:")
            for seed in book.seeds:
                print(f"    - {seed}")
    return 0


def _what(step: Any) -> str:
    if step.kind == "notify":
        return f"notify: {step.target}"
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in step.args.items())
    return f"{step.kind} {step.target} {args}".rstrip()


def _details(step: Any) -> list[str]:
    out = [step.description] if step.description else []
    if step.when:
        out.append(f"when {step.condition()}")
    if step.approve:
        out.append("asks for approval first")
    if step.retries:
        out.append(f"retries {step.retries} time(s), {step.retry_delay:g} s apart")
    if step.timeout:
        out.append(f"timeout {step.timeout:g} s")
    if step.mode == "check":
        out.append("always in check mode: a preview")
    if step.hosts != "runbook":
        out.append(f"on {step.hosts}")
    if step.kind != "notify" and step.on_failure != "stop":
        out.append(f"on failure: {step.on_failure}")
    if step.on_success != "next":
        ends = " (the runbook ends)" if step.on_success == "end" else ""
        out.append(f"on success: {step.on_success}{ends}")
    return out


def describe(book: Any) -> dict[str, Any]:
    steps = [{"id": s.id, "kind": s.kind, "target": s.target, "args": dict(s.args),
              "when": {k: list(v) for k, v in s.when.items()}, "on_failure": s.on_failure,
              "on_success": s.on_success, "mode": s.mode, "approve": s.approve, "retries": s.retries,
              "timeout": s.timeout, "hosts": s.hosts} for s in book.steps]  # fmt: skip
    variables = {n: {"help": v.help, "default": v.default, "required": v.required}
                 for n, v in book.variables.items()}  # fmt: skip
    return {"name": book.name, "description": book.description, "source": book.source,
            "seeds": list(book.seeds), "vars": variables, "steps": steps}


def runbook_task() -> Task[Any]:
    made: Task[Any] = task(name="runbook", help=HELP, klass=RemediationTask, positional=["name"],
                           iterable=["var"])(body)  # fmt: skip
    return made
