"""A private key file is parsed once per run, not once per host and key class; authentication
itself is unchanged (the key the host accepts logs in, any other is refused), against a real SSH
server on loopback (tests/sshserver.py) with its host key checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import paramiko
import pytest
import yaml

from remediations.core import inventory, private_keys
from remediations.core.context import HostContext
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from tests import sshserver


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


class RunTrue(Remediation):
    """Read-only: one command on every host, then nothing to do."""

    task: ClassVar[str] = "run-true"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def gather(self, ctx: HostContext) -> None:
        with ctx.step("facts") as step:
            result = ctx.remote.run("true")
            step.done(Status.OK if result.ok else Status.FAILED, f"exit {result.exit_code}")

    def decide(self, ctx: HostContext, facts: Any) -> Plan:
        return Plan.nothing("nothing to do")


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, paramiko.PKey]:
    path = tmp_path / "id_ed25519"
    return path, sshserver.ed25519_key_file(path)


@pytest.fixture
def server(key: tuple[Path, paramiko.PKey]) -> Iterator[sshserver.Server]:
    with sshserver.serving(key[1]) as running:
        yield running


def fleet(tmp_path: Path, server: sshserver.Server, key_file: Path, count: int) -> inventory.Inventory:
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    common = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
    hosts = {f"h{i:02d}": {"ansible_host": "127.0.0.1", "ansible_port": server.port} for i in range(count)}
    all_vars = {"ansible_user": "root", "ansible_ssh_common_args": common,
                "ansible_ssh_private_key_file": str(key_file)}  # fmt: skip
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": all_vars, "hosts": hosts}}))
    return inventory.load(path)


def counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every parse of a private key file, by any key class (paramiko's SSHClient and ours)."""
    parses: list[str] = []
    original = paramiko.PKey.from_private_key_file.__func__

    def counting(cls: type[paramiko.PKey], filename: str, password: str | None = None) -> paramiko.PKey:
        parses.append(f"{cls.__name__} {filename}")
        return original(cls, filename, password)

    monkeypatch.setattr(paramiko.PKey, "from_private_key_file", classmethod(counting))
    return parses


def test_a_private_key_file_is_parsed_once_per_run_not_once_per_host(
    tmp_path: Path, server: sshserver.Server, key: tuple[Path, paramiko.PKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko parses a key_filename on every connection, trying RSA, ECDSA, then Ed25519: three
    parses per host for an Ed25519 key (60 for these 20 hosts)."""
    inv = fleet(tmp_path, server, key[0], 20)
    parses = counting_parses(monkeypatch)
    run = Engine(inv, RunOptions(parallel=5)).run(RunTrue(), inv.select("all"))
    assert [h.status for h in run.hosts] == [Status.OK] * 20, [h.message for h in run.hosts[:3]]
    assert server.accepted == [key[1].asbytes()] * 20  # every host logged in with that key
    assert server.commands == ["true"] * 20
    assert len(parses) <= len(private_keys.KEY_CLASSES), parses  # one parse, one try per class at most


def test_a_key_the_host_does_not_authorize_is_still_refused(
    tmp_path: Path, server: sshserver.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other_key"
    sshserver.ed25519_key_file(other)
    inv = fleet(tmp_path, server, other, 3)
    run = Engine(inv, RunOptions(parallel=3)).run(RunTrue(), inv.select("all"))
    assert [h.status for h in run.hosts] == [Status.FAILED] * 3
    assert all("SSH authentication failed" in h.message for h in run.hosts), [h.message for h in run.hosts]
    assert server.accepted == [] and server.commands == []


def test_a_key_file_changed_during_the_run_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    first = sshserver.ed25519_key_file(path)
    assert private_keys.loaded(str(path)).asbytes() == first.asbytes()  # type: ignore[union-attr]
    second = sshserver.ed25519_key_file(path)  # a new key in the same file (new size or mtime)
    assert private_keys.loaded(str(path)).asbytes() == second.asbytes()  # type: ignore[union-attr]


def test_what_paramiko_must_load_itself_is_left_to_it(tmp_path: Path) -> None:
    """A key with a passphrase, one with a certificate beside it, a file that is not a key, a
    missing file: the connection is given the file, as before, and paramiko says what is wrong."""
    locked = tmp_path / "locked"
    sshserver.ed25519_key_file(locked, passphrase=b"secret words")
    certified = tmp_path / "certified"
    sshserver.ed25519_key_file(certified)
    (tmp_path / "certified-cert.pub").write_text("ssh-ed25519-cert-v01@openssh.com AAAA\n")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    for path in (locked, certified, garbage, tmp_path / "missing"):
        kwargs: dict[str, object] = {"key_filename": [str(path)]}
        assert private_keys.given(kwargs) is kwargs, path.name
    usable = tmp_path / "usable"
    sshserver.ed25519_key_file(usable)
    with_passphrase: dict[str, object] = {"key_filename": [str(usable)], "passphrase": "x"}
    assert private_keys.given(with_passphrase) is with_passphrase
    both = private_keys.given({"key_filename": [str(usable), str(garbage)], "timeout": 5})
    assert isinstance(both["pkey"], paramiko.Ed25519Key)
    assert both["key_filename"] == [str(garbage)] and both["timeout"] == 5  # the rest tried after it
