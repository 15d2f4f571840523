"""Alert payloads (as Alertmanager 0.25 posts them), rules (file:line errors), matching, host lookup,
and the offline rule tester through the real `inv`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remediations.alerts import payload, rules
from remediations.core import inventory

DATA = Path(__file__).parent / "am_data"
ROOT = Path(__file__).resolve().parents[3]
FIRING = json.loads((DATA / "firing.json").read_text())
RESOLVED = json.loads((DATA / "resolved.json").read_text())

RULES = """\
rules:
  - name: api-down
    matchers: ["alertname=APIDown", "severity=~crit.*"]
    run: restart-api
    args: {service: api}
    cooldown: 10m
    circuit: {attempts: 2, window: 30m, refire: 5m}
  - name: disk
    matchers: ["alertname=CriticalDiskUsage"]
    runbook: disk-full
    args: {keep_days: 7}
    mode: approve
  - name: not-staging
    matchers: ["alertname=APIDown", 'env!="staging"']
    run: ensure-healthy
    mode: dry-run
"""


def test_alertmanagers_own_bodies_parse() -> None:
    firing, resolved = payload.parse(FIRING), payload.parse(RESOLVED)
    [alert] = firing.alerts
    assert (firing.status, alert.status, alert.name) == ("firing", "firing", "APIDown")
    assert alert.fingerprint == "7d310535fdf0e95a" and alert.ends_at is None  # Go's zero time
    assert alert.starts_at.microsecond == 943400  # nine digits read as six
    assert resolved.alerts[0].status == "resolved" and resolved.alerts[0].ends_at is not None
    # the same alert keeps its fingerprint; a resend of the same firing keeps its key
    assert resolved.alerts[0].fingerprint == alert.fingerprint
    assert payload.parse(copy.deepcopy(FIRING)).alerts[0].key == alert.key


def test_fields_newer_or_missing_are_tolerated() -> None:
    body = copy.deepcopy(FIRING)
    body["newerField"] = {"x": 1}
    del body["truncatedAlerts"]
    del body["alerts"][0]["fingerprint"]
    [alert] = payload.parse(body).alerts
    assert len(alert.fingerprint) == 16  # computed from the labels, the same every time
    assert payload.parse(copy.deepcopy(body)).alerts[0].fingerprint == alert.fingerprint


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda b: b.update(version="3"), "version '3'"),
        (lambda b: b.update(status="broken"), "status: 'broken'"),
        (lambda b: b.update(alerts="x"), "alerts: missing or not a list"),
        (lambda b: b["alerts"][0].update(labels={"a": 1}), "alerts[0].labels.a"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts[0].startsAt"),
        (lambda b: b["alerts"][0].update(startsAt="2026-12-01T10:00:00"), "has no offset"),
        (lambda b: b["alerts"][0].update(fingerprint="../../x"), "fingerprint"),
        (lambda b: b["alerts"].extend([b["alerts"][0]] * 1000), "at most 1000"),
    ],
)
def test_bad_payloads_say_which_field(change: Any, says: str) -> None:
    body = copy.deepcopy(FIRING)
    change(body)
    with pytest.raises(payload.PayloadError, match=None) as caught:
        payload.parse(body)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("rules:\n  - name: a\n    matchers: [alertname=X]\n    run: nosuch\n", 4, "no task 'nosuch'"),
        ("rules:\n  - name: a\n    matchers: [alertname=X]\n    runbook: nosuch\n", 4, "no runbook 'nosuch'"),
        ("rules:\n  - name: a\n    matchers: [alertname]\n    run: health\n", 3, "is not LABEL=VALUE"),
        ("rules:\n  - name: a\n    matchers: ['x=~(']\n    run: health\n", 3, "not a regular expression"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    run: restart-api\n    args: {service: 'a b'}\n", 4,
         "not a compose service name"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    run: health\n    mode: yolo\n", 5, "mode is auto"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    run: health\n    cooldwn: 1m\n", 5,
         "no key 'cooldwn'"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    run: health\n    circuit: {attempts: 0}\n", 5,
         "attempts is a whole number"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    run: health\n  - name: a\n    matchers: [a=b]\n"
         "    run: health\n", 5, "used by an earlier rule"),
        ("rules:\n  - name: a\n    matchers: [a=b]\n    runbook: secret-leaked\n", 4,
         "--var key=VALUE is required"),
    ],
)
def test_rule_errors_name_the_line(text: str, line: int, says: str) -> None:
    with pytest.raises(rules.RulesError) as caught:
        rules.parse(text, "rules.yml")
    assert str(caught.value).startswith(f"rules.yml:{line}:"), str(caught.value)
    assert says in str(caught.value)


def lab_like_inventory(tmp_path: Path) -> inventory.Inventory:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    api1: {ansible_host: 198.18.0.11}\n"
                    "    api2: {ansible_host: 198.18.0.12}\n")
    return inventory.load(path)


def test_matching_and_host_lookup(tmp_path: Path) -> None:
    inv = lab_like_inventory(tmp_path)
    parsed = rules.parse(RULES, "rules.yml")
    [alert] = payload.parse(FIRING).alerts
    decided = {d.rule: d for d in rules.decide(parsed, alert, inv)}
    assert decided["api-down"].fires and decided["api-down"].host == "api1"
    assert not decided["disk"].fires
    assert "alertname is 'APIDown', wants =CriticalDiskUsage" in decided["disk"].reason
    assert decided["not-staging"].fires  # a missing label is the empty value, as in Alertmanager
    by_address = copy.deepcopy(FIRING)
    by_address["alerts"][0]["labels"]["instance"] = "198.18.0.12:9100"
    assert rules.decide(parsed, payload.parse(by_address).alerts[0], inv)[0].host == "api2"
    unknown = copy.deepcopy(FIRING)
    unknown["alerts"][0]["labels"]["instance"] = "evil.example.com:9100"
    refused = rules.decide(parsed, payload.parse(unknown).alerts[0], inv)[0]
    assert not refused.fires and "is no inventory host (refused)" in refused.reason
    assert rules.host_name("[2001:db8::1]:9100") == "2001:db8::1" and rules.host_name("api1") == "api1"


def test_anchored_regex_like_alertmanager() -> None:
    m = rules.Matcher("severity", "=~", "crit")
    assert not m.matches({"severity": "critical"}) and m.matches({"severity": "crit"})
    assert rules.Matcher("severity", "!~", "warn.*").matches({"severity": "critical"})


def run_inv(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *argv], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=60, check=False)  # fmt: skip


def test_the_rule_tester_says_what_fires_and_why_not(tmp_path: Path) -> None:
    lab_like_inventory(tmp_path)
    (tmp_path / "rules.yml").write_text(RULES)
    done = run_inv("alerts.test", "--rules", str(tmp_path / "rules.yml"), str(DATA / "firing.json"),
                   "--inventory", str(tmp_path / "hosts.yml"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rule api-down: fires on api1: inv restart-api --host api1 --service api" in done.stdout
    assert "rule disk: does not fire: alertname is 'APIDown', wants =CriticalDiskUsage" in done.stdout
    as_json = run_inv("alerts.test", "--rules", str(tmp_path / "rules.yml"), "-", "--json",
                      "--inventory", str(tmp_path / "hosts.yml"), stdin=json.dumps(RESOLVED))  # fmt: skip
    [entry] = json.loads(as_json.stdout)
    fired = [r for r in entry["rules"] if r["fires"]]
    assert fired and all(r["resolved"].startswith("resolved: nothing runs") for r in fired)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--rules", "nosuch.yml", "PAYLOAD"), "nosuch.yml: no such file"),
        (("--rules", "RULES", "BADJSON"), "Expecting property name"),
        (("--rules", "RULES", "V3"), "version '3'"),
        (("PAYLOAD",), "--rules FILE is required"),
    ],
)
def test_tester_bad_input_is_one_line(tmp_path: Path, argv: tuple[str, ...], says: str) -> None:
    lab_like_inventory(tmp_path)
    (tmp_path / "rules.yml").write_text(RULES)
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "v3.json").write_text(json.dumps({**FIRING, "version": "3"}))
    names = {"PAYLOAD": str(DATA / "firing.json"), "RULES": str(tmp_path / "rules.yml"),
             "BADJSON": str(tmp_path / "bad.json"), "V3": str(tmp_path / "v3.json")}  # fmt: skip
    given = [names.get(a, a) for a in argv]
    done = run_inv("alerts.test", *given, "--inventory", str(tmp_path / "hosts.yml"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line and "Traceback" not in done.stderr
