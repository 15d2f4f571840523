"""The `alerts` tasks: `inv alerts.test --rules FILE PAYLOAD` (offline), for now."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task, task

from remediations.cli import COMMON_HELP, Flags, RemediationTask, _usage_error
from remediations.core.errors import UsageError

MAX_PAYLOAD = 4 * 1024 * 1024

TEST_HELP = {
    "rules": "the rules file (YAML: README \"Alerts\")",
    "payload": "a JSON file of Alertmanager's webhook body (version 4), or - for stdin",
    "inventory": COMMON_HELP["inventory"],
    "json": "print the decisions as JSON",
}


def test_body(c: Context, payload: str | None = None, rules: str | None = None, inventory: str | None = None,
              json: bool = False) -> None:  # fmt: skip
    """Which rule fires for each alert of a notification, on which host, with what action, and why
    the other rules do not. Offline: no host is touched, nothing runs.

    Exit code: 0 read (whatever fires), 2 bad input (the rules, the payload, the inventory).
    """
    flags = Flags(inventory=inventory, json=json)
    code = test_main(flags, payload, rules)
    if code:
        raise Exit(code=code)


def test_main(flags: Flags, payload: str | None, rules_file: str | None) -> int:
    from remediations.alerts import payload as payload_mod
    from remediations.alerts import rules as rules_mod
    from remediations.alerts import tester
    from remediations.core import inventory as inventory_mod
    from remediations.reporting.audit import Actor

    actor = Actor.current()
    try:
        if not rules_file:
            raise UsageError("--rules FILE is required: the rules to test")
        if not payload:
            raise UsageError("give the payload: a JSON file of Alertmanager's webhook body, or - for stdin")
        rules = rules_mod.parse(_read(rules_file, "rules"), rules_file)
        try:
            notification = payload_mod.parse(json.loads(_read(payload, "payload")))
        except ValueError as exc:  # JSON's and the payload's own
            raise UsageError(f"{payload}: {str(exc).splitlines()[0]}") from None
        path = inventory_mod.inventory_path(flags.inventory)
        inv = inventory_mod.load(path)
    except UsageError as exc:
        return _usage_error(exc, flags, "alerts.test", {"rules": rules_file, "payload": payload}, None, actor)
    entries = tester.report(notification, rules, inv)
    if flags.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(tester.lines(entries)))
    return 0


def _read(name: str, what: str) -> str:
    if name == "-":
        return sys.stdin.read(MAX_PAYLOAD + 1)[:MAX_PAYLOAD]
    path = Path(name)
    try:
        if path.stat().st_size > MAX_PAYLOAD:
            raise UsageError(f"{name}: larger than {MAX_PAYLOAD} bytes: not a {what} file")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}: cannot read the {what}: {getattr(exc, 'strerror', None) or exc}") from None


def alerts_collection() -> Collection:
    ns = Collection("alerts")
    made: Task[Any] = task(name="test", help=TEST_HELP, klass=RemediationTask,
                           positional=["payload"])(test_body)  # fmt: skip
    ns.add_task(made)
    return ns
