"""Runbooks run through the real engine on `ansible_connection: local` hosts (real subprocesses, real
flock), with toy remediations that own files under tmp_path: the path taken, check mode, approvals,
resume, retries, timeouts, escalation to a real HTTP server on loopback, and the audit records."""

from __future__ import annotations

import json
import os
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from remediations.core import inventory, registry
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.options import RunOptions
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.remote import must
from remediations.core.results import Status
from remediations.reporting.audit import Actor
from remediations.runbook import runner, spec
from tests import labkit


class RbEnsure(Remediation):
    """Creates target_dir/NAME; fails while target_dir/fail-NAME exists (fail-once-NAME: once)."""

    task: ClassVar[str] = "rb-ensure"
    params = args(Arg("name", "file name", required=True), Arg("sleep", "seconds to sleep first"))
    required_vars: ClassVar[tuple[str, ...]] = ("target_dir",)

    def __init__(self, name: str, sleep: str | None = None) -> None:
        self.name, self.sleep = name, sleep

    def gather(self, ctx: HostContext) -> bool:
        path = shlex.quote(os.path.join(str(ctx.var("target_dir")), self.name))
        with ctx.step("facts") as step:
            there = must(ctx.remote.run(f"test -e {path} && echo yes || echo no"), "facts").stdout.strip()
            step.done(Status.OK, there)
        return there == "yes"

    def decide(self, ctx: HostContext, there: bool) -> Plan:
        if there:
            return Plan.nothing(f"{self.name} is there")
        folder = str(ctx.var("target_dir"))

        def make(ctx: HostContext) -> str:
            q = shlex.quote
            if self.sleep:
                must(ctx.remote.run(f"sleep {q(self.sleep)}"), "sleep")
            fail, once = q(f"{folder}/fail-{self.name}"), q(f"{folder}/fail-once-{self.name}")
            done = ctx.remote.run(f"mkdir -p {q(folder)}; test -e {fail} && exit 1; "
                                  f"test -e {once} && {{ rm {once}; exit 1; }}; "
                                  f"touch {q(folder + '/' + self.name)}")  # fmt: skip
            if done.exit_code != 0:
                raise HostError(f"could not make {self.name}")
            return f"made {self.name}"

        return Plan.of(Change("make", f"make {self.name}", make), check_step="decide")


class RbExists(Remediation):
    task: ClassVar[str] = "rb-exists"
    params = args(Arg("name", "file name", required=True))
    changes: ClassVar[bool] = False
    changes_hosts: ClassVar[bool] = False
    required_vars: ClassVar[tuple[str, ...]] = ("target_dir",)

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, ctx: HostContext) -> None:
        path = shlex.quote(os.path.join(str(ctx.var("target_dir")), self.name))
        with ctx.step("exists") as step:
            if ctx.remote.run(f"test -e {path}").exit_code != 0:
                raise HostError(f"{self.name} is missing")
            step.done(Status.OK, f"{self.name} is there")


# Defining them registered them: keep them out of the registry except while a test here runs (a
# collection built meanwhile, e.g. by another test module's import of tasks.py, must not see them).
registry.unregister("rb-ensure")
registry.unregister("rb-exists")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(audit))
    for name in ("REMEDIATIONS_SLACK_WEBHOOK", "REMEDIATIONS_TELEGRAM_BOT_TOKEN", "REMEDIATIONS_NOTIFY_ON"):
        monkeypatch.delenv(name, raising=False)
    registry.register(RbEnsure)
    registry.register(RbExists)
    yield audit
    registry.unregister("rb-ensure")
    registry.unregister("rb-exists")


BOOK = """
name: toy
description: a file that should be there
steps:
  - id: probe
    check: rb-exists
    args: {name: a}
    on_success: end
    on_failure: continue
  - id: fix
    run: rb-ensure
    args: {name: a}
    on_failure: fallback
  - id: verify
    check: rb-exists
    args: {name: a}
    on_success: tell
  - id: fallback
    run: rb-ensure
    args: {name: b}
  - id: tell
    notify: "{host}: probe {probe.status}, fix {fix.status}: {fix.message}"
"""


