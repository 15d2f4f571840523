"""The receiver end to end on loopback: a real HTTP server, a real SQLite store, real processes.

What the worker starts is a small stand-in for `inv` (tests/unit/alerts/fake_inv.py): it records each
call and answers a --json document with the exit code a test asks for, so that these tests are about
the receiver's decisions (dedupe, cooldown, circuit, approvals, restarts) and never touch a host. The
real `inv restart-api` behind a real Alertmanager runs in the lab tests (tests/lab/alerts)."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from remediations.alerts import journal, rules, server, worker
from remediations.alerts.store import Store
from remediations.core import inventory
from remediations.reporting.audit import Actor, AuditLog
from remediations.reporting.notify import NotifyConfig
from remediations.reporting.redact import Redactor

DATA = Path(__file__).parent / "am_data"
ROOT = Path(__file__).resolve().parents[3]
FAKE_INV = Path(__file__).with_name("fake_inv.py")
FIRING = json.loads((DATA / "firing.json").read_text())
TOKEN = "receiver-test-token-0123456789"  # noqa: S105 - a test value
BAD = "not-the-token-0123456789"
RULES = """\
rules:
  - name: api-down
    matchers: ["alertname=APIDown"]
    run: restart-api
    args: {{service: api}}
    cooldown: {cooldown}
    circuit: {{attempts: {attempts}, window: 1h, refire: 5m}}
    mode: {mode}
"""
INVENTORY = "all:\n  hosts:\n    api1: {ansible_host: 198.18.0.11}\n    api2: {ansible_host: 198.18.0.12}\n"


@dataclass
class Rig:
    store: Store
    work: worker.Worker
    url: str
    calls: Path
    behaviour: Path
    audit: Path

    def post(self, body: Any, token: str = TOKEN, path: str = "/alertmanager") -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return str(answer.read().decode())

    def ran(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [json.loads(line)["argv"] for line in self.calls.read_text().splitlines()]

    def settle(self, until: Callable[[], bool] | None = None, timeout: float = 20.0) -> None:
        """Tick the worker until nothing runs or waits to be planned (or `until` holds)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.work.tick()
            busy = self.work.running or self.store.actions("state IN ('queued', 'planning')")
            if (until() if until is not None else not busy):
                return
            time.sleep(0.05)
        raise AssertionError(f"the worker did not settle: {[a.to_dict() for a in self.store.actions()]}")

    def states(self) -> list[str]:
        return [a.state for a in self.store.actions()]

    def behave(self, **given: Any) -> None:
        self.behaviour.write_text(json.dumps(given))


@contextlib.contextmanager
def make_rig(tmp_path: Path, mode: str = "auto", cooldown: str = "0s", attempts: int = 3,
             notify: NotifyConfig | None = None) -> Iterator[Rig]:  # fmt: skip
    text = RULES.format(mode=mode, cooldown=cooldown, attempts=attempts)
    parsed = rules.parse(text, "rules.yml")
    (tmp_path / "inv.yml").write_text(INVENTORY)
    inv = inventory.load(tmp_path / "inv.yml")
    store = Store(tmp_path / "store.sqlite")
    audit_file = tmp_path / "audit.jsonl"
    redactor = Redactor([TOKEN])
    audit = AuditLog(audit_file, Actor("t", "c", "r"), redactor)
    log = journal.Journal(audit, notify or NotifyConfig(), redactor, journal.Metrics(), say=lambda _: None)
    calls, behaviour = tmp_path / "calls.jsonl", tmp_path / "behaviour.json"
    env = {"FAKE_INV_CALLS": str(calls), "FAKE_INV_BEHAVIOUR": str(behaviour), "PATH": "/usr/bin:/bin"}
    settings = worker.Settings([sys.executable, str(FAKE_INV)], str(tmp_path), tmp_path / "runs", 2, 3600.0,
                               env=env)  # fmt: skip
    work = worker.Worker(store, parsed, log, settings)
    receiver = server.Receiver(store, parsed, inv, log, TOKEN, work.wake.set)
    http = server.make_server(receiver, "127.0.0.1", 0)
    server.serve_in_thread(http)
    try:
        yield Rig(store, work, f"http://127.0.0.1:{http.server_address[1]}", calls, behaviour, audit_file)
    finally:
        http.shutdown()
        http.server_close()
        log.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as made:
        yield made


