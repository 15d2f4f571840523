"""restart-api end to end on the lab: real sshd, real dockerd, real compose, the real `inv` front end."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from tests import labkit
from tests.labkit import inv

pytestmark = pytest.mark.lab

FAST = {"health_timeout": 8}


@pytest.fixture
def healthy_api(lab: Any) -> Any:
    """Both api hosts healthy before and after the test, whatever the test broke."""
    for host in ("api1", "api2"):
        labkit.repair(host)
    yield lab
    for host in ("api1", "api2"):
        labkit.repair(host)


def test_restart_changes_start_time_and_verifies_health(healthy_api: Any, audit: Path) -> None:
    before = labkit.started_at("api1")
    ran = inv("restart-api", "--host", "api1", "--json", audit=audit)
    assert ran.code == 0, ran.stderr + ran.stdout
    result = ran.host("api1")
    assert result["status"] == "changed"
    assert "restarted api; healthy after" in result["message"]
    assert labkit.started_at("api1") != before
    assert labkit.health("api1") == "healthy"
    steps = [(r["host"], r["step"], r["status"]) for r in labkit.audit_lines(audit)]
    # "started" is written before the first change (a SIGKILLed run still leaves it), the steps at the end
    assert steps == [("api1", "start", "started"), ("api1", "facts", "ok"), ("api1", "restart", "changed")]


def test_check_changes_nothing(healthy_api: Any, audit: Path) -> None:
    before = {h: labkit.started_at(h) for h in ("api1", "api2")}
    ran = inv("restart-api", "--host", "api", "--check", "--json", audit=audit)
    assert ran.code == 0, ran.stderr
    for host in ("api1", "api2"):
        assert ran.host(host)["status"] == "changed"
        assert "would restart api" in ran.host(host)["message"]
    assert {h: labkit.started_at(h) for h in ("api1", "api2")} == before


def test_if_unhealthy_quartet(healthy_api: Any, audit: Path) -> None:
    """check → changed, nothing changed; apply → changed; apply again → ok; check again → ok."""
    ok_before = labkit.started_at("api2")
    ran = inv("restart-api", "--host", "api1,api2", "--if-unhealthy", "--json", audit=audit)
    assert ran.code == 0
    assert [ran.host(h)["status"] for h in ("api1", "api2")] == ["ok", "ok"]
    assert "healthy" in ran.host("api1")["message"] and "not restarted" in ran.host("api1")["message"]

    labkit.break_until_restart("api1")
    labkit.wait_health("api1", "unhealthy")
    broken_start = labkit.started_at("api1")

    check = inv("restart-api", "--host", "api1", "--if-unhealthy", "--check", "--json", audit=audit)
    assert check.host("api1")["status"] == "changed"
    assert labkit.started_at("api1") == broken_start
    assert labkit.health("api1") == "unhealthy"

    apply = inv("restart-api", "--host", "api1", "--if-unhealthy", "--json", audit=audit)
    assert apply.code == 0, apply.stdout
    assert apply.host("api1")["status"] == "changed"
    assert labkit.started_at("api1") != broken_start
    assert labkit.health("api1") == "healthy"
    fixed_start = labkit.started_at("api1")

    again = inv("restart-api", "--host", "api1", "--if-unhealthy", "--json", audit=audit)
    assert again.host("api1")["status"] == "ok"
    recheck = inv("restart-api", "--host", "api1", "--if-unhealthy", "--check", "--json", audit=audit)
    assert recheck.host("api1")["status"] == "ok"
    assert labkit.started_at("api1") == fixed_start
    assert labkit.started_at("api2") == ok_before


def test_broken_health_escalates_to_recreate_then_fails_clearly(
    healthy_api: Any, audit: Path, tmp_path: Path
) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=FAST)
    labkit.break_persistently("api1")
    container_before = labkit.api_container("api1")["Id"]
    ran = inv("restart-api", "--host", "api1", "--json", audit=audit, inventory=inventory)
    assert ran.code == 1
    result = ran.host("api1")
    assert result["status"] == "failed"
    assert "still unhealthy after restart and recreate" in result["message"]
    assert "127.0.0.1:8080/health failed" in result["message"] or "unhealthy" in result["message"]
    steps = [s["step"] for s in result["steps"]]
    assert steps == ["facts", "restart", "recreate"]
    assert "escalating to recreate" in result["steps"][1]["message"]
    assert labkit.api_container("api1")["Id"] != container_before  # really recreated


def test_serial_rollout_stops_at_first_failure(healthy_api: Any, audit: Path, tmp_path: Path) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=FAST)
    labkit.break_persistently("api1")
    second_before = labkit.started_at("api2")
    ran = inv("restart-api", "--host", "api1,api2", "--serial", "1", "--json", audit=audit,
              inventory=inventory)
    assert ran.code == 1
    assert ran.host("api1")["status"] == "failed"
    assert ran.host("api2")["status"] == "skipped"
    assert "not started" in ran.host("api2")["message"]
    assert ran.json()["stopped_early"]
    assert labkit.started_at("api2") == second_before


def test_unreachable_host_fails_alone(healthy_api: Any, audit: Path, lab: Any) -> None:
    from lab import hosts as lab_mod

    lab_mod.stop_sshd("api2")
    try:
        ran = inv("restart-api", "--host", "api", "--check", "--json", audit=audit)
    finally:
        lab_mod.start_sshd("api2")
    assert ran.code == 1
    assert ran.host("api1")["status"] == "changed"
    failed = ran.host("api2")
    assert failed["status"] == "failed"
    assert "cannot connect to 198.18.0.12" in failed["message"]
    records = labkit.audit_lines(audit)
    assert any(r["host"] == "api2" and r["status"] == "failed" for r in records)


def _known_hosts_without(tmp_path: Path, address: str, replace_with: str | None = None) -> Path:
    from lab import hosts as lab_mod

    lines = []
    for line in lab_mod.KNOWN_HOSTS.read_text().splitlines():
        if line.split(" ", 1)[0] == address:
            if replace_with is None:
                continue
            line = f"{address} {replace_with}"
        lines.append(line)
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    return path


def _inventory_with_known_hosts(tmp_path: Path, known_hosts: Path) -> Path:
    from lab import hosts as lab_mod

    args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    del lab_mod
    return labkit.write_inventory(tmp_path / "inv.yml", all_vars={"ansible_ssh_common_args": args})


def test_unknown_host_key_refuses_that_host_only(healthy_api: Any, audit: Path, tmp_path: Path) -> None:
    known = _known_hosts_without(tmp_path, "198.18.0.12")
    inventory = _inventory_with_known_hosts(tmp_path, known)
    ran = inv("restart-api", "--host", "api", "--check", "--json", audit=audit, inventory=inventory)
    assert ran.code == 1
    assert ran.host("api1")["status"] == "changed"
    refused = ran.host("api2")
    assert refused["status"] == "failed"
    assert "is not in" in refused["message"] and "ssh-keyscan" in refused["message"]
    assert "SHA256:" in refused["message"]
    assert known.read_text().count("198.18.0.12") == 0  # never added silently
    assert any(r["host"] == "api2" and r["status"] == "failed" for r in labkit.audit_lines(audit))


def test_changed_host_key_is_refused(healthy_api: Any, audit: Path, tmp_path: Path) -> None:
    import paramiko

    impostor = paramiko.Ed25519Key.from_private_key_file(str(_make_key(tmp_path)))
    known = _known_hosts_without(tmp_path, "198.18.0.12", f"ssh-ed25519 {impostor.get_base64()}")
    inventory = _inventory_with_known_hosts(tmp_path, known)
    ran = inv("restart-api", "--host", "api2", "--check", "--json", audit=audit, inventory=inventory)
    assert ran.code == 1
    assert "CHANGED" in ran.host("api2")["message"]


def _make_key(tmp_path: Path) -> Path:
    import subprocess

    path = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_unknown_host_name_is_bad_input(lab: Any, audit: Path) -> None:
    ran = inv("restart-api", "--host", "api1,nosuchhost", audit=audit)
    assert ran.code == 2
    assert ran.stderr.strip().count("\n") == 0, ran.stderr
    assert "unknown host or group 'nosuchhost'" in ran.stderr and "lab.yml" in ran.stderr
    assert "Traceback" not in ran.stderr
    records = labkit.audit_lines(audit)
    assert len(records) == 1 and records[0]["status"] == "failed"


def test_malformed_inventory_is_bad_input(lab: Any, audit: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("all:\n  hosts:\n    api1: {ansible_host: 198.18.0.11\n")
    before = labkit.started_at("api1")
    ran = inv("restart-api", "--host", "api1", audit=audit, inventory=broken)
    assert ran.code == 2
    assert str(broken) in ran.stderr and "malformed YAML" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert labkit.audit_lines(audit)[0]["status"] == "failed"
    assert labkit.started_at("api1") == before


def test_missing_required_var_is_bad_input(lab: Any, audit: Path, tmp_path: Path) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={"api2": {"api_service": ""}})
    ran = inv("restart-api", "--host", "api", audit=audit, inventory=inventory)
    assert ran.code == 2
    assert "host api2: missing required var 'api_service'" in ran.stderr
    assert "restarted" not in ran.stdout


def test_concurrent_runs_never_restart_at_once(healthy_api: Any, tmp_path: Path) -> None:
    audits = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    results: list[labkit.Ran] = []

    def one(path: Path) -> None:
        results.append(inv("restart-api", "--host", "api1", "--json", audit=path))

    threads = [threading.Thread(target=one, args=(p,)) for p in audits]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.code for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    spans = []
    for path in audits:
        restart = [r for r in labkit.audit_lines(path) if r["step"] == "restart"]
        assert len(restart) == 1
        end = dt.datetime.fromisoformat(restart[0]["time"])
        spans.append((end - dt.timedelta(seconds=restart[0]["duration"]), end))
    spans.sort()
    assert spans[0][1] <= spans[1][0], f"restarts overlapped: {spans}"


def test_lock_wait_expires_with_a_clear_message(healthy_api: Any, tmp_path: Path) -> None:
    first: list[labkit.Ran] = []
    slow = labkit.write_inventory(tmp_path / "slow.yml", all_vars={"stop_timeout": 2})
    thread = threading.Thread(
        target=lambda: first.append(inv("restart-api", "--host", "api1", "--json",
                                        audit=tmp_path / "a.jsonl", inventory=slow))
    )
    thread.start()
    try:
        import time

        time.sleep(1.5)  # the first run holds the lock while it restarts and waits for health
        second = inv("restart-api", "--host", "api1", "--json", "--lock-wait", "0",
                     audit=tmp_path / "b.jsonl")
    finally:
        thread.join()
    assert first[0].code == 0
    assert second.code == 1
    assert "locked by another run" in second.host("api1")["message"]


def test_secrets_are_redacted_in_output_and_audit(healthy_api: Any, audit: Path, tmp_path: Path) -> None:
    secret = "lab-health-key-7f3a9c"  # noqa: S105 (a test value to search for)
    inventory = labkit.write_inventory(
        tmp_path / "inv.yml",
        all_vars={
            "health_api_key": secret,
            "api_health_url": f"http://127.0.0.1:8080/missing?key={secret}",
            **FAST,
        },
    )
    ran = inv("restart-api", "--host", "api1", "--check", audit=audit, inventory=inventory)
    assert ran.code == 0
    assert "*****" in ran.stdout  # the failing URL is reported, its key masked
    assert secret not in ran.stdout + ran.stderr
    assert secret not in audit.read_text()
    assert "*****" in audit.read_text()
