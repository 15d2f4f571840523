"""Faults injected on the lab while a changing run is in progress: the connection cut, the link
partitioned, the controller killed, the run told to stop. Each test reproduces a way an earlier
version made an incident worse (reconnected without its lock, held a dead run's lock for hours,
changed the host after an outage, ignored Ctrl-C), with the real `inv`, sshd, dockerd and compose.

The partition tests wait for the lock's heartbeat bounds (tens of seconds): they are marked
`partition` (see the README's "Failure behaviour").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from remediations.core import lock
from tests import labkit

pytestmark = pytest.mark.lab

LOCK_HOLDER = "/run/lock/remediations.lock.holder"
# A persistently broken api: restart-api restarts it, waits `health_timeout`, then would recreate it.
SLOW = {"health_timeout": 20}


@pytest.fixture
def broken_api(lab: Any) -> Iterator[Any]:
    """api1's health broken on the host (restart and recreate cannot help); repaired afterwards,
    whatever the test cut or killed."""
    labkit.repair("api1")
    labkit.break_persistently("api1")
    yield lab
    lab_mod.heal_link("api1")
    _drop_flow("api1", None)
    lab_mod.kill_ssh_sessions("api1")  # a session a failed test left holding the lock
    labkit.repair("api1")


def start_inv(*args: str, audit: Path, inventory: Path) -> subprocess.Popen[str]:
    """`inv ARGS` in the background, as an on-call engineer's terminal would run it."""
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args, "--inventory", str(inventory)],
        cwd=labkit.ROOT, env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_until(what: str, probe: Callable[[], bool], timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {what}: {out}{err}")
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.2)


def restarted(since: str) -> Callable[[], bool]:
    """True once api1's container has started anew (the run's restart was issued and done)."""
    return lambda: labkit.started_at("api1") != since


def lock_holder(host: str) -> str:
    done = lab_mod.exec_on(host, ["cat", LOCK_HOLDER], check=False)
    return done.stdout.decode().strip()


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _drop_flow(host: str, port: int | None) -> None:
    """In the host's own firewall, drop every packet of the controller's connection from `port`
    (None: remove such rules): the host never hears of the controller again, not even its FIN."""
    if port is not None:
        lab_mod.exec_on(host, ["iptables", "-I", "INPUT", *_FLOW_IN, str(port), "-j", "DROP"])
        lab_mod.exec_on(host, ["iptables", "-I", "OUTPUT", *_FLOW_OUT, str(port), "-j", "DROP"])
        return
    listing = lab_mod.exec_on(host, ["iptables", "-S"]).stdout.decode()
    for line in listing.splitlines():
        if _FLOW_RULE.match(line):
            lab_mod.exec_on(host, ["iptables", "-D", *line.split()[1:]], check=False)


_FLOW_IN = ["-p", "tcp", "-m", "tcp", "--dport", "22", "--sport"]
_FLOW_OUT = ["-p", "tcp", "-m", "tcp", "--sport", "22", "--dport"]
_FLOW_RULE = re.compile(
    r"^-A (INPUT -p tcp -m tcp --dport 22 --sport|OUTPUT -p tcp -m tcp --sport 22 --dport) \d+ -j DROP$"
)


