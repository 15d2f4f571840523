"""The cipher a connection negotiates: AES-GCM when the host supports it (cheaper per packet for
both ends than paramiko's first choice, AES-CTR with HMAC-SHA2-256), else what paramiko chose before;
host keys are checked as always. Against a real SSH server on loopback (tests/sshserver.py)."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
import yaml

from remediations.core import connection, inventory
from remediations.core.errors import HostKeyRefused
from tests import sshserver


def host_of(tmp_path: Path, server: sshserver.Server, key_file: Path, known_line: str) -> inventory.Host:
    known = tmp_path / "known_hosts"
    known.write_text(known_line)
    common = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
    host_vars = {"ansible_host": "127.0.0.1", "ansible_port": server.port, "ansible_user": "root",
                 "ansible_ssh_private_key_file": str(key_file),
                 "ansible_ssh_common_args": common}  # fmt: skip
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"h1": host_vars}}}))
    return inventory.load(path).hosts["h1"]


def negotiated(host: inventory.Host) -> tuple[str, str]:
    remote = connection.connect(host)
    try:
        assert isinstance(remote, connection.SSHRemote)
        assert remote.run("true").exit_code == 0
        transport = remote.connection.client.get_transport()
        return transport.local_cipher, transport.remote_cipher
    finally:
        remote.close()


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, paramiko.PKey]:
    path = tmp_path / "id_ed25519"
    return path, sshserver.ed25519_key_file(path)


def test_a_host_that_supports_aes_gcm_is_reached_with_it(
    tmp_path: Path, key: tuple[Path, paramiko.PKey]
) -> None:
    with sshserver.serving(key[1]) as server:
        host = host_of(tmp_path, server, key[0], server.known_hosts_line())
        assert negotiated(host) == ("aes128-gcm@openssh.com", "aes128-gcm@openssh.com")


def test_a_host_without_aes_gcm_negotiates_as_before(tmp_path: Path, key: tuple[Path, paramiko.PKey]) -> None:
    with sshserver.serving(key[1], ciphers=("aes256-ctr", "aes128-cbc")) as server:
        host = host_of(tmp_path, server, key[0], server.known_hosts_line())
        assert negotiated(host) == ("aes256-ctr", "aes256-ctr")  # paramiko's order among the rest


def test_host_keys_are_still_checked(tmp_path: Path, key: tuple[Path, paramiko.PKey]) -> None:
    with sshserver.serving(key[1]) as server:
        other = paramiko.RSAKey.generate(1024)
        host = host_of(tmp_path, server, key[0], f"[127.0.0.1]:{server.port} ssh-rsa {other.get_base64()}\n")
        with pytest.raises(HostKeyRefused, match="CHANGED"):
            connection.connect(host)


def test_the_order_offered() -> None:
    paramikos = paramiko.Transport._preferred_ciphers
    offered = connection.cheap_cipher_first(paramikos)
    assert offered[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    assert sorted(offered) == sorted(paramikos)  # nothing added, nothing dropped
    assert [c for c in offered if "gcm" not in c] == [c for c in paramikos if "gcm" not in c]
    assert connection.cheap_cipher_first(("aes256-ctr", "aes128-ctr")) == ("aes256-ctr", "aes128-ctr")


def test_building_connections_leaves_the_shared_fabric_config_unmodified(
    tmp_path: Path, key: tuple[Path, paramiko.PKey]
) -> None:
    """Every connection of a run reads one Fabric Config; Fabric's Connection used to write
    `inline_ssh_env` into it for each host (and merge all its levels again: most of a connection's
    construction on the controller)."""
    with sshserver.serving(key[1]) as server:
        host = host_of(tmp_path, server, key[0], server.known_hosts_line())
        config = connection._fabric_config()
        before = {k: config[k] for k in ("user", "port", "inline_ssh_env", "connect_kwargs")}
        remotes = [connection.SSHRemote(host) for _ in range(3)]
        assert config._modifications == {}
        assert {k: config[k] for k in before} == before
        for remote in remotes:
            conn = remote.connection
            assert (conn.host, conn.port, conn.user) == ("127.0.0.1", server.port, "root")
            assert conn.inline_ssh_env is True  # Fabric's default, kept on the connection itself
            assert conn.connect_kwargs["pkey"].asbytes() == key[1].asbytes()
        assert negotiated(host)[0] == "aes128-gcm@openssh.com"  # and it connects


def test_a_host_without_a_key_file_leaves_the_shared_config_unmodified_too(
    tmp_path: Path, key: tuple[Path, paramiko.PKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key file of its own, Fabric used the shared Config's connect_kwargs and added the
    host's IdentityFile from ~/.ssh/config to them in place: every later host got that host's key
    file, and the write raced the other threads reading the Config (hosts failed at 200 hosts with
    "No attribute or config key found for 'port'")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(f"Host 127.0.0.1\n    IdentityFile {key[0]}\n")
    with sshserver.serving(key[1]) as server:
        known = tmp_path / "known_hosts"
        known.write_text(server.known_hosts_line())
        common = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
        host_vars = {"ansible_host": "127.0.0.1", "ansible_port": server.port, "ansible_user": "root",
                     "ansible_ssh_common_args": common}  # fmt: skip
        path = tmp_path / "inventory.yml"
        path.write_text(yaml.safe_dump({"all": {"hosts": {"h1": host_vars}}}))
        host = inventory.load(path).hosts["h1"]
        config = connection._fabric_config()
        remote = connection.SSHRemote(host)
        assert config._modifications == {}
        assert "key_filename" not in config.connect_kwargs
        assert remote.connection.connect_kwargs["pkey"].asbytes() == key[1].asbytes()  # ~/.ssh/config's key
        assert negotiated(host)[0] == "aes128-gcm@openssh.com"  # and it logs in with it
