"""The alerting kit on the lab, before any receiver: a real Prometheus inside api1 scrapes the api's
/metrics, and when the api is stopped evaluates APIDown and sends it to a real Alertmanager on the
lab bridge, which posts it to our sink on the controller's loopback; started again, the alert
resolves. The path the receiver's end-to-end test takes, every piece real."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import hosts as lab
from tests import alerting, labkit

# the receiver's end-to-end test (test_receiver_e2e.py) takes the same path in the default run
pytestmark = [pytest.mark.lab, pytest.mark.alerting]

HOST = "api1"


@dataclass
class Stack:
    sink: alerting.Sink
    am: alerting.Alertmanager
    prometheus: alerting.Prometheus


@pytest.fixture(scope="module")
def stack(lab: object) -> Iterator[Stack]:
    alerting.api_serves_metrics(HOST)
    with alerting.sink() as sink, alerting.alertmanager(sink.url, address=alerting.BRIDGE) as am, \
            alerting.prometheus_on(HOST, [am.url.removeprefix("http://")]) as prometheus:  # fmt: skip
        yield Stack(sink, am, prometheus)
    labkit.reset_shop(HOST)


def test_prometheus_on_api1_fires_apidown_through_alertmanager_and_resolves(stack: Stack) -> None:
    alerting.wait_until("api1's api scraped as up", lambda: stack.prometheus.up() == 1, 20, 0.5)
    assert stack.prometheus.alerts() == []
    stopped = time.monotonic()
    lab.exec_on(HOST, [*labkit.COMPOSE, "stop", "api"], timeout=60)
    try:
        [post] = stack.sink.wait(lambda p: p.body.get("status") == "firing", timeout=40)
        [alert] = post.alerts("firing")
        assert alert["labels"] == {"alertname": "APIDown", "instance": "api1:8080", "job": "api",
                                   "severity": "critical"}  # fmt: skip
        assert alert["annotations"]["summary"] == "the api on api1:8080 does not answer"
        assert alert["generatorURL"].startswith("http://")  # Prometheus's own link to the expression
        assert post.headers["Authorization"] == f"Bearer {alerting.TOKEN}"
        assert stack.prometheus.up() == 0 and stack.prometheus.firing()
        print(f"\napi stopped -> APIDown posted by Alertmanager: {post.at - stopped:.1f} s")
    finally:
        lab.exec_on(HOST, [*labkit.COMPOSE, "start", "api"], timeout=60)
    started = time.monotonic()
    [resolved] = stack.sink.wait(lambda p: p.body.get("status") == "resolved", timeout=40)
    assert resolved.alerts("resolved")[0]["fingerprint"] == alert["fingerprint"]
    assert stack.prometheus.firing() == []
    print(f"api started -> resolved posted: {resolved.at - started:.1f} s")