def controller_port(pid: int, address: str) -> int:
    """The local port of `pid`'s SSH connection to `address`."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", "dst", f"{address}:22"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ports = [int(m.group(1)) for line in listing.splitlines() if f"pid={pid}," in line
             for m in [re.search(r":(\d+)\s+\S+:22\b", line)] if m]  # fmt: skip
    assert len(ports) == 1, f"expected one connection of pid {pid} to {address}:22, got {listing!r}"
    return ports[0]


def steps_of(audit: Path, host: str) -> list[dict[str, Any]]:
    return [r for r in labkit.audit_lines(audit) if r["host"] == host]


# ---- 1. a lost connection is never silently reopened ---------------------------------------


def test_lost_connection_fails_the_host_instead_of_going_on_unlocked(
    broken_api: Any, audit: Path, tmp_path: Path
) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=SLOW)
    container = labkit.api_container("api1")["Id"]
    before = labkit.started_at("api1")
    proc = start_inv("restart-api", "--host", "api1", "--json", audit=audit, inventory=inventory)
    try:
        wait_until("the restart", restarted(before), 60, proc)
        assert lab_mod.kill_ssh_sessions("api1") >= 1  # the run's connection (and its lock) die now
        code, out, err = finish(proc, 120)
    finally:
        proc.kill()
    assert code == 1, out + err
    result = labkit.Ran(code, out, err).host("api1")
    assert result["status"] == "failed"
    assert "connection lost after facts" in result["message"], result["message"]
    assert "during restart; the host may be half-changed" in result["message"]
    # Not reconnected: no escalation to a recreate ran after the connection died.
    assert labkit.api_container("api1")["Id"] == container
    assert [s["step"] for s in result["steps"]] == ["facts", "restart"]
    assert lock_holder("api1") == ""  # the lock went with the connection; nothing holds it


# ---- 7. signals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_after_the_current_step_and_leaves_a_record(
    broken_api: Any, audit: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=SLOW)
    container = labkit.api_container("api1")["Id"]
    before = labkit.started_at("api1")
    proc = start_inv("restart-api", "--host", "api1", audit=audit, inventory=inventory)
    try:
        wait_until("the restart", restarted(before), 60, proc)
        proc.send_signal(sig)
        sent = time.monotonic()
        exit_code, out, err = finish(proc, 60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert exit_code == code, out + err
    assert took < 10, f"the run went on for {took:.0f}s after {sig.name}"
    assert "Traceback" not in err
    assert f"interrupted by {sig.name}" in out
    assert labkit.api_container("api1")["Id"] == container  # no recreate after the signal
    records = steps_of(audit, "api1")
    assert records[0]["step"] == "start" and records[0]["status"] == "started"
    last = records[-1]
    assert last["status"] == "failed" and f"interrupted by {sig.name} after facts" in last["message"]
    assert lock_holder("api1") == ""  # released


def test_a_killed_run_leaves_a_started_record(broken_api: Any, audit: Path, tmp_path: Path) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=SLOW)
    before = labkit.started_at("api1")
    proc = start_inv("restart-api", "--host", "api1", audit=audit, inventory=inventory)
    try:
        wait_until("the restart", restarted(before), 60, proc)
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    [record] = steps_of(audit, "api1")
    assert (record["step"], record["status"]) == ("start", "started")
    assert "restart-api" in record["message"] and "run=" in record["message"]


# ---- 4. a dead controller's lock is released within a bound ----------------------------------


@pytest.mark.partition
def test_a_controller_that_vanished_releases_its_lock_within_the_bound(
    broken_api: Any, audit: Path, tmp_path: Path
) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars={"health_timeout": 120})
    before = labkit.started_at("api1")
    first = start_inv("restart-api", "--host", "api1", audit=audit, inventory=inventory)
    try:
        wait_until("the restart", restarted(before), 60, first)
        assert "run=" in lock_holder("api1")
        # The host stops hearing the controller's connection (not even the FIN a dying process's
        # kernel sends), then the controller dies: only the lock's own heartbeat can tell the host.
        _drop_flow("api1", controller_port(first.pid, "198.18.0.11"))
        first.kill()
        first.wait(10)
        killed = time.monotonic()
    finally:
        first.kill()
    labkit.repair("api1")  # the next run's restart can succeed
    second = labkit.inv("restart-api", "--host", "api1", "--lock-wait", "60", "--json", audit=audit,
                        inventory=inventory, timeout=180)  # fmt: skip
    waited = time.monotonic() - killed
    assert second.code == 0, second.stdout + second.stderr
    assert second.host("api1")["status"] == "changed"
    # The host released the dead run's lock within the documented bound (plus the second run's
    # own restart, a few seconds): TCP alone would have kept it for hours.
    assert waited < lock.BEAT_RELEASE + 25, f"the lock was released only after {waited:.0f}s"


# ---- 5. a partition fails the host; nothing is sent when the link comes back ----------------


@pytest.mark.partition
def test_a_partition_fails_the_host_and_nothing_is_changed_after_it_heals(
    broken_api: Any, audit: Path, tmp_path: Path
) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars={"health_timeout": 10})
    container = labkit.api_container("api1")["Id"]
    before = labkit.started_at("api1")
    proc = start_inv("restart-api", "--host", "api1", "--json", audit=audit, inventory=inventory)
    try:
        wait_until("the restart", restarted(before), 60, proc)
        lab_mod.cut_link("api1")
        cut = time.monotonic()
        try:
            code, out, err = finish(proc, lock.BEAT_LOST + 30)
            ended = time.monotonic() - cut
        finally:
            time.sleep(max(0.0, 25 - (time.monotonic() - cut)))  # longer than health_timeout
            lab_mod.heal_link("api1")
    finally:
        proc.kill()
    assert code == 1, out + err
    assert ended < lock.BEAT_LOST + 15, f"the run hung {ended:.0f}s into the partition"
    result = labkit.Ran(code, out, err).host("api1")
    assert "connection lost after facts" in result["message"] and "half-changed" in result["message"]
    time.sleep(5)  # whatever a run might still send after the heal would have arrived by now
    assert labkit.api_container("api1")["Id"] == container  # never recreated after the heal


@pytest.mark.partition
def test_a_partition_during_a_big_write_fails_within_the_bound(
    broken_api: Any, audit: Path, tmp_path: Path
) -> None:
    """The link goes while set-env streams a 50 MB file: the stream's send blocks for as long as TCP
    does, and it held paramiko's write lock, so the heartbeat could not send either; the run went
    on believing it held a lock the host had released. The watch of the answers must not block."""
    labkit.repair("api1")
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=SLOW)
    before = lab_mod.exec_on("api1", ["cat", "/srv/shop/.env"]).stdout
    value = tmp_path / "value"
    value.write_bytes(b"FAULT_BIG=" + b"x" * 50_000_000 + b"\n")
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    with value.open("rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "set-env", "--host", "api1", "--service", "api",
             "--values-from-stdin", "--inventory", str(inventory)],
            cwd=labkit.ROOT, env=environ, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    temp = "/srv/shop/.env.remediations-tmp"
    try:
        wait_until("the stream", lambda: lab_mod.exec_on("api1", ["test", "-s", temp], check=False)
                   .returncode == 0, 60, proc)  # fmt: skip
        lab_mod.cut_link("api1")
        cut = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=lock.BEAT_LOST + 30)
            ended = time.monotonic() - cut
        finally:
            lab_mod.heal_link("api1")
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert ended < lock.BEAT_LOST + lock.BEAT_INTERVAL + 8, f"the run went on {ended:.0f}s into the partition"
    assert "connection lost" in out, out
    assert lab_mod.exec_on("api1", ["cat", "/srv/shop/.env"]).stdout == before


def test_a_set_env_cut_off_mid_recreate_is_finished_by_the_rerun(
    lab: Any, audit: Path, tmp_path: Path
) -> None:
    """A run killed between compose removing the old container and starting the new one leaves the
    env file changed and the api created but not running. The re-run must not say "ok" (it did:
    the file and the container's env both had the value) but recreate it and wait until healthy."""
    labkit.reset_shop("api1")
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=SLOW)
    try:
        first = labkit.inv("set-env", "--host", "api1", "--service", "api", "--set", "FAULT_K=1",
                           audit=audit, inventory=inventory)  # fmt: skip
        assert first.code == 0, first.stdout + first.stderr
        # What the cut-off run left: the new container created, never started.
        lab_mod.exec_on("api1", [*labkit.COMPOSE, "up", "--no-start", "--force-recreate", "--no-deps", "api"])
        assert labkit.api_container("api1")["State"]["Status"] == "created"
        again = labkit.inv("set-env", "--host", "api1", "--service", "api", "--set", "FAULT_K=1", "--json",
                           audit=audit, inventory=inventory)  # fmt: skip
        assert again.code == 0, again.stdout + again.stderr
        result = again.host("api1")
        assert result["status"] == "changed", result
        assert "is not healthy" in result["steps"][1]["message"] or "recreated" in result["message"], result
        assert labkit.health("api1") == "healthy"
        third = labkit.inv("set-env", "--host", "api1", "--service", "api", "--set", "FAULT_K=1", "--json",
                           audit=audit, inventory=inventory)  # fmt: skip
        assert third.host("api1")["status"] == "ok"
    finally:
        labkit.reset_shop("api1")
