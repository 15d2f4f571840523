"""The plans of wal-cleanup and restore-test on a scripted host: what check mode shows, what a real
run does, and a drill stopped by SIGINT/SIGTERM (core.interrupt) that still drops its scratch
database and writes its result."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remediations.actions.s3client import S3Object
from remediations.core import interrupt
from remediations.core.context import HostContext
from remediations.core.errors import CommandResult
from remediations.core.inventory import Host
from remediations.core.options import RunOptions
from remediations.core.remote import Guard
from remediations.core.results import HostResult, Status
from remediations.facts import wal as walfacts
from remediations.postgres import restore_drill
from remediations.postgres import wal_cleanup as wal
from remediations.reporting.redact import Redactor

Answer = Callable[[str, str], tuple[int, str]]  # (command, stdin) -> (exit code, stdout)


class ScriptedRemote:
    """A host whose commands are answered by `answer`; it refuses commands as a real one does
    (interrupt, deadline) and keeps what it was sent."""

    name = "r1"

    def __init__(self, answer: Answer) -> None:
        self.guard = Guard()
        self.answer = answer
        self.sent: list[tuple[str, str]] = []

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        self.guard.admit(timeout)
        text = (stdin or b"").decode()
        self.sent.append((command, text))
        code, out = self.answer(command, text)
        return CommandResult(command, code, out, "" if code == 0 else "failed")


@pytest.fixture(autouse=True)
def no_stop_request() -> Iterator[None]:
    interrupt.clear()
    yield
    interrupt.clear()


def context(host: Host, remote: ScriptedRemote, check: bool = False) -> HostContext:
    options = RunOptions(check=check, diff=True)
    result = HostResult(host.name)
    return HostContext(host, remote, options, Redactor(), result, {}, "test", read_only=check)  # type: ignore[arg-type]


def steps(ctx: HostContext) -> dict[str, tuple[Status, str]]:
    return {s.step: (s.status, s.message) for s in ctx.result.steps}


# ------------------------------------------------------------------------------ restore-test


class FakeStore:
    secrets: tuple[str, ...] = ()

    def __init__(self, host_vars: Any, label: str = "s3") -> None:
        pass

    def list(self, bucket: str, prefix: str) -> list[S3Object]:
        return [S3Object("dumps/a.dump", 2048, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))]

    def stream(self, bucket: str, key: str, got: Any) -> Iterator[bytes]:
        got.expected = got.received = 5
        yield b"PGDMP"


def drill_host(tmp_path: Path) -> Host:
    return Host("r1", {"backup_s3_bucket": "b", "restore_check_tables": {"orders": 1},
                       "restore_test_json": str(tmp_path / "r.json"),
                       "restore_test_metrics": str(tmp_path / "r.prom")}, (), "inv.yml")  # fmt: skip


def drill_answer(leftover: bool = False, on_restore: Callable[[], None] = lambda: None) -> Answer:
    def answer(command: str, stdin: str) -> tuple[int, str]:
        if "server_version" in stdin:
            scratch = {"comment": restore_drill.SCRATCH_COMMENT} if leftover else None
            return 0, json.dumps({"version": "16.1", "scratch": scratch})
        if "pg_restore" in command:
            assert stdin == "PGDMP", "the dump arrives on pg_restore's stdin"
            on_restore()
            return 0, ""
        if "to_regclass" in stdin and "count(*)" in stdin:  # the checks: one query
            return 0, json.dumps({"t:orders": 5})
        return 0, ""

    return answer


@pytest.mark.parametrize("leftover", [False, True])
def test_restore_check_mode_shows_the_drill_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leftover: bool
) -> None:
    monkeypatch.setattr(restore_drill, "S3Store", FakeStore)
    remote = ScriptedRemote(drill_answer(leftover))
    ctx = context(drill_host(tmp_path), remote, check=True)
    restore_drill.RestoreTest().run(ctx)
    got = steps(ctx)
    assert list(got) == ["facts", "select", "decide"]
    status, message = got["decide"]
    assert status == Status.CHANGED
    assert message == (
        "would restore s3://b/dumps/a.dump into scratch database restore_test_scratch and check 1 table(s)"
        + (", drop the leftover restore_test_scratch first" if leftover else "")
    )
    assert len(remote.sent) == 1, "check mode sent only the facts query"
    assert not (tmp_path / "r.json").exists()


def test_restore_drill_passes_drops_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_drill, "S3Store", FakeStore)
    remote = ScriptedRemote(drill_answer(leftover=True))
    ctx = context(drill_host(tmp_path), remote)
    restore_drill.RestoreTest().run(ctx)
    got = steps(ctx)
    assert list(got) == ["facts", "select", "cleanup", "restore", "checks", "drop", "report"]
    assert got["checks"][0] == Status.OK and got["drop"][0] == Status.OK
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is True and report["rows"] == {"orders": 5}
    assert set(report["phases"]) == {"restore", "checks"}


@pytest.mark.parametrize("signal", ["SIGINT", "SIGTERM"])
def test_a_stopped_drill_drops_its_scratch_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal: str
) -> None:
    monkeypatch.setattr(restore_drill, "S3Store", FakeStore)
    remote = ScriptedRemote(drill_answer(on_restore=lambda: interrupt.request(signal)))
    ctx = context(drill_host(tmp_path), remote)
    with pytest.raises(Exception, match=signal):
        restore_drill.RestoreTest().run(ctx)
    got = steps(ctx)
    assert got["checks"][0] == Status.FAILED
    assert got["checks"][1].startswith(f"interrupted by {signal} after restore")
    assert got["drop"] == (Status.OK, "dropped scratch database restore_test_scratch")
    assert any("drop database if exists" in stdin for _, stdin in remote.sent)
    assert interrupt.requested() == signal, "the stop request outlives the cleanup"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is False and f"interrupted by {signal}" in report["error"]


def test_a_drill_whose_server_does_not_answer_still_writes_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore_drill, "S3Store", FakeStore)
    remote = ScriptedRemote(lambda command, stdin: (2, "psql: connection refused"))
    ctx = context(drill_host(tmp_path), remote)
    restore_drill.RestoreTest().run(ctx)
    assert ctx.result.status == Status.FAILED
    assert "does not answer" in ctx.result.message
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is False and "does not answer" in report["error"]


# ------------------------------------------------------------------------------ wal-cleanup


def seg(n: int) -> str:
    return f"00000001{0:08X}{n:08X}"


def wal_host() -> Host:
    return Host("db1", {"wal_archive_dir": "/srv/wal", "wal_s3_bucket": "b"}, (), "inv.yml")


def wal_facts(
    files: list[int],
    backups: list[int],
    copies: dict[str, walfacts.RemoteCopy] | None,
    local: dict[str, str] | None,
    slots: list[walfacts.Slot] = (),
) -> wal.WalFacts:  # type: ignore[assignment]
    host = wal_host()
    archive = walfacts.ArchiveFacts(
        files=[walfacts.ArchiveFile(seg(n), 16) for n in files],
        backups=[walfacts.BaseBackup(f"{seg(n)}.00000028.backup", seg(n)) for n in backups],
        pg=walfacts.PgFacts(slots=list(slots)),
    )
    return wal.WalFacts(wal.settings(host), wal.PgTarget.from_host(host), archive, copies, local)  # fmt: skip


MD5 = "0" * 32
SAME = {seg(n): walfacts.RemoteCopy(16, MD5, "ETag") for n in range(1, 9)}
HERE = {seg(n): MD5 for n in range(1, 9)}
IDLE = walfacts.Slot("idle", "physical", False, "reserved", 1024.0)


@pytest.mark.parametrize(
    ("facts", "slot", "changes", "recorded"),
    [
        # nothing older than the cut point: nothing to do, ok
        (wal_facts([4, 5], [4, 5], None, None), None, [], {}),
        # three deletable and proven: one change, recorded as "decide" in check mode
        (wal_facts([1, 2, 3, 4, 5], [4, 5], SAME, HERE), None, ["decide"], {}),
        # the second is missing from S3: the first is deleted, the host fails on s3-check
        (wal_facts([1, 2, 3, 4, 5], [4, 5], {seg(1): SAME[seg(1)]}, HERE), None, ["decide"],
         {"s3-check": Status.FAILED}),
        # a slot to drop and nothing to delete: the slot change, decide recorded ok
        (wal_facts([4, 5], [4, 5], None, None, [IDLE]), "idle", ["drop-slot"], {"decide": Status.OK}),
        # a slot to drop, the first segment unproven: the slot change, decide recorded failed
        (wal_facts([1, 4, 5], [4, 5], {}, {}, [IDLE]), "idle", ["drop-slot"], {"decide": Status.FAILED}),
        # no such slot: recorded ok, nothing to drop
        (wal_facts([4, 5], [4, 5], None, None), "gone", [], {"drop-slot": Status.OK}),
    ],
)  # fmt: skip
def test_wal_cleanup_plan(
    facts: wal.WalFacts, slot: str | None, changes: list[str], recorded: dict[str, Status]
) -> None:
    ctx = context(wal_host(), ScriptedRemote(lambda c, s: (0, "")), check=True)
    plan = wal.WalCleanup(slot).decide(ctx, facts)
    assert [c.step for c in plan.changes] == changes
    assert {s.step: s.status for s in ctx.result.steps} == recorded
    if not changes:
        assert plan.reason.startswith("nothing to delete: ")


def test_wal_cleanup_nothing_proven_fails_the_host() -> None:
    ctx = context(wal_host(), ScriptedRemote(lambda c, s: (0, "")), check=True)
    with pytest.raises(Exception):  # noqa: B017 - the engine's "already recorded" marker
        wal.WalCleanup().decide(ctx, wal_facts([1, 4, 5], [4, 5], {}, {}))
    [step] = ctx.result.steps
    assert step.step == "decide" and step.status == Status.FAILED
    assert step.message.startswith(f"nothing to delete: {seg(1)} is missing from s3://b/wal/")


def test_wal_cleanup_check_mode_says_what_it_would_delete() -> None:
    ctx = context(wal_host(), ScriptedRemote(lambda c, s: (0, "")), check=True)
    plan = wal.WalCleanup().decide(ctx, wal_facts([1, 2, 3, 4, 5], [4, 5], SAME, HERE))
    assert not ctx.carry_out(plan)
    [step] = ctx.result.steps
    assert step.step == "decide" and step.status == Status.CHANGED
    assert step.message.startswith(
        f"would delete 3 segment(s), 48 B ({seg(1)} … {seg(3)}); cut point {seg(4)}"
    )
    assert step.data["count"] == 3 and step.data["bytes"] == 48
    assert f"- {seg(2)} (16 bytes)" in step.diff
