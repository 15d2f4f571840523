"""From alert to verified fix with nobody typing, every piece real: api1's api is stopped; a real
Prometheus inside api1 stops scraping it and fires APIDown; two real Alertmanager peers (an HA pair
whose gossip does not reach each other) each post it, and re-post it, to the receiver
(`inv alerts.serve`, a process of its own); the receiver runs `inv restart-api` once; the api is
healthy; Prometheus resolves the alert and both peers post that. Prints the alert-fired → healthy
time (README, "Alerts: the receiver")."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from tests import alerting, labkit

pytestmark = pytest.mark.lab

HOST = "api1"
TOKEN_ENV = "RM_E2E_AM_TOKEN"  # noqa: S105 - the variable's name
RULES = """\
rules:
  - name: api-down
    matchers: ["alertname=APIDown", "severity=critical"]
    host_label: instance          # api1:8080 -> api1
    run: restart-api
    args: {service: api}
    mode: auto
    cooldown: 5m
    circuit: {attempts: 3, window: 1h, refire: 5m}
"""


@dataclass
class Receiver:
    url: str
    store: Path
    audit: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def status(self) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "invoke", "alerts.status", "--store", str(self.store),
                               "--json"], cwd=labkit.ROOT, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        series = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                series[name] = float(value)
        return series

    def actions(self, host: str) -> list[dict[str, Any]]:
        """Its actions on `host` (`inv alerts.status --json`), newest first."""
        return [a for a in self.status()["recent"] if a["host"] == host]

    def runs(self) -> list[dict[str, Any]]:
        """The restart-api runs the receiver started, from the audit log (one `start` record each)."""
        records = labkit.audit_lines(self.audit)
        return [r for r in records if r["task"] == "restart-api" and r["step"] == "start"]


@contextlib.contextmanager
def receiver(folder: Path) -> Iterator[Receiver]:
    rules = folder / "rules.yml"
    rules.write_text(RULES)
    port = alerting.free_port()
    store, audit, log = folder / "alerts.sqlite", folder / "audit.jsonl", folder / "receiver.log"
    argv = [sys.executable, "-m", "invoke", "alerts.serve", "--rules", str(rules), "--inventory",
            str(labkit.LAB_INVENTORY), "--listen", f"127.0.0.1:{port}", "--token-env", TOKEN_ENV,
            "--store", str(store), "--workers", "1"]  # fmt: skip
    env = {**os.environ, TOKEN_ENV: alerting.TOKEN, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=labkit.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    running = Receiver(f"http://127.0.0.1:{port}", store, audit, log, proc)
    try:
        alerting.wait_until("the receiver's /healthz", lambda: proc.poll() is not None
                            or alerting.answers(f"{running.url}/healthz"), 30, 0.3)  # fmt: skip
        assert proc.poll() is None, f"alerts.serve exited {proc.returncode}:\n{log.read_text()[-2000:]}"
        yield running
    finally:
        alerting.stop_process(proc, 30)


@dataclass
class Loop:
    receiver: Receiver
    peers: tuple[alerting.Alertmanager, alerting.Alertmanager]
    prometheus: alerting.Prometheus


@pytest.fixture(scope="module")
def loop(lab: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    alerting.api_serves_metrics(HOST)
    folder = tmp_path_factory.mktemp("alerts-e2e")
    with receiver(folder) as serving, \
            alerting.alertmanager_pair(f"{serving.url}/alertmanager", address=alerting.BRIDGE) as peers, \
            alerting.prometheus_on(HOST, [p.url.removeprefix("http://") for p in peers]) as prometheus:
        yield Loop(serving, peers, prometheus)
        print(f"\nreceiver log:\n{serving.log.read_text()[-1500:]}")
    labkit.reset_shop(HOST)


def restarted_and_healthy(before: str) -> bool:
    """Started again since `before` and healthy (a stopped container keeps its last health status)."""
    state = labkit.api_container(HOST)["State"]
    return bool(state["Running"] and state["StartedAt"] != before
                and state.get("Health", {}).get("Status") == "healthy")  # fmt: skip


def test_a_stopped_api_is_restarted_once_by_the_receiver_and_the_alert_resolves(loop: Loop) -> None:
    alerting.wait_until("api1's api scraped as up", lambda: loop.prometheus.up() == 1, 20, 0.5)
    before = labkit.started_at(HOST)
    stopped = time.monotonic()
    lab.exec_on(HOST, [*labkit.COMPOSE, "stop", "api"], timeout=60)
    fired = healthy = None
    deadline = time.monotonic() + 120
    while healthy is None and time.monotonic() < deadline:
        if fired is None and loop.prometheus.firing():
            fired = time.monotonic()
        if fired is not None and restarted_and_healthy(before):
            healthy = time.monotonic()
        time.sleep(0.3)
    assert fired is not None, f"APIDown never fired:\n{loop.prometheus.log()}"
    assert healthy is not None, f"api1 not healthy again; receiver:\n{loop.receiver.log.read_text()[-2000:]}"
    assert labkit.started_at(HOST) != before
    print(f"\napi stopped -> APIDown firing in Prometheus: {fired - stopped:.1f} s; "
          f"firing -> api healthy (Alertmanager, receiver, restart-api): {healthy - fired:.1f} s")

    alerting.wait_until("APIDown resolved in Prometheus", lambda: not loop.prometheus.firing(), 30, 0.5)
    resolved = 'remediations_alerts_received_total{status="resolved"}'
    alerting.wait_until("the resolved alert at the receiver, from both peers",
                        lambda: loop.receiver.metrics().get(resolved, 0) >= 2, 30, 0.5)
    [run] = loop.receiver.runs()
    assert run["host"] == HOST
    series = loop.receiver.metrics()
    # both peers posted the firing alert, and re-posted it: many POSTs, one run
    assert series['remediations_alerts_received_total{status="firing"}'] >= 2
    actions = loop.receiver.actions(HOST)
    assert [(a["rule"], a["state"]) for a in actions] == [("api-down", "succeeded")], actions


def test_re_sends_and_both_peers_copies_of_one_alert_run_it_once(loop: Loop) -> None:
    """The same alert kept firing (pushed with amtool, for api2) is posted by both peers and re-posted
    every repeat_interval: many POSTs of one alert, one run."""
    labels = {"alertname": "APIDown", "instance": "api2:8080", "job": "api", "severity": "critical"}
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    firing = 'remediations_alerts_received_total{status="firing"}'
    before = loop.receiver.metrics().get(firing, 0)
    for peer in loop.peers:
        peer.add(labels, start=start, annotations={"summary": "pushed by amtool"})
    on_api2 = lambda: [r for r in loop.receiver.runs() if r["host"] == "api2"]  # noqa: E731
    alerting.wait_until("restart-api on api2", on_api2, 40, 0.5)
    # each peer sends after group_wait, then again every repeat_interval (4s): 3 POSTs each
    alerting.wait_until("two re-sends from each peer",
                        lambda: loop.receiver.metrics().get(firing, 0) - before >= 6, 30, 0.5)  # fmt: skip
    for peer in loop.peers:
        peer.resolve(labels, start=start)
    ended = ("succeeded", "failed", "interrupted")
    done = lambda: [a for a in loop.receiver.actions("api2") if a["state"] in ended]  # noqa: E731
    alerting.wait_until("api2's action ended", done, 60, 0.5)
    assert len(on_api2()) == 1
    actions = loop.receiver.actions("api2")
    assert [(a["rule"], a["state"]) for a in actions] == [("api-down", "succeeded")], actions
    labkit.wait_health("api2", "healthy")


def test_an_alertmanager_with_the_wrong_token_is_refused_and_nothing_runs(loop: Loop) -> None:
    """A real Alertmanager whose credentials_file holds another token: 401 to each of its POSTs, no
    alert stored, nothing run (Alertmanager does not retry a 4xx; it tries again at the next tick)."""
    refused = 'remediations_alert_posts_total{code="401"}'
    before = loop.receiver.metrics()
    runs = len(loop.receiver.runs())
    with alerting.alertmanager(f"{loop.receiver.url}/alertmanager", name="am-wrong",
                               token="not-the-receivers-token-0000000000") as wrong:  # noqa: S106
        wrong.add({"alertname": "APIDown", "instance": "api2:8080", "severity": "critical"},
                  start=dt.datetime.now(dt.UTC))  # fmt: skip
        more = lambda: loop.receiver.metrics().get(refused, 0) > before.get(refused, 0)  # noqa: E731
        alerting.wait_until("a 401 at the receiver", more, 20, 0.3)
        # Alertmanager's own log says why its notification failed
        alerting.wait_until("Alertmanager's log of the 401", lambda: "401" in wrong.log(), 10, 0.3)
    after = loop.receiver.metrics()
    for name in ('remediations_alerts_received_total{status="firing"}',
                 'remediations_alert_decisions_total{decision="queued"}'):  # fmt: skip
        assert after.get(name, 0) == before.get(name, 0), name
    assert len(loop.receiver.runs()) == runs
