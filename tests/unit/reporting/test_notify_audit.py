"""Notifications against a real local HTTP server, and the audit log on disk.

The server is http.server in a thread on 127.0.0.1 (port 0): it records every request and answers
with the status the test asks for. Servers that fail are real too: a listening socket that never
answers, a port nothing listens on, and a TCP service that does not speak HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from remediations.core import inventory
from remediations.core.context import HostContext
from remediations.core.engine import Engine
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.options import MaxFail, RunOptions
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import HostResult, RunResult, Status, StepResult
from remediations.reporting import audit as audit_mod
from remediations.reporting import notify
from remediations.reporting.audit import Actor, AuditLog, audit_path
from remediations.reporting.notify import NotifyConfig, send, summary
from remediations.reporting.redact import MASK, Redactor
from tests.labkit import write_local_inventory as write_inventory

NOTIFY_ENV = (
    "REMEDIATIONS_SLACK_WEBHOOK",
    "REMEDIATIONS_TELEGRAM_BOT_TOKEN",
    "REMEDIATIONS_TELEGRAM_CHAT_ID",
    "REMEDIATIONS_TELEGRAM_API",
    "REMEDIATIONS_NOTIFY_ON",
)
TOKEN = "123456:AAE-bot-token-secret"  # noqa: S105 - a made-up token the tests look for
WEBHOOK_PATH = "/services/T000/B000/webhook-secret-XYZ"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(audit))
    for name in NOTIFY_ENV:
        monkeypatch.delenv(name, raising=False)
    return audit


# ---- a real HTTP server that records requests ------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    url: str
    status: int = 200
    requests: list[Request] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Recorder]:
    class Handler(BaseHTTPRequestHandler):
        recorder: ClassVar[Recorder]

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            self.recorder.requests.append(
                Request("POST", self.path, self.headers.get("Content-Type", ""), body)
            )
            self.send_response(self.recorder.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}' if self.recorder.status == 200 else b'{"ok": false}')

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads the requests, not a log."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.recorder = Recorder(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Handler.recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A socket that accepts connections (the kernel does) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()  # bound then closed: nothing listens there now
    return port


@pytest.fixture
def not_http_port() -> Iterator[int]:
    """A TCP service that greets like sshd and hangs up: a webhook URL pointing at the wrong port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                conn.recv(65536)  # the request has arrived: the answer is what the client chokes on
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        sock.close()
        thread.join(10)


def run_with(*statuses: Status, check: bool = False, task: str = "restart-api") -> RunResult:
    hosts = [
        HostResult(
            f"api{i}", [StepResult("facts", Status.OK, "read"), StepResult("act", s, f"{s.value} on api{i}")]
        )
        for i, s in enumerate(statuses, 1)
    ]
    return RunResult(task, check, hosts)


# ---- configuration ------------------------------------------------------------------------------


def test_config_from_inventory_vars() -> None:
    config = NotifyConfig.load(
        {
            "notify_slack_webhook": "https://hooks.example/x",
            "notify_telegram_bot_token": TOKEN,
            "notify_telegram_chat_id": -100123,
            "notify_on": "failures",
        },
        environ={},
    )
    assert config == NotifyConfig(
        slack_webhook="https://hooks.example/x",
        telegram_bot_token=TOKEN,
        telegram_chat_id="-100123",
        telegram_api="https://api.telegram.org",
        on="failures",
    )


def test_environment_wins_over_inventory_vars() -> None:
    config = NotifyConfig.load(
        {
            "notify_slack_webhook": "https://inventory/x",
            "notify_on": "always",
            "notify_telegram_chat_id": "1",
        },
        environ={
            "REMEDIATIONS_SLACK_WEBHOOK": "https://env/y",
            "REMEDIATIONS_NOTIFY_ON": "never",
            "REMEDIATIONS_TELEGRAM_API": "http://127.0.0.1:9",
        },
    )
    assert (config.slack_webhook, config.on, config.telegram_api) == (
        "https://env/y",
        "never",
        "http://127.0.0.1:9",
    )
    assert config.telegram_chat_id == "1"


def test_defaults() -> None:
    assert NotifyConfig.load({}, environ={}) == NotifyConfig()
    assert NotifyConfig().on == "changes"