def host_dir(tmp_path: Path, name: str = "h1") -> Path:
    path = tmp_path / "hosts" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_book(tmp_path: Path, text: str = BOOK, *, check: bool = False, yes: bool = False,
             from_step: str | None = None, hosts: str = "h1", actor: Actor | None = None,
             values: dict[str, str] | None = None, **all_vars: Any) -> list[runner.HostRun]:  # fmt: skip
    inv = inventory.load(labkit.write_local_inventory(tmp_path, {"h1": {}, "h2": {}}, **all_vars))
    book = spec.parse(text, "toy.yml")
    settings = runner.Settings(check=check, yes=yes, from_step=from_step, values=values or {},
                               options=RunOptions(lock_wait=0))  # the timeout test counts without it
    lines: list[str] = []
    results = runner.Runner(book, inv, settings, actor or Actor.current(), out=lines.append).run(
        inv.select(hosts)
    )
    return results


def path_of(result: runner.HostRun) -> list[tuple[str, str]]:
    return [(s.id, s.status) for s in result.steps]


def test_healthy_host_ends_after_the_probe(tmp_path: Path) -> None:
    (host_dir(tmp_path) / "a").touch()
    [result] = run_book(tmp_path)
    assert path_of(result) == [("probe", "ok")]
    assert (result.status, runner.exit_code([result])) == ("ok", 0)


def test_check_mode_shows_the_path_and_changes_nothing(tmp_path: Path) -> None:
    folder = host_dir(tmp_path)
    [result] = run_book(tmp_path, check=True)
    # verify fails now (nothing was made) but the path assumes the fix works: tell, not fallback
    assert path_of(result) == [("probe", "failed"), ("fix", "changed"), ("verify", "failed"), ("tell", "ok")]
    assert "the path assumes" in result.steps[2].note
    assert result.steps[3].message.startswith("would send: h1: probe failed, fix changed")
    assert sorted(os.listdir(folder)) == []
    assert not (tmp_path / "audit.jsonl").exists() or all(
        r["check"] for r in labkit.audit_lines(tmp_path / "audit.jsonl")
    )


def test_real_run_repairs_then_a_second_run_changes_nothing(tmp_path: Path, isolated: Path) -> None:
    folder = host_dir(tmp_path)
    actor = Actor.current()
    [first] = run_book(tmp_path, actor=actor)
    assert path_of(first) == [("probe", "failed"), ("fix", "changed"), ("verify", "ok"), ("tell", "ok")]
    assert first.status == "changed" and (folder / "a").exists() and not (folder / "b").exists()
    assert "not sent: no channel configured" in first.steps[3].note
    # (one process, one second: Actor.current() would give the same run id again)
    [second] = run_book(tmp_path, actor=Actor(actor.user, actor.controller, "second-run"))
    assert path_of(second) == [("probe", "ok")] and second.status == "ok"
    records = [r for r in labkit.audit_lines(isolated) if r["run_id"] == actor.run_id]
    steps = [r["step"] for r in records if r["task"] == "runbook:toy"]
    assert steps == ["probe", "fix", "verify", "tell"]
    # the engine's own records of the steps' tasks share the runbook's run id
    assert {r["task"] for r in records} >= {"rb-exists", "rb-ensure", "runbook:toy"}


def test_a_failed_fix_jumps_to_its_on_failure_step(tmp_path: Path) -> None:
    folder = host_dir(tmp_path)
    (folder / "fail-a").touch()
    [result] = run_book(tmp_path)
    expected = [("probe", "failed"), ("fix", "failed"), ("fallback", "changed"), ("tell", "ok")]
    assert path_of(result) == expected
    assert "on_failure: going to fallback" in result.steps[1].note
    assert (folder / "b").exists() and result.status == "changed"


def test_a_failure_with_stop_ends_the_runbook_failed_and_skips_later_hosts(tmp_path: Path) -> None:
    for name in ("h1", "h2"):
        host_dir(tmp_path, name)
    (tmp_path / "hosts" / "h1" / "fail-a").touch()
    text = BOOK.replace("    on_failure: fallback\n", "")
    first, second = run_book(tmp_path, text, hosts="h1,h2")
    assert path_of(first) == [("probe", "failed"), ("fix", "failed")]
    assert first.status == "failed" and "stopped at fix" in first.reason
    assert second.status == "skipped" and not second.steps
    assert not (tmp_path / "hosts" / "h2" / "a").exists()
    assert runner.exit_code([first, second]) == 1