def firing(starts: str = "2026-12-01T22:28:00.943400725Z", instance: str = "api1:9100",
           status: str = "firing", fingerprint: str = "7d310535fdf0e95a") -> dict[str, Any]:  # fmt: skip
    body = copy.deepcopy(FIRING)
    alert = body["alerts"][0]
    alert.update(startsAt=starts, status=status, fingerprint=fingerprint)
    alert["labels"]["instance"] = instance
    body["status"] = status
    return body


def test_a_bad_token_is_401_and_nothing_is_stored(rig: Rig) -> None:
    assert rig.post(firing(), token=BAD)[0] == 401
    assert rig.post(firing(), token="")[0] == 401
    assert rig.store.actions() == [] and rig.store.query("SELECT * FROM alerts") == []


def test_a_malformed_payload_is_400_with_the_field_and_nothing_is_stored(rig: Rig) -> None:
    code, said = rig.post(b"{not json")
    assert code == 400 and said["error"] == "the body is not JSON"
    bad = firing()
    bad["alerts"][0]["startsAt"] = "yesterday"
    code, said = rig.post(bad)
    assert code == 400 and "alerts[0].startsAt" in said["error"]
    assert rig.post({"version": "3", "alerts": []})[0] == 400
    assert rig.store.actions() == []


def test_resends_and_a_peers_duplicate_run_the_fix_once(rig: Rig) -> None:
    rig.behave(code=0)
    for _ in range(3):  # the first delivery, a repeat_interval re-send, the HA peer's copy
        assert rig.post(firing())[0] == 200
    peer = firing()
    peer["groupKey"] = '{}/{}:{alertname="APIDown"}'  # another peer, another group: the same alert
    assert rig.post(peer)[0] == 200
    rig.settle()
    assert rig.ran() == [["restart-api", "--host", "api1", "--service", "api", "--json"]]
    assert rig.states() == ["succeeded"]
    posts = rig.store.query("SELECT posts FROM alerts")
    assert [r["posts"] for r in posts] == [4]
    records = [json.loads(line) for line in rig.audit.read_text().splitlines()]
    assert {r["status"] for r in records} >= {"received", "deduped", "queued", "running", "succeeded"}
    assert all(r["fingerprint"] == "7d310535fdf0e95a" for r in records if r["status"] != "malformed")


def test_a_resolved_alert_cancels_what_had_not_run_yet(rig: Rig) -> None:
    rig.post(firing())
    resolved = firing(status="resolved", starts="2026-12-01T22:28:01Z")  # another startsAt, as seen
    assert rig.post(resolved)[0] == 200
    rig.settle()
    assert rig.ran() == [] and rig.states() == ["cancelled"]
    assert "resolved before its turn" in rig.store.actions()[0].reason


def test_an_unknown_host_is_refused_once(rig: Rig) -> None:
    for _ in range(2):
        assert rig.post(firing(instance="db9.example:9100"))[0] == 200
    rig.settle()
    actions = rig.store.actions()
    assert [a.state for a in actions] == ["refused"] and rig.ran() == []
    assert "'db9.example:9100' is no inventory host" in actions[0].reason


def test_a_failed_fix_opens_the_circuit_and_reset_closes_it(rig: Rig) -> None:
    rig.behave(code=1)
    rig.post(firing())
    rig.settle()
    assert rig.states() == ["failed"] and rig.store.circuit("api-down", "api1") is not None
    rig.behave(code=0)
    rig.post(firing(starts="2026-12-01T23:00:00Z"))
    rig.settle()
    assert rig.states() == ["failed", "circuit-open"] and len(rig.ran()) == 1
    assert rig.store.close_circuit("api-down", "api1", "reset by a test")
    rig.post(firing(starts="2026-12-01T23:30:00Z"))
    rig.settle()
    assert rig.states() == ["failed", "circuit-open", "succeeded"] and len(rig.ran()) == 2