@pytest.mark.parametrize(
    ("on", "statuses", "check", "wanted"),
    [
        ("changes", [Status.OK, Status.CHANGED], False, True),
        ("changes", [Status.OK, Status.FAILED], False, True),
        ("changes", [Status.OK, Status.OK], False, False),
        ("changes", [Status.CHANGED], True, False),  # check mode changed nothing
        ("changes", [Status.SKIPPED], False, False),
        ("failures", [Status.CHANGED], False, False),
        ("failures", [Status.FAILED], False, True),
        ("failures", [Status.FAILED], True, True),
        ("always", [Status.OK], True, True),
        ("always", [], False, True),
        ("never", [Status.FAILED], False, False),
    ],
)
def test_notify_on_modes(on: str, statuses: list[Status], check: bool, wanted: bool) -> None:
    assert NotifyConfig(on=on).wants(run_with(*statuses, check=check)) is wanted


def test_summary_text() -> None:
    run = run_with(Status.OK, Status.CHANGED, Status.FAILED)
    run.stopped_early = "1 host(s) failed; 2 remaining host(s) not started"
    assert summary(run, "alice@ctl task=restart-api run=r1").lines() == [
        "FAILED: restart-api on 1 of 3 hosts (1 ok, 1 changed)",
        "stopped early: 1 host(s) failed; 2 remaining host(s) not started",
        "- api3: failed: failed on api3",
        "- api2: changed: changed on api2",
        "by alice@ctl task=restart-api run=r1",
    ]


def test_summary_of_many_hosts_fits_one_message(server: Recorder) -> None:
    run = run_with(*[Status.CHANGED] * 400, check=True)
    assert (
        send(
            NotifyConfig(slack_webhook=server.url + WEBHOOK_PATH),
            summary(run, "bob@ctl", "", "r9"),
            Redactor(),
        )
        == []
    )
    lines = server.requests[0].json()["text"].splitlines()
    assert lines[0] == "WOULD CHANGE: restart-api (check) on 400 of 400 hosts"
    assert lines[-1] == "by bob@ctl"
    shown = len(lines) - 3
    assert 50 < shown < 400
    assert lines[-2] == f"… and {400 - shown} more (every host is in the audit log, run r9)"


# ---- sending to a real local server -------------------------------------------------------------


def test_slack_webhook_gets_one_json_post(server: Recorder) -> None:
    config = NotifyConfig(slack_webhook=server.url + WEBHOOK_PATH)
    assert send(config, "restart-api by alice: 1 changed", Redactor()) == []
    [request] = server.requests
    assert (request.method, request.path) == ("POST", WEBHOOK_PATH)
    assert request.content_type == "application/json"
    assert request.json() == {"text": "restart-api by alice: 1 changed"}


def test_telegram_send_message_through_api_override(server: Recorder) -> None:
    config = NotifyConfig(telegram_bot_token=TOKEN, telegram_chat_id="-100123", telegram_api=server.url + "/")
    assert send(config, "restart-api: 1 failed", Redactor()) == []
    [request] = server.requests
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.content_type == "application/json"
    assert request.json() == {
        "chat_id": "-100123",
        "text": "restart-api: 1 failed",
        "disable_web_page_preview": True,
    }


def test_both_channels_and_telegram_needs_a_chat(server: Recorder) -> None:
    both = NotifyConfig(
        slack_webhook=server.url + WEBHOOK_PATH,
        telegram_bot_token=TOKEN,
        telegram_chat_id="42",
        telegram_api=server.url,
    )
    assert send(both, "hello", Redactor()) == []
    assert sorted(r.path for r in server.requests) == sorted([WEBHOOK_PATH, f"/bot{TOKEN}/sendMessage"])
    server.requests.clear()
    assert send(NotifyConfig(telegram_bot_token=TOKEN, telegram_api=server.url), "x", Redactor()) == []
    assert server.requests == []


def test_secrets_never_in_the_payload(server: Recorder) -> None:
    redactor = Redactor()
    redactor.learn({"db_password": "s3cr3t-pw-123"})
    config = NotifyConfig(
        slack_webhook=server.url + WEBHOOK_PATH,
        telegram_bot_token=TOKEN,
        telegram_chat_id="42",
        telegram_api=server.url,
    )
    text = f"api1: failed: psql said s3cr3t-pw-123 is wrong; hook {config.slack_webhook}; bot {TOKEN}"
    assert send(config, text, redactor) == []
    assert len(server.requests) == 2
    for request in server.requests:
        body = request.body.decode()
        assert "s3cr3t-pw-123" not in body
        assert TOKEN not in body
        assert "webhook-secret-XYZ" not in body
        assert request.json()["text"] == f"api1: failed: psql said {MASK} is wrong; hook {MASK}; bot {MASK}"