def test_retries_rerun_a_failed_step(tmp_path: Path) -> None:
    folder = host_dir(tmp_path)
    (folder / "fail-once-a").touch()
    text = BOOK.replace("    on_failure: fallback\n", "    retries: 1\n    retry_delay: 0.1\n")
    [result] = run_book(tmp_path, text)
    assert result.steps[1].status == "changed" and "failed 1 time(s) before" in result.steps[1].note
    assert (folder / "a").exists() and not (folder / "fail-once-a").exists()


def test_a_step_timeout_caps_the_task(tmp_path: Path) -> None:
    host_dir(tmp_path)
    text = BOOK.replace("    args: {name: a}\n    on_failure: fallback\n",
                        "    args: {name: a, sleep: '5'}\n    timeout: 1\n")  # fmt: skip
    [result] = run_book(tmp_path, text)
    fix = result.steps[1]
    assert fix.status == "failed" and "deadline" in fix.message, fix
    assert result.status == "failed"


APPROVE = BOOK.replace("    run: rb-ensure\n    args: {name: a}\n",
                       "    run: rb-ensure\n    args: {name: a}\n    approve: true\n", 1)


def test_approval_pauses_without_a_terminal_and_from_resumes_the_same_run(
    tmp_path: Path, isolated: Path
) -> None:
    folder = host_dir(tmp_path)
    actor = Actor.current()
    [paused] = run_book(tmp_path, APPROVE, actor=actor)
    assert paused.paused_at == "fix" and runner.exit_code([paused]) == runner.PAUSED_EXIT_CODE
    assert not (folder / "a").exists()
    state = json.loads((isolated.parent / "runbooks" / "toy@h1.json").read_text())
    assert (state["next"], state["finished"], state["run_id"]) == ("fix", False, actor.run_id)
    again = Actor(actor.user, actor.controller, state["run_id"])
    [resumed] = run_book(tmp_path, APPROVE, yes=True, from_step="fix", actor=again)
    assert path_of(resumed) == [("fix", "changed"), ("verify", "ok"), ("tell", "ok")]
    assert resumed.steps[0].note.startswith("approved by --yes")
    # the notify text still sees the probe's result from the first part of the run
    assert resumed.steps[2].message == "h1: probe failed, fix changed: made a"
    ids = {r["run_id"] for r in labkit.audit_lines(isolated) if r["task"] == "runbook:toy"}
    assert ids == {actor.run_id}


def test_from_without_a_recorded_run_is_bad_input(tmp_path: Path) -> None:
    host_dir(tmp_path)
    with pytest.raises(UsageError, match="no recorded run of toy"):
        run_book(tmp_path, from_step="fix")


def test_vars_and_host_vars_reach_the_args(tmp_path: Path) -> None:
    folder = host_dir(tmp_path)
    text = """
name: toy
vars:
  file: {help: the file, required: true}
steps:
  - id: make
    run: rb-ensure
    args: {name: "${file}-${host.suffix}"}
"""
    with pytest.raises(UsageError, match="needs the host var"):
        run_book(tmp_path, text, values={"file": "x"})
    assert list(folder.iterdir()) == []
    [result] = run_book(tmp_path, text, values={"file": "x"}, suffix="z")
    assert result.status == "changed" and (folder / "x-z").exists()
    book = spec.parse(text, "toy.yml")
    with pytest.raises(UsageError, match="--var file=VALUE is required"):
        book.values({})
    with pytest.raises(UsageError, match="has no such var"):
        book.values({"file": "x", "other": "y"})


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_escalation_posts_to_the_channel_and_stops(tmp_path: Path) -> None:
    folder = host_dir(tmp_path)
    (folder / "fail-a").touch()
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        text = BOOK.replace("    on_failure: fallback\n", "    on_failure: escalate\n")
        [result] = run_book(tmp_path, text, notify_slack_webhook=url, notify_on="failures")
    finally:
        server.shutdown()
    assert path_of(result) == [("probe", "failed"), ("fix", "failed")] and result.status == "failed"
    texts = [m["text"] for m in Hook.received]
    assert any(t.startswith("ESCALATE runbook toy on h1: step fix (rb-ensure) failed") for t in texts), texts
    assert any("FAILED" in t and "runbook toy on h1" in t for t in texts), texts  # the outcome message
    assert result.steps[1].note == "sent"
