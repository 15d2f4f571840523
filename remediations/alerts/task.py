"""The `alerts` tasks: `inv alerts.test --rules FILE PAYLOAD` (offline), `alerts.serve` (the receiver),
`alerts.approve ID`, `alerts.reset RULE@HOST`, `alerts.status`."""

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


STORE_HELP = (
    "the receiver's SQLite file (default: $REMEDIATIONS_ALERTS_STORE, else "
    "/var/lib/remediations/alerts.sqlite when writable, else ~/.local/state/remediations/alerts.sqlite)"
)
SERVE_HELP = {
    "rules": TEST_HELP["rules"],
    "inventory": COMMON_HELP["inventory"],
    "listen": "ADDRESS:PORT to listen on (default 127.0.0.1:9095)",
    "token-env": "the variable holding the bearer token Alertmanager sends (default "
    "REMEDIATIONS_ALERTS_TOKEN)",
    "token-file": "read the bearer token from this file instead",
    "store": STORE_HELP,
    "workers": "actions run at once, at most (default 2)",
    "approval-ttl": "how long an approval may wait before it expires (default 1h)",
    "inv": "the inv that runs the actions (default: the one beside this Python)",
}


def serve_body(
    c: Context,
    rules: str | None = None,
    inventory: str | None = None,
    listen: str = "127.0.0.1:9095",
    token_env: str | None = None,
    token_file: str | None = None,
    store: str | None = None,
    workers: str | None = None,
    approval_ttl: str | None = None,
    inv: str | None = None,
) -> None:
    """The Alertmanager receiver: POST /alertmanager stores each alert and runs what the rules say from
    a bounded worker (deduped, cooled down, behind a circuit breaker; approve and dry-run modes). Runs
    until SIGTERM or Ctrl-C; actions still running then finish on their own and are read at the next
    start.

    Exit code: 0 stopped by SIGTERM, 130 by Ctrl-C, 2 bad input (nothing started).
    """
    from remediations.alerts import service

    try:
        given = (token_env, token_file, store, workers, approval_ttl, inv)
        code = service.serve(rules, inventory, listen, *given)
    except UsageError as exc:
        code = _refused(exc, "alerts.serve", {"rules": rules, "listen": listen}, Flags(inventory=inventory))
    if code:
        raise Exit(code=code)


def approve_body(
    c: Context, action: str | None = None, store: str | None = None, by: str | None = None
) -> None:
    """Approve an action waiting in approve mode (its number is in the channel's message and in
    `inv alerts.status`): the receiver runs it next.

    Exit code: 0 approved, 2 not waiting, expired or unknown.
    """
    from remediations.alerts import service

    _say(lambda: service.approve_main(action, store, by), "alerts.approve", {"action": action})


def reset_body(c: Context, key: str | None = None, store: str | None = None) -> None:
    """Close an open circuit (RULE@HOST): automatic runs for it start again. Exit code: 0, 2 bad input."""
    from remediations.alerts import service

    _say(lambda: service.reset_main(key, store), "alerts.reset", {"key": key})


def status_body(c: Context, store: str | None = None, json: bool = False) -> None:
    """Open circuits, actions waiting or running, and the latest actions with their reasons."""
    from remediations.alerts import service

    try:
        data = service.status_main(store)
    except UsageError as exc:
        raise Exit(code=_refused(exc, "alerts.status", {}, Flags(json=json))) from None
    try:
        if json:
            service.print_json(data)
        else:
            print("\n".join(service.status_lines(data)), flush=True)
    except BrokenPipeError:  # `inv alerts.status | head`
        from remediations.invoke_errors import reader_gone

        reader_gone()


def _refused(exc: UsageError, name: str, arguments: dict[str, Any], flags: Flags) -> int:
    from remediations.reporting.audit import Actor

    return _usage_error(exc, flags, name, arguments, None, Actor.current())


def _say(work: Any, name: str, arguments: dict[str, Any]) -> None:
    try:
        print(work())
    except UsageError as exc:
        raise Exit(code=_refused(exc, name, arguments, Flags())) from None


def alerts_collection() -> Collection:
    ns = Collection("alerts")
    approve_help = {"action": "the action's number", "store": STORE_HELP,
                    "by": "who approves (default: $SUDO_USER or $USER)"}  # fmt: skip
    made: list[Task[Any]] = [
        task(name="test", help=TEST_HELP, klass=RemediationTask, positional=["payload"])(test_body),
        task(name="serve", help=SERVE_HELP, klass=RemediationTask, positional=[])(serve_body),
        task(name="approve", help=approve_help, klass=RemediationTask, positional=["action"])(approve_body),
        task(name="reset", help={"key": "the circuit, RULE@HOST", "store": STORE_HELP}, klass=RemediationTask,
             positional=["key"])(reset_body),
        task(name="status", help={"store": STORE_HELP, "json": "print it as JSON"}, klass=RemediationTask,
             positional=[])(status_body),
    ]
    for made_task in made:
        ns.add_task(made_task)
    return ns
