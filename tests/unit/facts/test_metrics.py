"""Metrics probes: the threshold rules, their verdicts on a scrape read by prometheus_client's parser,
and a real `inv health` on a local host whose metrics endpoint is prometheus_client's own exporter."""

from __future__ import annotations

import base64
import http.server
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, start_http_server

from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts import health as facts
from remediations.facts import metrics
from remediations.host import health
from tests import labkit

SCRAPE = """# HELP inbound_queue_depth Telegram updates waiting
# TYPE inbound_queue_depth gauge
inbound_queue_depth{queue="in"} 1500
inbound_queue_depth{queue="retry"} 3
# TYPE outbound_queue_depth gauge
outbound_queue_depth 10
# TYPE webhook_processing_lag_seconds summary
webhook_processing_lag_seconds{quantile="0.5"} 0.2
webhook_processing_lag_seconds{quantile="0.99"} NaN
webhook_processing_lag_seconds_sum 12.5
webhook_processing_lag_seconds_count 40
# TYPE outbound_429_total counter
outbound_429_total 7
"""


def rule(text: str, colour: str = "red") -> metrics.Rule:
    return metrics.parse_rule(text, colour, "h1")


@pytest.mark.parametrize(
    ("text", "selector", "op", "threshold"),
    [
        ("inbound_queue_depth > 1000", "inbound_queue_depth", ">", 1000.0),
        ("inbound_queue_depth>1000", "inbound_queue_depth", ">", 1000.0),
        ('  q{queue="in"}   >=  1e3 ', 'q{queue="in"}', ">=", 1000.0),
        ('up{job=~"api|worker", env!="dev",} == 0', 'up{job=~"api|worker",env!="dev"}', "==", 0.0),
        ('x{a="say \\"hi\\""} != -2.5', 'x{a="say \\"hi\\""}', "!=", -2.5),
        ("ns:rate_5m{} < 0.1", "ns:rate_5m", "<", 0.1),
        ('lag{q!~"test.*"} <= 30', 'lag{q!~"test.*"}', "<=", 30.0),
    ],
)
def test_parse_rule(text: str, selector: str, op: str, threshold: float) -> None:
    got = rule(text)
    assert (got.selector, got.op, got.threshold, got.colour) == (selector, op, threshold, "red")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "give one line"),
        ("queue > 1000\nrm -rf /", "give one line"),
        ("queue\0 > 1", "give one line"),
        ("x" * 100_000 + " > 1", "give one line"),
        ("$(touch /tmp/pwned) > 1", "expected a metric name"),
        ("queue 1000", "expected a comparison"),
        ("queue > many", "'many' is not a number"),
        ("queue > nan", "finite"),
        ("queue > inf", "finite"),
        ('queue{a=b} > 1', "double quotes"),
        ('queue{a="b} > 1', "not closed"),
        ('queue{a~"b"} > 1', "expected one of"),
        ('queue{a=~"("} > 1', "bad regex"),
        ('queue{a="1" b="2"} > 1', "separated by ','"),
        ('queue{9a="1"} > 1', "a label name"),
        (["queue > 1"], "give one line"),
        (5, "give one line"),
    ],
)
def test_parse_rule_refuses(text: Any, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        rule(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_judge_against_a_real_parse() -> None:
    samples = metrics.parse_exposition(SCRAPE)
    red = metrics.judge(rule("inbound_queue_depth > 1000"), samples)
    assert (red.colour, red.value) == ("red", 1500.0)
    assert red.detail.startswith('inbound_queue_depth{queue="in"} = 1500 (1 of 2 series)')
    retry = metrics.judge(rule('inbound_queue_depth{queue="retry"} > 1000'), samples)
    assert (retry.colour, retry.value) == ("green", 3.0)
    yellow = metrics.judge(rule("outbound_queue_depth >= 10", "yellow"), samples)
    assert yellow.colour == "yellow"
    missing = metrics.judge(rule("no_such_series > 1"), samples)
    assert (missing.colour, missing.value) == ("red", "missing")
    assert "no series no_such_series" in missing.detail
    nan = metrics.judge(rule('webhook_processing_lag_seconds{quantile="0.99"} > 30'), samples)
    assert (nan.colour, nan.value) == ("red", "NaN") and "is NaN" in nan.detail
    # a sample name as the endpoint prints it: suffixes included
    assert metrics.judge(rule("outbound_429_total > 5"), samples).colour == "red"
    assert metrics.judge(rule("webhook_processing_lag_seconds_count < 1"), samples).colour == "green"
    # regex matchers are anchored, as in PromQL; an absent label is ""
    assert metrics.judge(rule('inbound_queue_depth{queue=~"i"} > 0'), samples).value == "missing"
    assert metrics.judge(rule('inbound_queue_depth{queue=~"i.*"} > 0'), samples).value == 1500.0
    assert metrics.judge(rule('outbound_queue_depth{queue=""} > 5'), samples).colour == "red"
    assert metrics.judge(rule('outbound_queue_depth{queue!=""} > 5'), samples).value == "missing"
    low = metrics.judge(rule("inbound_queue_depth < 5", "yellow"), samples)
    assert (low.colour, low.value) == ("yellow", 3.0)


@pytest.mark.parametrize(
    "text", ["not metrics at all {{", "ok 1\nbad{ 2\n", "\x00\xff\n", "<html><body>hi</body></html>\n"]
)
def test_unparsable_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        metrics.parse_exposition(text)


def test_scrape_section_decodes_and_reports_failures() -> None:
    body = base64.encodebytes(SCRAPE.encode()).decode()
    out = f"@@now\n1\n@@metrics 0 0 {len(SCRAPE)}\n{body}@@metrics 1 7 0\ncurl: (7) refused\n"
    ok = facts.parse_facts(out)
    assert ok.metrics[0] == metrics.Scrape(0, len(SCRAPE), SCRAPE)
    assert ok.metrics[1] == metrics.Scrape(7, 0, "curl: (7) refused")
    garbled = metrics.Scrape.from_section(0, "5", "@@@not base64")
    assert garbled.code == 1 and "base64" in garbled.text
    assert metrics.Scrape(0, metrics.MAX_BODY_BYTES + 1, "").cut


def probe_settings(*probes: dict[str, Any]) -> facts.Settings:
    return facts.Settings.from_host(Host("h1", {"health_probes": list(probes)}, (), "inv.yml"))


def test_metrics_checks_name_each_rule_and_fail_clearly() -> None:
    s = probe_settings({"name": "backend", "metrics": "http://127.0.0.1:8080/metrics",
                        "red": ["inbound_queue_depth > 1000", "outbound_queue_depth > 1000"],
                        "yellow": "inbound_queue_depth > 100"})  # fmt: skip
    [probe] = s.probes
    assert [str(r) for r in probe.rules] == ["inbound_queue_depth > 1000", "outbound_queue_depth > 1000",
                                             "inbound_queue_depth > 100"]  # fmt: skip
    command = facts.facts_command(s)
    assert "curl -fsS -m 5 -o \"$tmp\" http://127.0.0.1:8080/metrics" in command and "base64" in command
    good = facts.HealthFacts(1.0, metrics={0: metrics.Scrape(0, len(SCRAPE), SCRAPE)})
    checks = {c.name: c for c in health.evaluate(s, good)}
    assert checks["metrics backend: inbound_queue_depth > 1000"].colour == health.RED
    assert checks["metrics backend: outbound_queue_depth > 1000"].colour == health.GREEN
    assert checks["metrics backend: inbound_queue_depth > 100"].colour == health.YELLOW
    for scrape, value, words in [
        (None, "unreadable", "not run"),
        (metrics.Scrape(7, 0, "curl: (7) Failed to connect"), "unreadable", "Failed to connect"),
        (metrics.Scrape(0, metrics.MAX_BODY_BYTES + 1, ""), "too big", "more than the"),
        (metrics.Scrape(0, 9, "garbage {{"), "unparsable", "not Prometheus text format"),
    ]:
        state = facts.HealthFacts(1.0, metrics={} if scrape is None else {0: scrape})
        [check] = health.evaluate(s, state)
        assert (check.name, check.colour, check.value) == ("metrics backend", health.RED, value)
        assert words in check.detail


@pytest.mark.parametrize(
    ("probe", "why"),
    [
        ({"name": "m", "metrics": "http://x/metrics"}, "needs red: and/or yellow:"),
        ({"name": "m", "metrics": "ftp://x/metrics", "red": "a > 1"}, "http:// or https://"),
        ({"name": "m", "metrics": "http://x/\n; reboot", "red": "a > 1"}, "on one line"),
        ({"name": "m", "metrics": "http://x/", "red": "a >"}, "is not a number"),
        ({"name": "m", "metrics": "http://x/", "red": "a > 1", "thresholds": []}, "unknown key"),
        ({"name": "m\nx", "metrics": "http://x/", "red": "a > 1"}, "one line"),
        ({"name": "m", "metrics": "http://x/", "http": "http://x/", "red": "a > 1"}, "exactly one of"),
        ({"name": "m", "metrics": "http://x/", "red": ["a > 1", "b >> 2"]}, "is not a number"),
    ],
)
def test_metrics_probe_bad_input(probe: dict[str, Any], why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        probe_settings(probe)
    assert "\n" not in str(caught.value)


# --- a real exporter on loopback, a real `inv health` on a local host ----------------------------


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[str, Gauge]]:
    registry = CollectorRegistry()
    depth = Gauge("inbound_queue_depth", "Telegram updates waiting", ["queue"], registry=registry)
    depth.labels("in").set(12)
    Counter("outbound_429", "429s from Telegram", registry=registry).inc(3)
    Summary("webhook_processing_lag_seconds", "lag", registry=registry).observe(0.4)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", depth
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_health(tmp_path: Path, *probes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    inventory = labkit.write_local_inventory(tmp_path, {"local1": {}}, health_disk_paths=[],
                                             health_probes=list(probes))  # fmt: skip
    audit = tmp_path / "audit.jsonl"
    ran = labkit.inv("health", "--host", "local1", "--json", audit=audit, inventory=inventory)
    assert ran.code in (0, 1), ran.stderr
    return {s["data"]["check"]["name"]: s["data"]["check"] for s in ran.host("local1")["steps"]
            if "check" in s.get("data", {})}  # fmt: skip


def test_health_reads_a_real_exporter_and_sees_a_series_pushed_over_its_threshold(
    tmp_path: Path, exporter: tuple[str, Gauge]
) -> None:
    url, depth = exporter
    probe = {"name": "backend", "metrics": url, "red": ['inbound_queue_depth{queue="in"} > 1000',
             "outbound_429_total > 100", "no_such_series > 1"],
             "yellow": "webhook_processing_lag_seconds_count >= 1"}  # fmt: skip
    depth.labels("in").set(12)
    checks = run_health(tmp_path, probe)
    queue = checks['metrics backend: inbound_queue_depth{queue="in"} > 1000']
    assert (queue["colour"], queue["value"]) == ("green", 12.0)
    assert checks["metrics backend: outbound_429_total > 100"]["colour"] == "green"
    assert checks["metrics backend: no_such_series > 1"]["value"] == "missing"
    assert checks["metrics backend: webhook_processing_lag_seconds_count >= 1"]["colour"] == "yellow"
    depth.labels("in").set(1500)  # the backend falls behind
    queue = run_health(tmp_path, probe)['metrics backend: inbound_queue_depth{queue="in"} > 1000']
    assert (queue["colour"], queue["value"]) == ("red", 1500.0)
    depth.labels("in").set(math.nan)
    queue = run_health(tmp_path, probe)['metrics backend: inbound_queue_depth{queue="in"} > 1000']
    assert (queue["colour"], queue["value"]) == ("red", "NaN")


class _Html(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>Not Found</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_health_says_when_the_endpoint_is_down_or_not_metrics(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        closed = {"name": "gone", "metrics": "http://127.0.0.1:9/metrics", "red": "a > 1"}
        html = {"name": "html", "metrics": f"http://127.0.0.1:{server.server_port}/", "red": "a > 1"}
        checks = run_health(tmp_path, closed, html)
    finally:
        server.shutdown()
        server.server_close()
    gone = checks["metrics gone"]
    assert (gone["colour"], gone["value"]) == ("red", "unreadable") and "fetch failed" in gone["detail"]
    page = checks["metrics html"]
    assert (page["colour"], page["value"]) == ("red", "unparsable")
    assert "not Prometheus text format" in page["detail"]
