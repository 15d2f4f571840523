"""restart-service's and ensure-healthy's decisions about a unit, from its facts (pure)."""

from __future__ import annotations

import pytest

from remediations.actions import systemd_unit
from remediations.actions.systemd_unit import gave_up, step_command
from remediations.facts.systemd import UnitFacts
from remediations.systemd.restart_service import decide

OLD, NEW = "a" * 32, "b" * 32


def unit(active: str = "active", sub: str = "running", invocation: str = OLD, url: int | None = None,
         load: str = "loaded") -> UnitFacts:  # fmt: skip
    props = {"LoadState": load, "ActiveState": active, "SubState": sub, "InvocationID": invocation,
             "MainPID": "42" if active == "active" else "0"}  # fmt: skip
    return UnitFacts("shop.service", props, None if url is None else (url, "answer"))


@pytest.mark.parametrize(("facts", "if_unhealthy", "action"), [
    (unit(), False, "restart"),
    (unit(), True, "none"),
    (unit(url=22), True, "restart"),
    (unit("failed", "failed"), True, "restart"),
    (unit(load="not-found", active="inactive", sub="dead"), False, "none"),
])  # fmt: skip
def test_restart_service_decide(facts: UnitFacts, if_unhealthy: bool, action: str) -> None:
    assert decide(facts, if_unhealthy)[0] == action


@pytest.mark.parametrize(("facts", "action"), [
    (unit(), "none"),
    (unit("activating", "start"), "none"),  # still starting: left alone
    (unit("inactive", "dead"), "start"),
    (unit("failed", "failed"), "start"),
    (unit("activating", "auto-restart"), "restart"),  # crashed, systemd waits to start it again
    (unit(url=7), "restart"),  # active, but its URL does not answer
])  # fmt: skip
def test_ensure_healthy_decide(facts: UnitFacts, action: str) -> None:
    assert systemd_unit.decide(facts)[0] == action


@pytest.mark.parametrize(("now", "stop"), [
    (unit(invocation=OLD, active="failed", sub="failed"), False),  # not started anew yet
    (unit(invocation=NEW, active="failed", sub="failed"), True),
    (unit(invocation=NEW, active="activating", sub="auto-restart"), True),
    (unit(invocation=NEW, active="inactive", sub="dead"), True),
    (unit(invocation=NEW, active="activating", sub="start"), False),  # starting: wait on
    (unit(invocation=NEW), False),
])  # fmt: skip
def test_waiting_gives_up_on_a_unit_that_started_and_failed(now: UnitFacts, stop: bool) -> None:
    assert gave_up(now, unit(invocation=OLD)) is stop


def test_step_commands_quote_the_unit() -> None:
    assert step_command("restart", "a\\x2db.service") == "systemctl restart -- 'a\\x2db.service'"
    assert step_command("stop-start", "shop.service") == (
        "systemctl stop -- shop.service; systemctl reset-failed -- shop.service 2>/dev/null; "
        "systemctl start -- shop.service"
    )
