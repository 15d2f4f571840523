"""The pure decisions of ensure-healthy and set-env, table-driven; set-env's audit of --set (rollback:
test_rollback.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from remediations.docker import ensure_healthy, set_env
from remediations.facts.compose import Container, ServiceFacts
from tests import labkit
from tests.unit.test_bad_input import inventory_file


def box(name: str, state: str = "running", health: str | None = "healthy", image: str = "sha256:new"
        ) -> Container:  # fmt: skip
    return Container(f"id-{name}", name, state, "t0", health, "", image)


def service(*containers: Container, name: str = "api") -> ServiceFacts:
    return ServiceFacts(name, "v2", containers)


@pytest.mark.parametrize(
    ("facts", "action", "reason"),
    [
        (service(box("api-1")), "none", "api is healthy"),
        (service(), "start", "api has no container"),
        (service(box("api-1", "exited", None)), "start", "container api-1 is exited"),
        (service(box("api-1", "created", None)), "start", "container api-1 is created"),
        (service(box("api-1", health="starting")), "none", "still starting; left alone"),
        (service(box("api-1", health="starting"), box("api-2", health="unhealthy")), "restart", "starting"),
        (service(box("api-1", health="unhealthy")), "restart", "api-1"),
    ],
)
def test_ensure_healthy_decide(facts: ServiceFacts, action: str, reason: str) -> None:
    plan = ensure_healthy.decide(facts)
    assert (plan.service, plan.action) == ("api", action) and reason in plan.reason, plan


P = "/srv/shop/.env"


@pytest.mark.parametrize(
    ("changed", "stale", "healthy", "sharing", "expected"),
    [
        (False, [], True, [], None),
        (False, [], True, ["worker"], None),
        (False, [], False, [], f"{P} already has it, but api is not healthy (why): recreate api"),
        (False, ["B", "A", "A"], True, [],
         f"{P} already has it, but api still runs the old value(s) of A, B: recreate api"),
        (True, [], True, [], f"A: '0' → '1' in {P}; recreate api"),
        (True, ["A"], False, ["worker"], f"A: '0' → '1' in {P}; recreate api (worker also read(s) this file "
                                         "and keep the old values until recreated)"),
        (False, ["A"], True, ["worker"], f"{P} already has it, but api still runs the old value(s) of A: "
                                         "recreate api"),
    ],
)  # fmt: skip
def test_set_env_decide_action(changed: bool, stale: list[str], healthy: bool, sharing: list[str],
                               expected: str | None) -> None:  # fmt: skip
    got = set_env.decide_action(P, "api", "A: '0' → '1'", changed, stale, healthy, "why", sharing)
    assert got == expected


def test_set_env_audits_names_never_values() -> None:
    given = {"service": "api", "set": ["API_TOKEN=hunter2-tok", "MODE=1"], "unset": ["OLD"]}
    assert set_env.SetEnv.params.audited(given) == {
        "service": "api", "set": ["API_TOKEN=…", "MODE=…"], "unset": ["OLD"], "values_from_stdin": None,
    }  # fmt: skip
    assert set_env.SetEnv("api", ["MODE=1"]).arguments()["set"] == ["MODE=…"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("--set", "MODE=hunter2-a", "--unset", "MODE"), id="bad-input"),
        pytest.param(("--set", "MODE=hunter2-a", "--set", "OTHER=hunter2-b"), id="good-run"),
    ],
)
def test_set_env_audit_records_name_only_for_bad_input_and_good_runs(
    tmp_path: Path, audit: Path, extra: tuple[str, ...]
) -> None:
    """A good run on a local host without Docker fails at facts: its records still carry the arguments."""
    inventory = inventory_file(tmp_path, {})
    ran = labkit.inv("set-env", "--host", "local1", "--service", "api", *extra, audit=audit,
                     inventory=inventory, stdin="", timeout=60)  # fmt: skip
    records = labkit.audit_lines(audit)
    assert records, (ran.code, ran.stderr)
    for record in records:
        assert record["arguments"]["set"] in (["MODE=…"], ["MODE=…", "OTHER=…"]), record
    assert "hunter2" not in audit.read_text()
    assert ran.code == (2 if "--unset" in extra else 1), ran.stderr
