"""restart-service, ensure-healthy and health on a real systemd: the lab's svc1, a Debian 12 tree booted
by systemd-nspawn with systemd as its PID 1 (lab/systemd.py), reached over SSH as any host.

What each test reads back comes from svc1's own systemd (`systemctl show` inside it, through nsenter),
not from the tool's output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import hosts as lab_mod
from lab import systemd as lab_systemd
from tests.labkit import ROOT, Ran, audit_lines, inv
from tests.quartet import quartet, statuses

pytestmark = [pytest.mark.lab, pytest.mark.systemd]

INVENTORY = ROOT / "inventories" / "lab-systemd.yml"
UNIT = lab_systemd.UNIT
DROPIN = f"/run/systemd/system/{UNIT}.d"  # a test's drop-in (runtime: gone at the next boot anyway)
SECRET = "lab-db-secret-4711"  # noqa: S105 - the unit's SHOP_DATABASE_PASSWORD (lab/assets/systemd)


def show(unit: str = UNIT) -> dict[str, str]:
    """`systemctl show` of the unit, read inside svc1."""
    done = lab_systemd.exec_in(["systemctl", "show", "-p", "ActiveState,SubState,MainPID,InvocationID", unit])
    return dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)


def on_svc1(script: str) -> None:
    lab_systemd.exec_in(["sh", "-c", script])


def answers() -> bool:
    done = lab_systemd.exec_in(["curl", "-fsS", "-m", "3", lab_systemd.HEALTH_URL], check=False)
    return done.returncode == 0 and done.stdout == b"ok\n"


def run(*args: str, audit: Path, inventory: Path = INVENTORY) -> Ran:
    return inv(*args, audit=audit, inventory=inventory, timeout=120)


def unit_check(ran: Ran) -> dict[str, object]:
    """health's check of the unit, from --json."""
    for step in ran.host("svc1")["steps"]:
        check = step.get("data", {}).get("check")
        if check and check["name"] == f"unit {UNIT}":
            return check  # type: ignore[no-any-return]
    raise AssertionError(f"no unit check in {ran.stdout}")


@pytest.fixture(scope="module")
def svc1() -> Iterator[None]:
    """svc1 booted (a few seconds; the tree is made by debootstrap once, then kept)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab_mod.systemd_host()
    yield


@pytest.fixture
def healthy(svc1: None) -> Iterator[None]:
    """The unit running and healthy before and after each test."""
    reset = (f"rm -rf /etc/shop/fail-start {DROPIN}; systemctl daemon-reload; systemctl reset-failed; "
             f"systemctl restart {UNIT}")  # fmt: skip
    on_svc1(reset)
    assert show()["ActiveState"] == "active"
    yield
    on_svc1(reset)


def test_svc1_runs_systemd_as_pid_1(svc1: None) -> None:
    comm = lab_systemd.exec_in(["cat", "/proc/1/comm"]).stdout.decode().strip()
    state = lab_systemd.exec_in(["systemctl", "is-system-running"], check=False).stdout.decode().strip()
    assert (comm, state) == ("systemd", "running")


def test_restart_changes_main_pid_and_ends_healthy(healthy: None, audit: Path) -> None:
    before = show()
    args = ("restart-service", "--host", "svc1", "--unit", "shop-health", "--json")
    check = run(*args, "--check", audit=audit)
    assert check.code == 0 and statuses(check) == {"svc1": "changed"}, check.stdout + check.stderr
    assert "would restart shop-health.service" in check.stdout
    assert show() == before, "--check changed the unit"

    ran = run(*args, audit=audit)
    assert ran.code == 0 and statuses(ran) == {"svc1": "changed"}, ran.stdout + ran.stderr
    after = show()
    assert after["MainPID"] != before["MainPID"] and after["InvocationID"] != before["InvocationID"]
    assert (after["ActiveState"], after["SubState"]) == ("active", "running") and answers()
    step = next(s for s in ran.host("svc1")["steps"] if s["step"] == "restart")
    assert f"MainPID {before['MainPID']} → {after['MainPID']}" in step["message"]


def test_restart_waits_for_the_host_lock(healthy: None, audit: Path) -> None:
    """Another run holding svc1's lock (the file restart-api locks): refused after --lock-wait, untouched."""
    before = show()
    on_svc1("flock /run/lock/remediations.lock sleep 6 </dev/null >/dev/null 2>&1 &")
    time.sleep(0.5)
    ran = run("restart-service", "--host", "svc1", "--unit", "shop-health", "--lock-wait", "1", audit=audit)
    assert ran.code == 1 and "host is locked by another run" in ran.stdout, ran.stdout + ran.stderr
    assert show() == before


