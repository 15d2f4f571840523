"""The shipped inventories/prod.example.yml connects through its jump host.

A copy of the example with only its values rewritten for the lab (addresses, user, key, the
known_hosts file, the jump host's address; no sudo on lab hosts; the lab's compose project): the
`ansible_ssh_common_args` folded scalar keeps its exact shape, a ProxyJump followed by another -o.
Lab host dbrestore is the bastion; api1, api2 and db1 are reached through it. Host keys are checked
for the bastion and for the target: a wrong known_hosts line for either fails in one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lab.base import KNOWN_HOSTS, SSH_KEY, lab_hosts
from remediations.core.connection import connect
from remediations.core.errors import HostKeyRefused
from remediations.core.inventory import load
from tests import labkit
from tests.labkit import inv

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "inventories" / "prod.example.yml"
ADDRESS = {spec.name: spec.address for spec in lab_hosts()}
BASTION = ADDRESS["dbrestore"]


def lab_copy(tmp_path: Path, known_hosts: Path = KNOWN_HOSTS) -> Path:
    """prod.example.yml with its values pointed at the lab; every rewritten value must be there."""
    text = EXAMPLE.read_text()
    for old, new in [
        ("ansible_user: deploy", "ansible_user: root"),
        ("ansible_ssh_private_key_file: ~/.ssh/id_ed25519", f"ansible_ssh_private_key_file: {SSH_KEY}"),
        ("-o ProxyJump=deploy@bastion.example.com", f"-o ProxyJump=root@{BASTION}"),
        ("-o UserKnownHostsFile=~/.ssh/known_hosts_prod", f"-o UserKnownHostsFile={known_hosts}"),
        ("ansible_become: true ", "ansible_become: false"),  # the lab hosts have no sudo
        ("api-1.example.com", ADDRESS["api1"]),
        ("api-2.example.com", ADDRESS["api2"]),
        ("db-1.example.com", ADDRESS["db1"]),
        ("ansible_port: 2222", "ansible_port: 22"),
        ("staging-1.example.com", ADDRESS["api2"]),
        ("compose_project_dir: /srv/app", "compose_project_dir: /srv/shop"),
        ("compose_project_name: app", "compose_project_name: shop"),
        ("compose_files: [compose.yaml, compose.prod.yaml]", "compose_files: [compose.yaml]"),
        ("api_health_url: http://127.0.0.1:8000/health", "api_health_url: http://127.0.0.1:8080/health"),
        ("audit_log: /var/log/remediations/audit.jsonl", f"audit_log: {tmp_path / 'audit.jsonl'}"),
    ]:
        assert old in text, f"{EXAMPLE} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    # the shape of the bug report: a folded scalar, the jump host, then another option
    assert re.search(
        rf"ansible_ssh_common_args: >-\n +-o ProxyJump=root@{re.escape(BASTION)}\n"
        rf" +-o UserKnownHostsFile={re.escape(str(known_hosts))}\n",
        text,
    ), text
    path = tmp_path / "prod.lab.yml"
    path.write_text(text)
    return path


def known_hosts_with(tmp_path: Path, address: str, line: str | None) -> Path:
    """The lab's known_hosts with `address`'s line replaced by `line` (None: removed)."""
    lines = [
        (line if line is not None else "") if entry.split(" ", 1)[0] == address else entry
        for entry in KNOWN_HOSTS.read_text().splitlines()
    ]
    path = tmp_path / f"known_hosts.{address}"
    path.write_text("".join(f"{entry}\n" for entry in lines if entry))
    return path


def key_of(address: str) -> str:
    """The key part (type and base64) of `address`'s known_hosts line."""
    for entry in KNOWN_HOSTS.read_text().splitlines():
        host, _, key = entry.partition(" ")
        if host == address:
            return key
    raise AssertionError(f"{address} is not in {KNOWN_HOSTS}")


