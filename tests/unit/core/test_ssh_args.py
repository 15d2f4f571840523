"""`ansible_ssh_common_args`: the jump host, known_hosts files and host key policy, in every shape an
inventory writes them (YAML folded scalars, quoted values, several -o options after a jump)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from remediations.core.connection import SSHRemote, _StrictPolicy
from remediations.core.errors import HostUnreachable, UsageError
from remediations.core.inventory import Host, SSHOptions, jump_host_parts, load, parse, parse_ssh_common_args

ROOT = Path(__file__).resolve().parents[3]
WHERE = "inv.yml: host h"


def folded(*lines: str) -> str:
    """What YAML makes of `ansible_ssh_common_args: >-` followed by these lines."""
    text = "ansible_ssh_common_args: >-\n" + "".join(f"  {line}\n" for line in lines)
    return str(yaml.safe_load(text)["ansible_ssh_common_args"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # the shape of inventories/prod.example.yml: a jump host followed by another option
        (
            folded("-o ProxyJump=deploy@bastion.example.com", "-o UserKnownHostsFile=~/.ssh/kh"),
            SSHOptions((os.path.expanduser("~/.ssh/kh"),), "deploy@bastion.example.com"),
        ),
        (
            "-o UserKnownHostsFile=/kh -o ProxyJump=b -o StrictHostKeyChecking=accept-new",
            SSHOptions(("/kh",), "b", "accept-new"),
        ),
        ("-J b -o UserKnownHostsFile=/kh", SSHOptions(("/kh",), "b")),
        ("-Ju@b:2200 -oUserKnownHostsFile=/kh", SSHOptions(("/kh",), "u@b:2200")),
        ('-o "ProxyJump = b" -o "UserKnownHostsFile = /a /b"', SSHOptions(("/a", "/b"), "b")),
        (
            folded('-o ProxyCommand="ssh -W %h:%p -q deploy@bastion"', "-o UserKnownHostsFile=/kh"),
            SSHOptions(("/kh",), "deploy@bastion"),
        ),
        (
            "-o 'ProxyCommand=ssh -o StrictHostKeyChecking=yes -W %h:%p -p 2200 b' -o UserKnownHostsFile=/kh",
            SSHOptions(("/kh",), "b:2200"),
        ),
        ("-o ProxyCommand='ssh -l u -W %h:%p b'", SSHOptions((), "u@b")),
        # ssh: the first value of an option wins; ProxyJump and ProxyCommand compete, first wins
        ("-o UserKnownHostsFile=/a -o UserKnownHostsFile=/b", SSHOptions(("/a",))),
        ("-J j1 -o ProxyJump=j2", SSHOptions((), "j1")),
        ("-o 'ProxyCommand ssh -W %h:%p j1' -o ProxyJump=j2", SSHOptions((), "j1")),
        ("-o ProxyJump=none -J j2", SSHOptions()),
        # other flags and their arguments are skipped, never read as options
        ("-i ~/.ssh/k -F /dev/null -l deploy -p 22 -o ProxyJump=b", SSHOptions((), "b")),
        ("-C -4 -q -o ProxyJump=b", SSHOptions((), "b")),
        ("-o ProxyJump=ssh://u@b:2200", SSHOptions((), "ssh://u@b:2200")),
        ("-o ProxyJump=[2001:db8::1]:2200", SSHOptions((), "[2001:db8::1]:2200")),
    ],
)
def test_common_args_parse(args: str, expected: SSHOptions) -> None:
    assert parse_ssh_common_args(args, WHERE) == expected


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ("-o -o UserKnownHostsFile=/kh", ["-o has no value"]),
        ("-o UserKnownHostsFile=/kh -o", ["-o has no value"]),
        ("-J", ["-J has no value"]),
        ("-o ProxyJump=", ["has no value"]),
        ("-o ProxyJump b", ["'ProxyJump' has no value"]),  # ssh too: -o takes one word
        ("-o ProxyJump=j1,j2", ["several jump hosts"]),
        ("-o ProxyJump=u@", ["not [user@]host[:port]"]),
        ("-o ProxyJump=b:port", ["not [user@]host[:port]"]),
        ("-o 'ProxyCommand ssh -W %h:%p b nc x 1'", ["not supported"]),
        ("-o 'ProxyCommand ssh -W %h:%p \"b'", ["not supported"]),
    ],
)
def test_common_args_refused_in_one_line(args: str, needles: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_ssh_common_args(args, WHERE)
    message = str(info.value)
    assert message.startswith(WHERE + ":")
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("b", (None, "b", None)),
        ("u@b", ("u", "b", None)),
        ("u@b:2200", ("u", "b", 2200)),
        ("ssh://u@b.example.com:2200", ("u", "b.example.com", 2200)),
        ("[2001:db8::1]:2200", (None, "2001:db8::1", 2200)),
        ("u@[::1]", ("u", "::1", None)),
    ],
)
def test_jump_host_parts(spec: str, parts: tuple[str | None, str, int | None]) -> None:
    assert jump_host_parts(spec) == parts


def test_every_shipped_example_host_builds_its_jump(tmp_path: Path) -> None:
    """Every SSH host of inventories/prod.example.yml gets a connection through its jump host
    (built, not opened): the jump host's own options are read from the same common args."""
    inventory = load(ROOT / "inventories" / "prod.example.yml")
    ssh_hosts = [h for h in inventory.hosts.values() if not h.is_local]
    assert ssh_hosts
    for host in ssh_hosts:
        remote = SSHRemote(host)
        gateway = remote.connection.gateway
        assert gateway is not None and not isinstance(gateway, str)
        assert (gateway.host, gateway.user) == ("bastion.example.com", "deploy")
        assert remote.connection.host == host.address
        remote.close()