def test_a_fix_that_does_not_hold_opens_the_circuit_on_the_refire(rig: Rig) -> None:
    rig.behave(code=0)
    rig.post(firing())
    rig.settle()
    rig.post(firing(starts="2026-12-01T22:40:00Z"))  # the same alert again, soon after the "fix"
    rig.settle()
    assert rig.states() == ["succeeded", "circuit-open"] and len(rig.ran()) == 1
    assert "does not hold" in rig.store.circuit("api-down", "api1")["reason"]  # type: ignore[index]


def test_attempts_in_the_window_open_the_circuit(tmp_path: Path) -> None:
    with make_rig(tmp_path, attempts=2) as rig:
        rig.behave(code=0)
        for n, host in enumerate(["api1:9100", "api1:9100", "api1:9100"]):  # distinct alerts (fingerprints)
            rig.post(firing(instance=host, fingerprint=f"00000000000000a{n}"))
            rig.settle()
        assert rig.states() == ["succeeded", "succeeded", "circuit-open"] and len(rig.ran()) == 2


def test_the_cooldown_skips_a_second_action_on_the_host(tmp_path: Path) -> None:
    with make_rig(tmp_path, cooldown="10m") as rig:
        rig.behave(code=0)
        rig.post(firing(fingerprint="00000000000000b1"))
        rig.settle()
        rig.post(firing(fingerprint="00000000000000b2"))
        rig.post(firing(fingerprint="00000000000000b3", instance="api2:9100"))  # another host: its own key
        rig.settle()
        assert rig.states() == ["succeeded", "cooled-down", "succeeded"]
        assert [argv[2] for argv in rig.ran()] == ["api1", "api2"]


def test_one_action_per_rule_and_host_at_a_time(rig: Rig) -> None:
    rig.behave(code=0, sleep=1.0)
    rig.post(firing(fingerprint="00000000000000c1"))
    rig.post(firing(fingerprint="00000000000000c2"))
    rig.work.tick()
    rig.work.tick()
    assert len(rig.work.running) == 1 and rig.states() == ["running", "queued"]
    rig.settle()
    assert rig.states() == ["succeeded", "succeeded"]  # cooldown 0: the second one ran after the first
    calls = [json.loads(line) for line in rig.calls.read_text().splitlines()]
    assert calls[1]["start"] >= calls[0]["end"]


def test_approve_mode_posts_the_plan_and_runs_only_after_approval(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="approve") as rig:
        rig.behave(code=0)
        rig.post(firing())
        rig.settle()
        action = rig.store.actions()[0]
        assert action.state == "awaiting-approval" and action.plan and "api1 changed" in action.plan
        assert rig.ran() == [["restart-api", "--host", "api1", "--service", "api", "--check", "--json"]]
        assert rig.post({}, token=BAD, path=f"/approve/{action.id}")[0] == 401
        code, said = rig.post({"by": "alice"}, path=f"/approve/{action.id}")
        assert code == 200 and "approved by alice" in said["message"]
        rig.settle()
        assert rig.states() == ["succeeded"]
        assert rig.ran()[-1][-1] == "--json" and "--check" not in rig.ran()[-1]
        assert rig.post({}, path=f"/approve/{action.id}")[0] == 409  # nothing waits any more


def test_an_approval_expires_and_a_resolved_alert_cancels_one(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="approve") as rig:
        rig.behave(code=0)
        rig.post(firing(fingerprint="00000000000000d1"))
        rig.post(firing(fingerprint="00000000000000d2", instance="api2:9100"))
        rig.settle()
        assert rig.states() == ["awaiting-approval", "awaiting-approval"]
        first = rig.store.actions()[0]
        rig.work.tick(now=time.time() + 7200)  # past the hour
        assert rig.store.action(first.id).state == "expired"  # type: ignore[union-attr]
        assert rig.post({}, path=f"/approve/{first.id}")[0] == 409


