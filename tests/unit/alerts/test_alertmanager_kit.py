"""The alerting test kit on its own (tests/alerting.py), before any receiver: two real Alertmanagers
(Debian's 0.25) on loopback post to a sink of ours. What the receiver must cope with, seen from the
real thing: a version-4 body with the bearer token, a re-send of the same alert after
repeat_interval, the same alert from both HA peers, a resolved notice, and retries after a 5xx."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from remediations.alerts import payload
from tests import alerting
from tests.alerting import Post

LABELS = {"alertname": "APIDown", "instance": "api1:8080", "severity": "critical"}


@dataclass
class Pair:
    sink: alerting.Sink
    first: alerting.Alertmanager
    second: alerting.Alertmanager
    start: dt.datetime


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Both peers given the same alert (same labels, same start), as Prometheus sends to each."""
    with alerting.sink() as sink, alerting.alertmanager_pair(sink.url) as (first, second):
        start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for peer in (first, second):
            peer.add(LABELS, start=start, annotations={"summary": "api down"})
        yield Pair(sink, first, second, start)


def firing_from(peer: alerting.Alertmanager) -> Callable[[Post], bool]:
    return lambda p: p.body.get("externalURL") == peer.url and p.body.get("status") == "firing"


def test_a_peer_posts_version_4_with_the_bearer_token_and_the_payload_parses(pair: Pair) -> None:
    [post] = pair.sink.wait(firing_from(pair.first), timeout=20)
    assert post.path == "/alertmanager"
    assert post.headers["Authorization"] == f"Bearer {alerting.TOKEN}"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["User-Agent"].startswith("Alertmanager/0.25")
    body = post.body
    assert (body["version"], body["status"], body["receiver"]) == ("4", "firing", "remediations")
    assert body["groupKey"] == '{}:{alertname="APIDown", instance="api1:8080"}'
    [alert] = body["alerts"]
    assert alert["labels"] == LABELS and alert["annotations"] == {"summary": "api down"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"  # no end given: firing until told otherwise
    parsed = payload.parse(body)
    assert [a.status for a in parsed.alerts] == ["firing"]
    assert parsed.alerts[0].starts_at == pair.start
    assert parsed.alerts[0].fingerprint == alert["fingerprint"]


def test_both_peers_send_the_same_alert_with_the_same_key(pair: Pair) -> None:
    [a] = pair.sink.wait(firing_from(pair.first), timeout=20)
    [b] = pair.sink.wait(firing_from(pair.second), timeout=20)
    assert a.body["externalURL"] != b.body["externalURL"]
    keys = {payload.parse(p.body).alerts[0].key for p in (a, b)}
    assert len(keys) == 1, keys  # two POSTs, one alert: the receiver must act once


def test_a_peer_re_sends_the_same_alert_after_repeat_interval(pair: Pair) -> None:
    first, again = pair.sink.wait(firing_from(pair.first), count=2, timeout=30)
    assert again.at - first.at >= 3.5  # repeat_interval 4s (ticks of group_interval 2s)
    assert payload.parse(first.body).alerts[0].key == payload.parse(again.body).alerts[0].key


def test_a_resolved_alert_is_posted_as_resolved(pair: Pair) -> None:
    pair.sink.wait(firing_from(pair.first), timeout=20)
    pair.first.resolve(LABELS, start=pair.start)
    [post] = pair.sink.wait(lambda p: p.body.get("externalURL") == pair.first.url
                            and p.body.get("status") == "resolved", timeout=20)  # fmt: skip
    [alert] = payload.parse(post.body).alerts
    assert alert.status == "resolved" and alert.ends_at is not None and alert.starts_at == pair.start
    assert [a["state"] for a in pair.first.alerts()] in ([], ["resolved"])  # v2 API: no longer active


def test_a_5xx_answer_makes_alertmanager_post_again_until_a_2xx() -> None:
    """Why the receiver answers 5xx only when it could not store: Alertmanager retries the POST (and
    stops once answered 2xx: the next one is repeat_interval away)."""
    with alerting.sink() as sink, alerting.alertmanager(sink.url, timings={
            "group_wait": "1s", "group_interval": "30s", "repeat_interval": "1h"}) as peer:  # fmt: skip
        sink.status = 500
        peer.add(LABELS, start=dt.datetime.now(dt.UTC))
        first, retry = sink.wait(lambda p: True, count=2, timeout=20)
        assert (first.answered, retry.answered) == (500, 500)
        assert payload.parse(first.body).alerts[0].key == payload.parse(retry.body).alerts[0].key
        sink.status = 200
        [delivered] = sink.wait(lambda p: p.answered == 200, timeout=20)
        time.sleep(2)
        assert sink.seen(lambda p: p.at > delivered.at) == []


def test_no_packaged_prometheus_or_alertmanager_daemon_runs_here() -> None:
    """scripts/bootstrap (run by scripts/test before the tests) stops and disables the packages' own
    daemons: they run as the user prometheus; the tests' own run as root, on ports of their own."""
    if not os.environ.get("CI"):
        pytest.skip("checked after scripts/bootstrap, under CI (scripts/test)")
    mine = os.readlink("/proc/self/ns/net")
    found = subprocess.run(["pgrep", "-u", "prometheus", "-a"], capture_output=True, text=True, check=False)
    here = [line for line in found.stdout.splitlines()
            if os.readlink(f"/proc/{line.split()[0]}/ns/net") == mine]  # fmt: skip
    assert here == [], f"packaged daemons running (scripts/bootstrap stops them): {here}"
