"""The lab's sshd-only fleet at 50 hosts: brought up beside the other lab hosts without disturbing
them, kept by a plain `lab up`, and block-ip over all of it (change, then the no-op re-run) with
every host's result in --json and the block in every host's loaded ufw chain. Torn down at the end.

Marked `fleet` (about two minutes: fifty ufw runs on two cores); the 1,000-host figures come from
scripts/bench_fleet.py, not from a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import hosts as lab_mod
from lab.base import HostSpec
from lab.control import fleet_status
from lab.ssh import _sshd_listener
from tests import labkit

pytestmark = [pytest.mark.lab, pytest.mark.fleet]

SIZE = 50
BLOCKED = "203.0.113.78"


@pytest.fixture(scope="module")
def fleet(lab: lab_mod.LabStatus) -> Iterator[list[HostSpec]]:
    lab_mod.fleet(0)  # fresh hosts: a fleet a benchmark left keeps its hosts' firewall state
    yield lab_mod.fleet(SIZE)
    lab_mod.fleet(0)
    assert fleet_status() == (0, 0)


def listeners(hosts: list[HostSpec]) -> dict[str, int | None]:
    return {h.name: _sshd_listener(h) for h in hosts}


def test_the_fleet_comes_up_beside_the_lab_and_a_plain_up_keeps_it(fleet: list[HostSpec]) -> None:
    assert [h.name for h in fleet] == [f"fleet{i:04d}" for i in range(1, SIZE + 1)]
    assert all(h.address.startswith("198.18.") for h in fleet)
    assert fleet_status() == (SIZE, SIZE)
    known = lab_mod.KNOWN_HOSTS.read_text()
    assert all(f"{h.address} ssh-ed25519 " in known for h in fleet)
    assert "198.18.0.11 ssh-ed25519 " in known  # the other hosts' keys stay
    before = listeners(fleet)
    status = lab_mod.up()  # what a test session does: it must not tear the fleet down, nor restart it
    assert status.up
    assert fleet_status() == (SIZE, SIZE)
    assert listeners(fleet) == before
    known = lab_mod.KNOWN_HOSTS.read_text()
    assert all(f"{h.address} ssh-ed25519 " in known for h in fleet)  # up rewrote it with the fleet's keys
    assert lab_mod.exec_on(fleet[0].name, ["ufw", "status"]).stdout.decode().startswith("Status: inactive")


def test_block_ip_over_the_fleet_keeps_every_result(fleet: list[HostSpec], audit: Path) -> None:
    names = {h.name for h in fleet}
    args = ("block-ip", "--host", "fleet", "--ip", BLOCKED, "--enable", "--json", "--parallel", "25")
    first = labkit.inv(*args, audit=audit, inventory=lab_mod.FLEET_INVENTORY, timeout=600)
    assert first.code == 0, first.stdout[-2000:] + first.stderr[-2000:]
    results = {h["host"]: h for h in first.json()["hosts"]}
    assert results.keys() == names and len(first.json()["hosts"]) == SIZE
    assert {h["status"] for h in results.values()} == {"changed"}

    again = labkit.inv(*args, audit=audit, inventory=lab_mod.FLEET_INVENTORY, timeout=600)
    assert again.code == 0, again.stdout[-2000:]
    results = {h["host"]: h for h in again.json()["hosts"]}
    assert results.keys() == names
    assert {h["status"] for h in results.values()} == {"ok"}, {h["message"] for h in results.values()}

    def loaded(host: HostSpec) -> bool:
        rules = lab_mod.exec_on(host.name, ["iptables", "-w", "10", "-S", "ufw-user-input"]).stdout.decode()
        return f"-s {BLOCKED}/32" in rules and "-j DROP" in rules

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(loaded, fleet))