def test_dry_run_posts_the_plan_and_never_runs(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="dry-run") as rig:
        rig.behave(code=0)
        rig.post(firing())
        rig.settle()
        assert rig.states() == ["planned"] and all("--check" in argv for argv in rig.ran())


def test_a_store_that_cannot_write_answers_503(rig: Rig) -> None:
    rig.store.close()
    code, said = rig.post(firing())
    assert code == 503 and "send it again" in said["error"]


def test_a_restarted_receiver_reads_the_result_of_a_run_it_did_not_see_end(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        rig.behave(code=0, sleep=1.5)
        rig.post(firing())
        rig.work.tick()
        assert rig.states() == ["running"]
        rig.work.running.clear()  # the receiver is gone (SIGKILL): its process goes on in its session
        again = worker.Worker(rig.store, list(rig.work.rules.values()), rig.work.journal, rig.work.settings)
        again.recover()
        assert list(again.running) == [rig.store.actions()[0].id]
        rig.work = again
        rig.settle()
        assert rig.states() == ["succeeded"] and len(rig.ran()) == 1


def test_a_run_that_left_no_result_is_interrupted_and_never_run_again(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        rig.behave(code=0, sleep=30)
        rig.post(firing())
        rig.work.tick()
        proc = rig.work.running[rig.store.actions()[0].id].proc
        assert proc is not None
        rig.settle(until=lambda: rig.calls.exists())  # it started its work
        proc.kill()  # killed along with the receiver, before it wrote anything
        proc.wait()
        rig.work.running.clear()
        again = worker.Worker(rig.store, list(rig.work.rules.values()), rig.work.journal, rig.work.settings)
        again.recover()
        rig.work = again
        rig.settle()
        assert rig.states() == ["interrupted"] and len(rig.ran()) == 1


def test_metrics_count_what_came_and_what_was_decided(rig: Rig) -> None:
    rig.behave(code=0)
    rig.post(firing())
    rig.post(firing())
    rig.post(b"{}", token=BAD)
    rig.settle()
    families = text_string_to_metric_families(rig.get("/metrics"))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    assert samples[("remediations_alerts_received_total", (("status", "firing"),))] == 2
    assert samples[("remediations_alert_posts_total", (("code", "200"),))] == 2
    assert samples[("remediations_alert_posts_total", (("code", "401"),))] == 1
    assert samples[("remediations_alert_decisions_total", (("decision", "succeeded"),))] == 1
    assert samples[("remediations_alert_decisions_total", (("decision", "deduped"),))] == 1
    assert json.loads(rig.get("/healthz"))["ok"] is True


def inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


@pytest.mark.parametrize(("args", "says"), [
    (["--listen", "127.0.0.1:9"], "REMEDIATIONS_ALERTS_TOKEN: a bearer token of at least 16"),
    (["--listen", "nowhere"], "--listen 'nowhere': give ADDRESS:PORT"),
    (["--workers", "0"], "--workers '0': give a whole number from 1 to 32"),
])  # fmt: skip
def test_serve_refuses_bad_input_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "rules.yml").write_text(RULES.format(mode="auto", cooldown="1m", attempts=3))
    (tmp_path / "inv.yml").write_text(INVENTORY)
    import os

    env = {k: v for k, v in os.environ.items() if k != "REMEDIATIONS_ALERTS_TOKEN"}
    if args[0] != "--listen" or args[1] != "127.0.0.1:9":
        env["REMEDIATIONS_ALERTS_TOKEN"] = TOKEN
    env["REMEDIATIONS_AUDIT_LOG"] = str(tmp_path / "audit.jsonl")
    done = inv("alerts.serve", "--rules", str(tmp_path / "rules.yml"), "-i", str(tmp_path / "inv.yml"),
               "--store", str(tmp_path / "s.sqlite"), *args, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr


def test_approve_reset_and_status_from_the_command_line(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="approve") as rig:
        rig.behave(code=0)
        rig.post(firing())
        rig.settle()
        store = str(tmp_path / "store.sqlite")
        import os

        env = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "people.jsonl")}
        shown = inv("alerts.status", "--store", store)
        assert shown.returncode == 0, shown.stderr
        assert "awaiting-approval" in shown.stdout and "api-down@api1" in shown.stdout
        assert inv("alerts.approve", "99", "--store", store).returncode == 2
        done = inv("alerts.approve", "1", "--store", store, "--by", "bob", env=env)
        assert done.returncode == 0 and "approved by bob" in done.stdout
        record = json.loads((tmp_path / "people.jsonl").read_text())
        assert (record["status"], record["action"], record["host"]) == ("approved", 1, "api1")
        assert rig.store.action(1).state == "queued"  # type: ignore[union-attr]
        assert "is not open" in inv("alerts.reset", "api-down@api1", "--store", store).stdout
        assert inv("alerts.reset", "api-down", "--store", store).returncode == 2