@pytest.mark.parametrize("status", [500, 404, 429])
def test_server_error_is_a_warning(server: Recorder, status: int) -> None:
    server.status = status
    config = NotifyConfig(telegram_bot_token=TOKEN, telegram_chat_id="42", telegram_api=server.url)
    warnings = send(config, "x", Redactor())
    assert len(server.requests) == 1
    assert len(warnings) == 1
    assert warnings[0].startswith("notification to telegram failed: ")
    assert TOKEN not in warnings[0]


def test_server_that_does_not_answer_is_a_warning(silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "TIMEOUT", 0.5)
    warnings = send(
        NotifyConfig(slack_webhook=f"http://127.0.0.1:{silent_port}{WEBHOOK_PATH}"), "x", Redactor()
    )
    assert len(warnings) == 1
    assert warnings[0].startswith("notification to slack failed: ")
    assert "timed out" in warnings[0]
    assert "webhook-secret-XYZ" not in warnings[0]


def test_nothing_listening_is_a_warning(closed_port: int) -> None:
    warnings = send(NotifyConfig(slack_webhook=f"http://127.0.0.1:{closed_port}/hook"), "x", Redactor())
    assert len(warnings) == 1
    assert "refused" in warnings[0].lower()


def test_not_http_at_all_is_a_warning(not_http_port: int) -> None:
    warnings = send(NotifyConfig(slack_webhook=f"http://127.0.0.1:{not_http_port}/hook"), "x", Redactor())
    assert len(warnings) == 1
    assert warnings[0].startswith("notification to slack failed: ")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "hooks.example/x", "ftp://x/y"])
def test_url_that_is_not_http_is_a_warning(url: str) -> None:
    warnings = send(NotifyConfig(slack_webhook=url), "x", Redactor())
    assert warnings == ["notification to slack failed: URL must start with http:// or https://"]


# ---- through the engine: a run notifies, a failing notification never fails the run ----------


class Touch(Remediation):
    """Changes on the first run, then reports ok; fails where the host var `fail` is set."""

    task: ClassVar[str] = "touch"
    changes_hosts: ClassVar[bool] = False

    def __init__(self, api_token: str = "", env: tuple[str, ...] = (), service: str = "api") -> None:
        self.api_token = api_token
        self.env = list(env)
        self.service = service

    def gather(self, ctx: HostContext) -> tuple[Path, bool]:
        target = Path(str(ctx.var("target_dir"))) / "touched"
        with ctx.step("facts") as step:
            exists = ctx.remote.run(f"test -e '{target}'").ok
            step.done(Status.OK, "present" if exists else "absent")
        if ctx.var("fail"):
            with ctx.step("apply"):
                raise HostError("apply failed on purpose")
        return target, exists

    def decide(self, ctx: HostContext, facts: tuple[Path, bool]) -> Plan:
        target, exists = facts
        if exists:
            return Plan.nothing("already touched")

        def touch(ctx: HostContext) -> str:
            target.parent.mkdir(parents=True, exist_ok=True)
            ctx.remote.run(f"touch '{target}'")
            return "touched"

        return Plan.of(Change("apply", "touch", touch), check_step="decide")


def engine_run(
    path: Path, remediation: Remediation, options: RunOptions | None = None, actor: Actor | None = None
) -> tuple[Engine, RunResult]:
    inv = inventory.load(path)
    engine = Engine(inv, options or RunOptions(), actor=actor)
    return engine, engine.run(remediation, inv.select("all"))


def test_engine_notifies_on_changes_from_inventory_vars(tmp_path: Path, server: Recorder) -> None:
    path = write_inventory(tmp_path, {"h1": {}, "h2": {}}, notify_slack_webhook=server.url + WEBHOOK_PATH)
    engine, _ = engine_run(path, Touch(), actor=Actor("alice", "ctl", "r1"))
    assert engine.warnings == []
    [request] = server.requests
    assert request.json()["text"].splitlines() == [
        f"CHANGED {tmp_path.name}: touch on 2 of 2 hosts",  # hosts.yml: the folder names it
        "- h1: changed: touched",
        "- h2: changed: touched",
        "by alice@ctl task=touch run=r1",
    ]
    server.requests.clear()
    engine_run(path, Touch())  # nothing changes the second time: no message
    assert server.requests == []


