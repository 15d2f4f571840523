"""known_hosts files read once per version for a whole run, and each client given only its host's
keys: the same answers as paramiko's own loading of the whole file into every client."""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from remediations.core import known_hosts
from remediations.core.connection import SSHRemote
from remediations.core.inventory import Host


def public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def host(name: str, files: list[Path], port: int = 22) -> Host:
    kh = " ".join(str(f) for f in files)
    args = f"-o UserKnownHostsFile='{kh}'"
    given = {"ansible_host": name, "ansible_port": port, "ansible_ssh_common_args": args}
    return Host(name, given, (), "inv.yml")


def test_a_file_is_parsed_once_for_every_host_and_again_when_it_changes(tmp_path: Path) -> None:
    keys = {f"10.0.0.{i}": public_key() for i in range(1, 201)}
    kh = tmp_path / "known_hosts"
    write(kh, [f"{address} {key}" for address, key in keys.items()])
    before = known_hosts.reads
    for address, key in keys.items():
        client = SSHRemote(host(address, [kh])).connection.client
        got = client.get_host_keys().lookup(address)
        assert got is not None and list(got) == ["ssh-ed25519"]
        assert got["ssh-ed25519"].get_base64() == key.split()[1]
        assert len(client.get_host_keys()) == 1  # only its own key, not the 200 of the file
    assert known_hosts.reads - before == 1
    # an accept-new append (or an edit) is read again
    newcomer = public_key()
    with kh.open("a") as out:
        out.write(f"10.0.1.1 {newcomer}\n")
    os.utime(kh, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    client = SSHRemote(host("10.0.1.1", [kh])).connection.client
    assert client.get_host_keys().lookup("10.0.1.1")["ssh-ed25519"].get_base64() == newcomer.split()[1]
    assert known_hosts.reads - before == 2


def test_the_first_file_naming_a_host_wins_and_a_port_has_its_own_name(tmp_path: Path) -> None:
    first, second, other_port = public_key(), public_key(), public_key()
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, [f"10.0.0.1 {first}", f"[10.0.0.1]:2222 {other_port}"])
    write(b, [f"10.0.0.1 {second}", f"10.0.0.2 {second}"])
    reference = paramiko.HostKeys()  # what paramiko itself makes of the two files, in that order
    reference.load(str(a))
    reference.load(str(b))
    for name, port in (("10.0.0.1", 22), ("10.0.0.1", 2222), ("10.0.0.2", 22)):
        client = SSHRemote(host(name, [a, b], port)).connection.client
        lookup = known_hosts.key_name(name, port)
        ours = client.get_host_keys().lookup(lookup)
        theirs = reference.lookup(lookup)
        assert ours is not None and theirs is not None
        assert ours["ssh-ed25519"] == theirs["ssh-ed25519"], lookup
    unknown = SSHRemote(host("10.0.0.9", [a, b])).connection.client
    assert unknown.get_host_keys().lookup("10.0.0.9") is None  # left to the strict policy


def test_a_hashed_known_hosts_entry_is_found(tmp_path: Path) -> None:
    key = public_key()
    kh = tmp_path / "known_hosts"
    write(kh, [f"{paramiko.HostKeys.hash_host('10.0.0.7')} {key}"])
    client = SSHRemote(host("10.0.0.7", [kh])).connection.client
    assert client.get_host_keys().lookup("10.0.0.7")["ssh-ed25519"].get_base64() == key.split()[1]