# ---- the receiver as a process: killed mid-run, started again ---------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    import os

    env = {**os.environ, "REMEDIATIONS_ALERTS_TOKEN": TOKEN,
           "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "audit"),
           "FAKE_INV_CALLS": str(tmp_path / "calls.jsonl"),
           "FAKE_INV_BEHAVIOUR": str(tmp_path / "behaviour.json")}
    argv = [sys.executable, "-m", "invoke", "alerts.serve", "--rules", str(tmp_path / "rules.yml"),
            "-i", str(tmp_path / "inv.yml"), "--store", str(tmp_path / "store.sqlite"),
            "--listen", f"127.0.0.1:{port}", "--inv", str(tmp_path / "inv")]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "listening on" in first, first + proc.stdout.read()
    return proc


def test_a_receiver_killed_mid_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(RULES.format(mode="auto", cooldown="0s", attempts=3))
    (tmp_path / "inv.yml").write_text(INVENTORY)
    (tmp_path / "inv").write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_INV} \"$@\"\n")
    (tmp_path / "inv").chmod(0o755)
    (tmp_path / "behaviour.json").write_text(json.dumps({"code": 0, "sleep": 3}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    rig = Rig(Store(tmp_path / "store.sqlite"), None, url, tmp_path / "calls.jsonl",  # type: ignore[arg-type]
              tmp_path / "behaviour.json", tmp_path / "audit")
    first = _serve(tmp_path, port)
    try:
        assert rig.post(firing())[0] == 200
        end = time.monotonic() + 20
        while not rig.calls.exists() and time.monotonic() < end:
            time.sleep(0.05)
        first.kill()  # SIGKILL: no goodbye
        first.wait(10)
        with pytest.raises(urllib.error.URLError):
            rig.post(firing())  # down: Alertmanager keeps it and sends it again
        second = _serve(tmp_path, port)
        try:
            assert rig.post(firing())[0] == 200  # the re-send after the restart
            end = time.monotonic() + 30
            while rig.states() != ["succeeded"] and time.monotonic() < end:
                time.sleep(0.1)
            assert rig.states() == ["succeeded"] and len(rig.ran()) == 1
            assert json.loads(rig.get("/healthz")) == {"ok": True, "gc_enabled": True}  # start-up pause over
            families = text_string_to_metric_families(rig.get("/metrics"))
            samples = {(s.name, tuple(s.labels.items())): s.value for f in families for s in f.samples}
            assert samples[("process_resident_memory_bytes", ())] > 0
            second.terminate()
            assert second.wait(20) == 0
        finally:
            second.kill()
    finally:
        first.kill()


def test_the_channel_gets_one_line_per_decision_that_matters_and_never_a_secret(tmp_path: Path) -> None:
    from tests.unit.reporting.chat_apis import chat_apis

    bot = "123456:AAbot-token-for-the-receiver-test"
    with chat_apis() as apis:
        config = NotifyConfig(telegram_bot_token=bot, telegram_chat_id="-100123", telegram_api=apis.url)
        with make_rig(tmp_path, notify=config) as rig:
            rig.behave(code=1)
            for _ in range(3):
                rig.post(firing())  # one alert, sent three times
            rig.settle()
            rig.post(firing(starts="2026-12-01T23:00:00Z"))
            rig.settle()
            end = time.monotonic() + 10
            while len(apis.delivered) < 4 and time.monotonic() < end:
                time.sleep(0.05)
        texts = [d.text for d in apis.delivered]
    assert len(texts) == 4, texts  # running, FAILED, circuit opened, circuit-open for the second alert
    assert texts[0] == "alerts: APIDown on api1: running `inv restart-api --host api1 --service api` " \
        "(action 1)"
    assert "FAILED (exit 1): api1 failed: restarted" in texts[1]
    assert "circuit api-down@api1 opened" in texts[2] and "inv alerts.reset api-down@api1" in texts[2]
    assert "circuit api-down@api1 is open" in texts[3]
    assert not any(bot in t or TOKEN in t for t in texts)


def test_a_rule_naming_a_runbook_runs_inv_runbook_and_an_approval_says_yes(tmp_path: Path) -> None:
    from remediations.alerts import intake, payload

    text = "rules:\n  - {name: api-rb, matchers: [alertname=APIDown], runbook: api-down, mode: approve}\n"
    parsed = rules.parse(text, "rules.yml")
    assert intake.command_for(parsed[0], "api1", check=True) == ["runbook", "api-down", "--host", "api1",
                                                                 "--check", "--json"]  # fmt: skip
    (tmp_path / "inv.yml").write_text(INVENTORY)
    store = Store(tmp_path / "store.sqlite")
    intake.receive(store, payload.parse(firing()), parsed, inventory.load(tmp_path / "inv.yml"))
    action = store.actions()[0]
    assert action.state == "planning"
    assert action.command == ("runbook", "api-down", "--host", "api1", "--json")
    store.set_state(action.id, "awaiting-approval", "posted", expires=time.time() + 60)
    server.approve(store, action.id, "carol")
    argv = store.actions()[0].command
    assert argv == ("runbook", "api-down", "--host", "api1", "--yes", "--json")
    # the shape `inv runbook` reads: given a host the inventory lacks, it gets as far as the inventory
    done = inv(*argv[:3], "api9", *argv[4:], "-i", str(tmp_path / "inv.yml"))
    assert done.returncode == 2 and "unknown host or group 'api9'" in done.stderr, done.stderr


def test_a_client_that_sends_nothing_is_dropped_and_others_are_answered(rig: Rig) -> None:
    import socket

    host, port = rig.url.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)), timeout=30)
    silent.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    assert rig.post(firing())[0] == 200  # another request meanwhile
    started = time.monotonic()
    assert silent.recv(100) == b""  # closed by the server after its read timeout
    assert time.monotonic() - started < 15
    silent.close()