def test_example_connects_through_its_jump_host(lab: Any, tmp_path: Path) -> None:
    """Each SSH host of the example is reached from the bastion: its sshd sees the bastion's
    address as the client."""
    inventory = load(lab_copy(tmp_path))
    for name in ("api-1", "api-2", "db-1"):
        remote = connect(inventory.hosts[name])
        gateway = remote.connection.gateway
        try:
            done = remote.run('printf "%s\\n" "$SSH_CLIENT"; hostname -I 2>/dev/null || hostname -i')
        finally:
            remote.close()
        assert not gateway.is_connected  # the bastion's connection is closed with the target's
        assert done.ok, done
        client, addresses = done.stdout.splitlines()[:2]
        assert client.split()[0] == BASTION, done.stdout
        assert inventory.hosts[name].address in addresses.split(), done.stdout


def test_read_only_task_runs_through_the_jump_host(lab: Any, tmp_path: Path, audit: Path) -> None:
    for host in ("api1", "api2"):
        labkit.repair(host)
    ran = inv("restart-api", "--check", "--host", "api", "--json",
              audit=audit, inventory=lab_copy(tmp_path))  # fmt: skip
    assert ran.code == 0, (ran.stdout, ran.stderr)
    for name in ("api-1", "api-2"):  # facts gathered on the host, through the bastion
        result = ran.host(name)
        assert result["status"] == "changed", ran.stdout  # --check: what would be done
        decide = [s for s in result["steps"] if s["step"] == "decide"]
        assert decide and decide[0]["message"].startswith("would restart api"), ran.stdout


@pytest.mark.parametrize("which", ["bastion", "target"])
def test_a_changed_host_key_fails_in_one_line(lab: Any, tmp_path: Path, which: str) -> None:
    address = BASTION if which == "bastion" else ADDRESS["api1"]
    other = ADDRESS["api2"]  # a real key, but another host's
    known_hosts = known_hosts_with(tmp_path, address, f"{address} {key_of(other)}")
    host = load(lab_copy(tmp_path, known_hosts)).hosts["api-1"]
    with pytest.raises(HostKeyRefused) as info:
        connect(host)
    message = str(info.value)
    assert "\n" not in message
    assert f"host key of {address} CHANGED" in message, message


@pytest.mark.parametrize("which", ["bastion", "target"])
def test_an_unknown_host_key_fails_in_one_line(lab: Any, tmp_path: Path, which: str, audit: Path) -> None:
    address = BASTION if which == "bastion" else ADDRESS["api1"]
    known_hosts = known_hosts_with(tmp_path, address, None)
    ran = inv("restart-api", "--check", "--host", "api-1", audit=audit,
              inventory=lab_copy(tmp_path, known_hosts))  # fmt: skip
    assert ran.code == 1, (ran.stdout, ran.stderr)
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if f"of {address} is not in" in line]
    assert len(lines) == 1, (ran.stdout, ran.stderr)
    assert f"ssh-keyscan -t ssh-ed25519 {address} >> {known_hosts}" in lines[0]


@pytest.mark.parametrize("bastion_known", [True, False])
def test_a_jump_host_from_ssh_config_is_checked_too(
    lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bastion_known: bool
) -> None:
    """A ProxyJump in ~/.ssh/config (not in the inventory) reaches api1 through the bastion, and the
    bastion's key is checked against the inventory's known_hosts (Fabric alone would trust any)."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(f"Host {ADDRESS['api1']}\n  ProxyJump root@{BASTION}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    known_hosts = KNOWN_HOSTS if bastion_known else known_hosts_with(tmp_path, BASTION, None)
    text = (ROOT / "inventories" / "lab.yml").read_text().replace(str(KNOWN_HOSTS), str(known_hosts))
    (tmp_path / "lab.yml").write_text(text)
    host = load(tmp_path / "lab.yml").hosts["api1"]
    if not bastion_known:
        with pytest.raises(HostKeyRefused, match=rf"of {re.escape(BASTION)} is not in {known_hosts}"):
            connect(host)
        return
    remote = connect(host)
    try:
        done = remote.run('printf "%s\\n" "$SSH_CLIENT"')
    finally:
        remote.close()
    assert done.ok and done.stdout.split()[0] == BASTION, done