def test_engine_notify_on_from_environment(
    tmp_path: Path, server: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_inventory(
        tmp_path, {"h1": {}}, notify_slack_webhook=server.url + WEBHOOK_PATH, notify_on="changes"
    )
    monkeypatch.setenv("REMEDIATIONS_NOTIFY_ON", "always")
    engine_run(path, Touch(), RunOptions(check=True))
    assert len(server.requests) == 1
    assert (
        server.requests[0].json()["text"].startswith(f"WOULD CHANGE {tmp_path.name}: touch (check) on 1 of 1")
    )
    monkeypatch.setenv("REMEDIATIONS_NOTIFY_ON", "never")
    engine_run(path, Touch())
    assert len(server.requests) == 1


class Announced(Touch):
    """Asks to be announced whatever notify_on says, when the run succeeded (as restore-test does)."""

    def notify_anyway(self, run: RunResult, hosts: Sequence[Host]) -> bool:
        return not run.check and run.exit_code == 0


def test_a_remediation_can_ask_to_be_announced_whatever_notify_on_says(
    tmp_path: Path, server: Recorder
) -> None:
    path = write_inventory(
        tmp_path, {"h1": {}}, notify_slack_webhook=server.url + WEBHOOK_PATH, notify_on="never"
    )
    engine_run(path, Touch())
    assert server.requests == []  # notify_on: never
    engine_run(path, Announced())
    [request] = server.requests
    text = request.json()["text"]
    assert text.startswith(f"OK {tmp_path.name}: touch on 1 of 1 hosts\nby "), text
    engine_run(path, Announced(), RunOptions(check=True))  # a check run is not announced
    engine_run(write_inventory(tmp_path, {"h1": {"fail": True}}, notify_slack_webhook=server.url
                               + WEBHOOK_PATH, notify_on="never"), Announced())  # fmt: skip
    assert len(server.requests) == 1  # nor a failed one


def test_failed_notification_is_a_warning_not_a_failure(tmp_path: Path, server: Recorder) -> None:
    server.status = 500
    path = write_inventory(
        tmp_path,
        {"h1": {}},
        notify_telegram_bot_token=TOKEN,
        notify_telegram_chat_id="42",
        notify_telegram_api=server.url,
    )
    engine, run = engine_run(path, Touch())
    assert run.exit_code == 0
    assert run.hosts[0].status == Status.CHANGED
    assert len(server.requests) == 1
    assert len(engine.warnings) == 1
    assert engine.warnings[0].startswith("notification to telegram failed")


def test_unanswered_notification_does_not_fail_the_run(
    tmp_path: Path, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "TIMEOUT", 0.5)
    path = write_inventory(tmp_path, {"h1": {}}, notify_slack_webhook=f"http://127.0.0.1:{silent_port}/x")
    engine, run = engine_run(path, Touch())
    assert run.exit_code == 0
    assert [w for w in engine.warnings if "timed out" in w]


# ---- the audit log ------------------------------------------------------------------------------


def test_audit_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "env.jsonl"))
    assert audit_path(str(tmp_path / "var.jsonl")) == tmp_path / "env.jsonl"
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", "")  # empty means unset
    assert audit_path(str(tmp_path / "var.jsonl")) == tmp_path / "var.jsonl"
    monkeypatch.delenv("REMEDIATIONS_AUDIT_LOG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert audit_path("~/audit/log.jsonl") == tmp_path / "home" / "audit" / "log.jsonl"


def test_audit_path_default_is_the_system_log_when_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMEDIATIONS_AUDIT_LOG")
    system = tmp_path / "var-log" / "remediations" / "audit.jsonl"
    system.parent.mkdir(parents=True)
    monkeypatch.setattr(audit_mod, "SYSTEM_AUDIT_LOG", system)
    assert audit_path(None) == system
    assert audit_path("") == system


def test_engine_audit_log_from_the_inventory_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMEDIATIONS_AUDIT_LOG")
    configured = tmp_path / "from-inventory" / "audit.jsonl"
    path = write_inventory(tmp_path, {"h1": {}}, audit_log=str(configured))
    engine, _ = engine_run(path, Touch())
    assert engine.audit.path == configured
    assert [r["status"] for r in read_audit(configured)] == ["started", "ok", "changed"]


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_host_and_step(tmp_path: Path, isolated: Path) -> None:
    path = write_inventory(tmp_path, {"h1": {}, "h2": {"fail": True}, "h3": {}})
    actor = Actor("alice", "ctl-1", "20260101T000000Z-42")
    remediation = Touch(api_token="tok-abcdef123456", env=("DB_PASSWORD=pw-9876543", "LOG=debug"))  # noqa: S106
    _, run = engine_run(path, remediation, RunOptions(serial=1, max_fail=MaxFail(count=0)), actor)
    lines = isolated.read_text().splitlines()
    every = [json.loads(line) for line in lines]
    # before its first change, each host that started has a "started" record (what a SIGKILL leaves)
    started = [(r["host"], r["step"]) for r in every if r["status"] == "started"]
    assert started == [("h1", "start"), ("h2", "start")]
    records = [r for r in every if r["status"] != "started"]
    expected_steps = [(h.host, s.step, s.status.value) for h in run.hosts for s in h.steps]
    assert [(r["host"], r["step"], r["status"]) for r in records] == expected_steps
    assert expected_steps == [
        ("h1", "facts", "ok"),
        ("h1", "apply", "changed"),
        ("h2", "facts", "ok"),
        ("h2", "apply", "failed"),
        ("h3", "start", "skipped"),
    ]
    durations = [round(s.duration, 3) for h in run.hosts for s in h.steps]
    assert [r["duration"] for r in records] == durations
    for record in records:
        assert record["user"] == "alice"
        assert record["controller"] == "ctl-1"
        assert record["run_id"] == "20260101T000000Z-42"
        assert record["task"] == "touch"
        assert record["check"] is False
        assert record["arguments"] == {
            "api_token": MASK,
            "env": [f"DB_PASSWORD={MASK}", "LOG=debug"],
            "service": "api",
            "check": False,
            "diff": False,
            "serial": 1,
            "parallel": 10,
        }
        assert set(record) == {
            "time",
            "run_id",
            "user",
            "controller",
            "task",
            "arguments",
            "check",
            "host",
            "step",
            "status",
            "message",
            "duration",
        }
    assert records[3]["message"] == "apply failed on purpose"
    assert records[4]["message"] == "not started: the rollout stopped after a failure"
    text = isolated.read_text()
    assert "tok-abcdef123456" not in text
    assert "pw-9876543" not in text


def test_usage_error_line(isolated: Path) -> None:
    log = AuditLog(isolated, Actor("bob", "ctl-2", "run-7"), Redactor())
    log.usage_error(
        "restart-api",
        {"host": "nosuchhost", "check": True, "service": None, "notify_telegram_bot_token": TOKEN},
        "inventories/hosts.yml: unknown host or group 'nosuchhost'",
    )
    [record] = read_audit(isolated)
    assert record["host"] is None
    assert (record["step"], record["status"], record["check"]) == ("arguments", "failed", True)
    assert record["message"] == "inventories/hosts.yml: unknown host or group 'nosuchhost'"
    assert record["arguments"]["notify_telegram_bot_token"] == MASK
    assert (record["user"], record["controller"], record["run_id"], record["task"]) == (
        "bob",
        "ctl-2",
        "run-7",
        "restart-api",
    )
    assert TOKEN not in isolated.read_text()


def test_audit_file_is_private(isolated: Path) -> None:
    AuditLog(isolated, Actor("a", "b", "c"), Redactor()).usage_error("t", {}, "m")
    assert isolated.stat().st_mode & 0o077 == 0


WRITER = r"""
import sys
from pathlib import Path
from remediations.reporting.audit import Actor, AuditLog
from remediations.reporting.redact import Redactor

path, writer, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = AuditLog(path, Actor("w" + writer, "ctl", "run-" + writer), Redactor())
filler = writer * 150_000  # each line far larger than a pipe buffer or a page
for i in range(count):
    big, small = {"writer": writer, "i": i, "filler": filler}, {"writer": writer, "i": -i, "filler": "x"}
    log.write_lines([big, small])
"""


def test_concurrent_writers_do_not_interleave_lines(isolated: Path) -> None:
    writers, count = 4, 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(isolated), str(w), str(count)], cwd=os.getcwd())
        for w in range(writers)
    ]
    assert [p.wait(60) for p in procs] == [0] * writers
    lines = isolated.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # a torn line would not parse
    assert len(records) == writers * count * 2
    for w in range(writers):
        mine = [r for r in records if r["writer"] == str(w)]
        assert [r["i"] for r in mine] == [
            n for i in range(count) for n in (i, -i)
        ]  # each batch kept together
        assert all(r["filler"] in (str(w) * 150_000, "x") for r in mine)