# ---- what a new team found (the "newteam" trial) ----------------------------------------------------


def test_a_reset_circuit_runs_the_next_alert_whatever_came_before_it(tmp_path: Path) -> None:
    with make_rig(tmp_path, attempts=2) as rig:
        rig.behave(code=0)
        for n in range(3):  # distinct alerts: two runs, then the attempts open the circuit
            rig.post(firing(fingerprint=f"00000000000000e{n}"))
            rig.settle()
        assert rig.states() == ["succeeded", "succeeded", "circuit-open"]
        assert "circuit.attempts" in rig.store.circuit("api-down", "api1")["reason"]  # type: ignore[index]
        assert rig.store.close_circuit("api-down", "api1", "reset by a test")
        rig.post(firing(fingerprint="00000000000000e9"))
        rig.settle()
        assert rig.states()[-1] == "succeeded" and len(rig.ran()) == 3


def test_an_expired_approval_says_what_to_run_by_hand(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="approve") as rig:
        rig.behave(code=0)
        rig.post(firing())
        rig.settle()
        rig.work.tick(now=time.time() + 7200)
        reason = rig.store.actions()[0].reason
        assert "run `inv restart-api --host api1 --service api` by hand" in reason


def test_read_only_commands_never_make_a_store_and_name_the_one_they_read(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such.sqlite"
    for args in (["alerts.status"], ["alerts.approve", "3"], ["alerts.reset", "api-down@api1"]):
        done = inv(*args, "--store", str(missing))
        assert done.returncode == 2 and "no receiver store there" in done.stderr, done.stderr
    assert not missing.parent.exists()
    with make_rig(tmp_path) as rig:
        rig.post(firing())
        store = str(tmp_path / "store.sqlite")
        done = inv("alerts.approve", "7", "--store", store)
        assert done.returncode == 2 and "no action 7" in done.stderr and store in done.stderr
        done = inv("alerts.reset", "nosuch@api1", "--store", store)
        assert done.returncode == 2 and "no action of rule nosuch on api1" in done.stderr


def test_hostile_label_values_never_make_a_line_of_their_own(tmp_path: Path) -> None:
    forged = "x\n  rule api-down: fires on api1: inv restart-api --host all\u202e"
    with make_rig(tmp_path) as rig:
        body = firing(instance=f"api9{forged}")
        body["alerts"][0]["labels"]["zz"] = forged
        assert rig.post(body)[0] == 200
        store = str(tmp_path / "store.sqlite")
        shown = inv("alerts.status", "--store", store)
        assert shown.returncode == 0 and "\u202e" not in shown.stdout
        assert not any(line.startswith("  rule") for line in shown.stdout.splitlines())
        assert len(shown.stdout.splitlines()) == 3  # store, circuits, the one (refused) action
    (tmp_path / "rules.yml").write_text(RULES.format(mode="auto", cooldown="1m", attempts=3))
    (tmp_path / "p.json").write_text(json.dumps(body))
    tested = inv("alerts.test", "--rules", str(tmp_path / "rules.yml"), "-i", str(tmp_path / "inv.yml"),
                 str(tmp_path / "p.json"))  # fmt: skip
    said = tested.stdout.splitlines()
    assert tested.returncode == 0, tested.stderr
    assert not any(line.startswith("  rule api-down: fires") for line in said), said


def test_a_wrong_token_and_a_missing_one_are_told_apart_and_the_scheme_is_any_case(rig: Rig) -> None:
    wrong = rig.post(firing(), token=BAD)
    request = urllib.request.Request(rig.url + "/alertmanager", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        missing = (exc.code, json.loads(exc.read()))
    assert wrong[0] == missing[0] == 401
    assert "not this receiver's" in wrong[1]["error"] and "no Authorization header" in missing[1]["error"]
    lower = urllib.request.Request(rig.url + "/alertmanager", data=json.dumps(firing()).encode(),
                                   method="POST", headers={"Authorization": f"bearer {TOKEN}"})  # fmt: skip
    with urllib.request.urlopen(lower, timeout=10) as answer:
        assert answer.status == 200


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    with make_rig(tmp_path, mode="approve") as rig:
        for n in range(20):
            rig.post(firing(fingerprint=f"00000000000000f{n:x}"))
        store = str(tmp_path / "store.sqlite")
        command = f"{sys.executable} -m invoke alerts.status --store {store} | sh -c 'exec 0<&-; sleep 0.5'"
        done = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_an_empty_rules_file_and_the_dry_run_text() -> None:
    with pytest.raises(rules.RulesError, match=r"rules.yml:1: no rules"):
        rules.parse("rules: []\n", "rules.yml")
    from remediations.alerts import tester

    dry = rules.parse(RULES.format(mode="dry-run", cooldown="1m", attempts=3), "r.yml")[0]
    assert tester.mode_text(dry) == "mode dry-run: posts the plan (its check mode), never runs"