def test_jump_host_gets_port_and_user_of_the_spec() -> None:
    text = yaml.safe_dump({"all": {"hosts": {"t": {
        "ansible_host": "10.0.0.5", "ansible_user": "app",
        "ansible_ssh_common_args": "-J ops@jump:2200 -o UserKnownHostsFile=/nonexistent/kh",
    }}}})
    remote = SSHRemote(parse(text, "inv.yml").hosts["t"])
    gateway = remote.connection.gateway
    assert (gateway.host, gateway.port, gateway.user) == ("jump", 2200, "ops")
    assert (remote.connection.host, remote.connection.user) == ("10.0.0.5", "app")


# ---------------------------------------------------------------- a ProxyJump from ~/.ssh/config


def target(known_hosts: str = "/nonexistent/kh") -> Host:
    text = yaml.safe_dump({"all": {"hosts": {"t": {
        "ansible_host": "10.0.0.5", "ansible_user": "app",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}",
    }}}})  # fmt: skip
    return parse(text, "inv.yml").hosts["t"]


def ssh_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(text)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.parametrize("config", ["Host 10.0.0.5\n  ProxyJump ops@jump:2200\n",
                                    "Host *\n  ProxyJump ops@jump:2200\n"])  # fmt: skip
def test_a_configured_jump_host_is_checked_strictly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: str
) -> None:
    """Fabric opens a ~/.ssh/config ProxyJump trusting any host key; this one is checked."""
    ssh_config(monkeypatch, tmp_path, config)
    remote = SSHRemote(target())
    gateway = remote.connection.gateway
    assert (gateway.host, gateway.port, gateway.user) == ("jump", 2200, "ops")
    assert isinstance(gateway.client._policy, _StrictPolicy)
    assert gateway.client._policy.files == ["/nonexistent/kh"]
    assert not gateway.gateway  # `Host *` names the jump host too: it is not its own jump


@pytest.mark.parametrize(
    ("config", "needle"),
    [("Host 10.0.0.5\n  ProxyJump j1,j2\n", "several jump hosts"),
     ("Host 10.0.0.5\n  ProxyJump jump\nHost jump\n  ProxyJump j0\n", "a jump host behind a jump host"),
     ("Host 10.0.0.5\n  ProxyJump jump:ssh\n", "the SSH settings for 10.0.0.5")],
)  # fmt: skip
def test_a_configured_jump_host_we_cannot_check_fails_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: str, needle: str
) -> None:
    ssh_config(monkeypatch, tmp_path, config)
    with pytest.raises(HostUnreachable) as info:
        SSHRemote(target())
    assert needle in str(info.value) and "~/.ssh/config" in str(info.value)


def test_the_inventory_jump_wins_over_the_configured_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ssh_config(monkeypatch, tmp_path, "Host 10.0.0.5\n  ProxyJump other\n")
    host = target()
    host = Host(host.name, {**host.vars, "ansible_ssh_common_args": "-J bastion"}, (), host.source)
    assert SSHRemote(host).connection.gateway.host == "bastion"