def test_ensure_healthy_quartet_and_health(healthy: None, audit: Path) -> None:
    """A stopped unit: check shows the start and changes nothing, apply starts it, a re-run on the
    healthy unit is ok and touches nothing (same MainPID), check again ok; health sees it red, then green."""
    on_svc1(f"systemctl stop {UNIT}")
    red = run("health", "--host", "svc1", "--json", audit=audit)
    assert red.code == 1, red.stdout + red.stderr
    assert (unit_check(red)["colour"], unit_check(red)["value"]) == ("red", "inactive/dead")

    def state() -> tuple[str, str]:
        now = show()
        return now["ActiveState"], now["MainPID"]

    four = quartet("ensure-healthy", "--host", "svc1", hosts=["svc1"], audit=audit, state=state,
                   inventory=INVENTORY)  # fmt: skip
    assert state()[0] == "active" and answers()
    assert "started shop-health.service" in four.apply.stdout
    green = run("health", "--host", "svc1", "--json", audit=audit)
    assert green.code == 0 and unit_check(green)["colour"] == "green", green.stdout


def test_a_unit_that_fails_to_start_fails_with_its_journal_masked(healthy: None, audit: Path) -> None:
    on_svc1("touch /etc/shop/fail-start")
    ran = run("restart-service", "--host", "svc1", "--unit", "shop-health.service", "--json", audit=audit)
    assert ran.code == 1 and statuses(ran) == {"svc1": "failed"}, ran.stdout + ran.stderr
    steps = {s["step"]: s for s in ran.host("svc1")["steps"]}
    assert steps["restart"]["status"] == "changed"
    assert "escalating to stop-start" in steps["restart"]["message"]
    failed = steps["stop-start"]
    assert failed["status"] == "failed"
    assert "not healthy after restart and stop-start" in failed["message"]
    journal = failed["data"]["journal"]
    assert 0 < len(journal) <= 50
    said = "cannot start: database refused login (SHOP_DATABASE_PASSWORD=*****)"
    assert any(said in line for line in journal)
    everything = ran.stdout + ran.stderr + json.dumps(audit_lines(audit))
    assert SECRET not in everything
    assert show()["ActiveState"] != "active"


def test_stop_start_gets_past_the_start_limit_a_restart_cannot(healthy: None, audit: Path) -> None:
    """systemd refuses a start after StartLimitBurst starts in StartLimitIntervalSec ("start request
    repeated too quickly"): restart fails at once (not waited on), stop-start's reset-failed clears it."""
    on_svc1(f"mkdir -p {DROPIN} && printf '[Unit]\\nStartLimitIntervalSec=120\\nStartLimitBurst=2\\n' "
            f"> {DROPIN}/limit.conf && systemctl daemon-reload; "
            f"for i in 1 2 3 4; do systemctl restart {UNIT} 2>/dev/null || break; done")  # fmt: skip
    limited = lab_systemd.exec_in(["systemctl", "show", "-p", "Result", "--value", UNIT]).stdout
    assert limited.decode().strip() == "start-limit-hit"
    started = time.monotonic()
    ran = run("restart-service", "--host", "svc1", "--unit", "shop-health", "--json", audit=audit)
    took = time.monotonic() - started
    assert ran.code == 0 and statuses(ran) == {"svc1": "changed"}, ran.stdout + ran.stderr
    steps = {s["step"]: s for s in ran.host("svc1")["steps"]}
    assert "systemctl exit 1" in steps["restart"]["message"]
    assert "escalating to stop-start" in steps["restart"]["message"]
    assert steps["stop-start"]["status"] == "changed" and "healthy after" in steps["stop-start"]["message"]
    assert show()["ActiveState"] == "active" and answers()
    assert took < 10, f"the refused restart was waited on ({took:.1f}s; health_timeout is 10 s)"


def test_bad_unit_names_run_nothing(healthy: None, audit: Path) -> None:
    before = show()
    for hostile in ("shop-health; systemctl stop shop-health", "$(systemctl stop shop-health)",
                    "shop-health\nsystemctl stop shop-health", "x" * 100_000, "--no-block"):  # fmt: skip
        ran = run("restart-service", "--host", "svc1", "--unit", hostile, audit=audit)
        assert ran.code == 2 and ran.stdout == "", ran.stdout + ran.stderr[-500:]
        lines = ran.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --unit ") and len(lines[0]) < 400
    assert show() == before
    assert {r["step"] for r in audit_lines(audit)} == {"arguments"}
