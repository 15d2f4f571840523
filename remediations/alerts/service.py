"""`inv alerts.serve`, `alerts.approve`, `alerts.reset`, `alerts.status`: the receiver as a process,
and what a person does with it. Everything given is checked before the port is taken: bad input is
one line and exit 2, nothing started."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from remediations.core.errors import UsageError

TOKEN_ENV = "REMEDIATIONS_ALERTS_TOKEN"  # noqa: S105 - a variable's name
STORE_ENV = "REMEDIATIONS_ALERTS_STORE"
SYSTEM_STORE = Path("/var/lib/remediations/alerts.sqlite")
USER_STORE = Path("~/.local/state/remediations/alerts.sqlite")
MIN_TOKEN = 16
PROJECT = Path(__file__).resolve().parents[2]  # the folder with tasks.py


def store_path(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    if os.access(SYSTEM_STORE.parent, os.W_OK) or (
        not SYSTEM_STORE.parent.exists() and os.access("/var/lib", os.W_OK)
    ):
        return SYSTEM_STORE
    return USER_STORE.expanduser()


def read_token(token_env: str | None, token_file: str | None, environ: Mapping[str, str] = os.environ) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"--token-file {token_file}: cannot read it ({getattr(exc, 'strerror', exc)})"
            ) from None
        where = f"--token-file {token_file}"
    else:
        name = token_env or TOKEN_ENV
        token = environ.get(name, "").strip()
        where = f"${name}"
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise UsageError(
            f"{where}: a bearer token of at least {MIN_TOKEN} characters without spaces is "
            f"required (Alertmanager sends it: http_config.authorization.credentials_file)"
        )
    return token


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: give ADDRESS:PORT, such as 127.0.0.1:9095")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_inv() -> list[str]:
    beside = Path(sys.executable).with_name("inv")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "invoke"]


def serve(
    rules_file: str | None,
    inventory: str | None,
    listen: str,
    token_env: str | None,
    token_file: str | None,
    store: str | None,
    workers: str | None,
    approval_ttl: str | None,
    inv: str | None,
) -> int:
    from remediations.alerts import journal, server, worker
    from remediations.alerts import rules as rules_mod
    from remediations.alerts.store import Store, StoreError
    from remediations.alerts.task import _read
    from remediations.core import inventory as inventory_mod
    from remediations.core.units import parse_seconds
    from remediations.core.validate import check_count
    from remediations.reporting.audit import Actor, AuditLog, audit_path
    from remediations.reporting.notify import NotifyConfig
    from remediations.reporting.redact import Redactor

    if not rules_file:
        raise UsageError('--rules FILE is required: which alert runs what (README "Alerts")')
    rules = rules_mod.parse(_read(rules_file, "rules"), rules_file)
    path = inventory_mod.inventory_path(inventory)
    inv_hosts = inventory_mod.load(path)
    token = read_token(token_env, token_file)
    address = listen_address(listen)
    slots = check_count(workers, "--workers", high=32) if workers is not None else 2
    ttl = parse_seconds(approval_ttl, "--approval-ttl", high=7 * 86400.0) if approval_ttl else 3600.0
    inv_argv = [inv] if inv else default_inv()
    variables = inventory_mod.run_wide_vars(inv_hosts)
    redactor = Redactor([token], secret_names=variables.get("secret_vars") or ())
    redactor.learn(variables)
    try:
        db = Store(store_path(store))
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    audit = AuditLog(audit_path(variables.get("audit_log")), Actor.current(), redactor)
    log = journal.Journal(
        audit,
        NotifyConfig.load(variables),
        redactor,
        journal.Metrics(),
        say=lambda text: print(text, flush=True),
    )
    env = {**os.environ, "REMEDIATIONS_INVENTORY": str(path)}
    env.pop(token_env or TOKEN_ENV, None)  # the tasks it runs never need the receiver's token
    settings = worker.Settings(inv_argv, str(PROJECT), db.path.parent / "alert-runs", slots, ttl, env=env)
    work = worker.Worker(db, rules, log, settings)
    receiver = server.Receiver(db, rules, inv_hosts, log, token, work.wake.set)
    try:
        http = server.make_server(receiver, *address)
    except OSError as exc:
        raise UsageError(f"--listen {listen}: cannot listen there ({exc.strerror or exc})") from None
    return _run(
        http,
        work,
        log,
        f"listening on http://{listen}/alertmanager: {len(rules)} rule(s), store "
        f"{db.path}, {slots} worker(s)",
    )


def _run(http: Any, work: Any, log: Any, banner: str) -> int:
    from remediations.alerts import server
    from remediations.core import startup

    startup.done()  # tasks.py paused the collector for the imports; no engine run will end the pause here
    stopping = threading.Event()
    got: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        got.append(signum)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server.serve_in_thread(http)
    runner = threading.Thread(target=work.loop, name="alerts-worker", daemon=True)
    runner.start()
    print(banner, flush=True)
    while not stopping.wait(1.0):
        if not runner.is_alive():
            print("the worker stopped: see the lines above", flush=True)
            break
    http.shutdown()
    work.stop()
    runner.join(10)
    if work.running:
        print(
            f"{len(work.running)} action(s) still running are left to finish: the next start reads their "
            f"results",
            flush=True,
        )
    log.close()
    return 0 if not got or got[0] == signal.SIGTERM else 130


def approve_main(action: str | None, store: str | None, by: str | None) -> str:
    from remediations.alerts.server import approve
    from remediations.alerts.store import Store, StoreError

    if not action or not action.isdigit():
        raise UsageError(f"give the action's number (`inv alerts.status` lists them), not {action!r}")
    try:
        db = Store(store_path(store), create=False)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    who = by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "someone"
    try:
        message = approve(db, int(action), who[:100])
    except UsageError as exc:
        raise UsageError(f"{exc} (store {db.path})") from None
    found = db.action(int(action))
    _audit("approved", message, found.fingerprint if found else "", found.rule if found else "",
           found.host if found else "", int(action))  # fmt: skip
    return message


def _audit(decision: str, message: str, fingerprint: str, rule: str, host: str, action: int | None) -> None:
    """A person's decision, in the same audit log as the receiver's (task alerts.serve)."""
    from remediations.alerts.intake import Event
    from remediations.alerts.journal import audit_record
    from remediations.reporting.audit import Actor, AuditLog, audit_path
    from remediations.reporting.redact import Redactor

    log = AuditLog(audit_path(), Actor.current(), Redactor())
    try:
        log.write_lines([audit_record(log, Event(decision, message, fingerprint, "", rule, host, action))])
    except OSError as exc:
        print(f"warning: audit log not written: {exc.strerror}", file=sys.stderr)


def reset_main(key: str | None, store: str | None) -> str:
    from remediations.alerts.store import Store, StoreError

    rule, sep, host = (key or "").partition("@")
    if not sep or not rule or not host:
        raise UsageError(
            f"give the circuit as RULE@HOST (`inv alerts.status` lists the open ones), not {key!r}"
        )
    try:
        db = Store(store_path(store), create=False)
        known = db.query("SELECT 1 FROM actions WHERE rule = ? AND host = ? LIMIT 1", (rule, host))
        closed = db.close_circuit(rule, host, f"reset by {os.environ.get('USER') or 'someone'}")
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if not closed and not known:
        opened = ", ".join(f"{c['rule']}@{c['host']}" for c in db.open_circuits()) or "none"
        raise UsageError(f"{key}: no action of rule {rule} on {host} in {db.path} (open circuits: {opened})")
    if not closed:
        return f"circuit {key} is not open: nothing to reset"
    message = f"circuit {key} closed: the next alert for it runs again"
    _audit("circuit-reset", message, "", rule, host, None)
    return message


def status_main(store: str | None, limit: int = 20) -> dict[str, Any]:
    from remediations.alerts.store import Store, StoreError

    try:
        db = Store(store_path(store), create=False)
        circuits = [dict(r) for r in db.open_circuits()]
        waiting = [
            a.to_dict() for a in db.actions("state IN ('queued', 'planning', 'awaiting-approval', 'running')")
        ]
        recent = [
            a.to_dict()
            for a in db.actions("id IN (SELECT id FROM actions ORDER BY id DESC LIMIT ?)", (limit,))
        ]
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    return {"store": str(db.path), "circuits_open": circuits, "waiting": waiting, "recent": recent}


def status_lines(data: dict[str, Any]) -> list[str]:
    from remediations.alerts.intake import command_text
    from remediations.alerts.payload import shown

    out = [f"store {data['store']}"]
    out += [
        f"circuit OPEN {c['rule']}@{c['host']} since {_at(c['since'])}: {shown(c['reason'], 600)}"
        for c in data["circuits_open"]
    ] or ["no circuit open"]
    for a in data["recent"]:
        command = command_text(a["command"]) if a["command"] else "-"
        who = f"{shown(a['alert_name'], 80)} {a['rule']}@{shown(a['host'], 80)}"
        out.append(f"{a['id']:>5} {a['state']:<17} {who} `{command}`: {shown(a['reason'], 600)}")  # fmt: skip
    return out


def _at(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
