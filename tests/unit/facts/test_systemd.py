"""The systemd facts parser, on `systemctl show` output captured from a real systemd 252 (Debian 12, PID 1
in the lab's svc1): tests/fixtures/systemd/."""

from __future__ import annotations

from pathlib import Path

import pytest

from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts.sections import MARK
from remediations.facts.systemd import (
    PROPERTIES,
    UnitFacts,
    UnitSettings,
    facts_command,
    journal_command,
    mask_line,
    parse_facts,
    parse_show,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd"


def captured(name: str) -> str:
    return (FIXTURES / name).read_text()


def units(*names: str, url: str | None = None) -> list[UnitSettings]:
    return [UnitSettings(n, url if i == 0 else None) for i, n in enumerate(names)]


def output(show: str, rc: int = 0, http: dict[int, tuple[int, str]] | None = None) -> str:
    text = f"{MARK}unitshow {rc}\n{show}"
    for index, (code, body) in (http or {}).items():
        text += f"{MARK}unithttp {index} {code}\n{body}\n"
    return text


def test_three_units_in_the_order_asked() -> None:
    records = parse_show(captured("show-three-units.txt"))
    assert [r["Id"] for r in records] == ["shop-health.service", "nosuch.service", "ssh.service"]
    assert records[0]["Environment"] == "SHOP_DATABASE_PASSWORD=lab-db-secret-4711"
    assert set(records[0]) == set(PROPERTIES)


def test_healthy_missing_and_running_units() -> None:
    asked = units("shop-health.service", "nosuch.service", "ssh.service", url="http://127.0.0.1:8000/health")
    facts = parse_facts(asked, output(captured("show-three-units.txt"), http={0: (0, "ok")}))
    shop, missing, ssh = facts
    assert shop.healthy and shop.main_pid > 0 and shop.active_state == "active"
    assert shop.verdict()[1].endswith("health URL answers")
    assert shop.invocation and len(shop.invocation) == 32
    assert not missing.exists and not missing.healthy
    assert "not a unit on this host (LoadState=not-found)" in missing.verdict()[1]
    assert ssh.healthy and ssh.http is None  # no URL: active is healthy


def test_url_failing_is_unhealthy_though_active() -> None:
    answer = (22, "curl: (22) The requested URL returned error: 503")
    asked = units("shop-health.service", url="http://127.0.0.1:8000/health")
    facts = parse_facts(asked, output(parse_show_text(0), http={0: answer}))
    assert not facts[0].healthy
    assert "health URL fails: curl: (22)" in facts[0].verdict()[1]


def parse_show_text(index: int) -> str:
    return captured("show-three-units.txt").split("\n\n")[index] + "\n"


def test_auto_restart_is_neither_healthy_nor_starting() -> None:
    facts = parse_facts(units("shop-health.service"), output(captured("show-auto-restart.txt")))[0]
    assert (facts.active_state, facts.sub_state) == ("activating", "auto-restart")
    assert not facts.healthy and not facts.starting
    assert facts.verdict()[1] == "activating/auto-restart, Result=exit-code"


def test_failed_unit() -> None:
    facts = parse_facts(units("oneshot-fail.service"), output(captured("show-failed.txt")))[0]
    assert facts.active_state == "failed" and facts.main_pid == 0 and not facts.healthy
    assert "Result=exit-code" in facts.verdict()[1]


def test_no_systemd_is_an_error_for_every_unit() -> None:
    facts = parse_facts(units("a.service", "b.service"), output(captured("show-no-systemd.txt"), rc=1))
    said = "systemctl show failed (exit 1): System has not been booted"
    assert all(f.error.startswith(said) for f in facts)
    assert not any(f.healthy for f in facts)


def test_fewer_records_than_units_is_an_error() -> None:
    facts = parse_facts(units("a.service", "b.service"), output(parse_show_text(0)))
    assert facts[0].error


def test_restarted_since_by_invocation_then_pid() -> None:
    before = UnitFacts("u", {"InvocationID": "a" * 32, "MainPID": "10"})
    assert UnitFacts("u", {"InvocationID": "b" * 32, "MainPID": "10"}).restarted_since(before)
    assert not UnitFacts("u", {"InvocationID": "a" * 32, "MainPID": "11"}).restarted_since(before)
    assert UnitFacts("u", {"MainPID": "11"}).restarted_since(UnitFacts("u", {"MainPID": "10"}))


def test_secret_environment_values_and_summary() -> None:
    facts = UnitFacts("u", {"Environment": "A=1 SHOP_DATABASE_PASSWORD=s3cret \"API_TOKEN=a b\" PORT=80"})
    assert facts.secret_values() == ["s3cret", "a b"]
    assert "Environment" not in str(facts.summary()) and "s3cret" not in str(facts.summary())


@pytest.mark.parametrize(("line", "want"), [
    ("cannot start (SHOP_DATABASE_PASSWORD=hunter2)", "cannot start (SHOP_DATABASE_PASSWORD=*****)"),
    ("token: abc123 user=bob", "token: ***** user=bob"),
    ("password = hunter2, retry", "password = *****, retry"),
    ("Started shop.service - shop (lab).", "Started shop.service - shop (lab)."),
])  # fmt: skip
def test_mask_line(line: str, want: str) -> None:
    assert mask_line(line) == want


def test_commands_quote_every_unit_and_url() -> None:
    command = facts_command([UnitSettings("a@x.service", "http://127.0.0.1:1/h?a=1&b=2")])
    assert "-- a@x.service" in command and "'http://127.0.0.1:1/h?a=1&b=2'" in command
    assert journal_command("a\\x2db.service") == (
        "journalctl --no-pager -o short-iso -n 50 -u 'a\\x2db.service' 2>&1"
    )


def host(**host_vars: object) -> Host:
    return Host("h1", dict(host_vars), source="inv.yml")


def test_unit_settings_from_the_inventory() -> None:
    h = host(health_timeout=30, systemd_units={
        "ringo-api": {"health_url": "http://127.0.0.1:8000/health", "escalate": "restart"},
        "postgresql@15-main.service": None,
        "worker": {"health_timeout": 5},
    })  # fmt: skip
    api = UnitSettings.of(h, "ringo-api.service")
    assert (api.health_url, api.escalate) == ("http://127.0.0.1:8000/health", ("restart",))
    assert api.health_timeout == 30
    assert UnitSettings.of(h, "worker.service").health_timeout == 5
    assert UnitSettings.of(h, "postgresql@15-main.service").escalate == ("restart", "stop-start")
    assert UnitSettings.of(h, "unlisted.service").health_url is None
    assert UnitSettings.of(host(systemd_units=["a", "b.service"]), "a.service").unit == "a.service"


@pytest.mark.parametrize("bad", [
    {"a": {"escalate": []}}, {"a": {"escalate": ["restart", "restart"]}}, {"a": {"escalate": ["reboot"]}},
    {"a": {"health_url": "ftp://x/"}}, {"a": {"health_timeout": 0}}, {"a": {"other": 1}},
    {"a": "http://x/"}, {"a;b": {}}, {"a": {}, "a.service": {}}, "a", 5,
])  # fmt: skip
def test_bad_systemd_units_are_refused(bad: object) -> None:
    with pytest.raises(UsageError, match="systemd_units"):
        validate.check_vars(host(systemd_units=bad))


@pytest.mark.parametrize(("name", "full"), [
    ("ringo-api", "ringo-api.service"), ("postgresql@15-main", "postgresql@15-main.service"),
    ("a\\x2db.service", "a\\x2db.service"), ("systemd-journald.service", "systemd-journald.service"),
])  # fmt: skip
def test_unit_names(name: str, full: str) -> None:
    assert validate.check_unit(name) == full


BAD_NAMES = ["", "-x", "a b", "a;b", "a\nb", "a.socket", "a@.service", "x" * 300, "ä", "a/b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_unit_names(bad: str) -> None:
    with pytest.raises(UsageError, match="--unit"):
        validate.check_unit(bad)
