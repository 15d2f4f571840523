"""Inventory files as a team has them: INI, YAML or neither by name, vars folders, host ranges, and
bad input (hostile bytes, unreadable files, ranges that would make a million hosts), each refused in
one line. What ansible-inventory agrees with is in test_inventory_oracle.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remediations.core.errors import UsageError
from remediations.core.hostrange import MAX_HOSTS, expand, split_port
from remediations.core.inventory import controller_host, load, run_wide_vars
from remediations.core.inventory_ini import literal


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def refused(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- which format


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("hosts", "[web]\nw1 ansible_port=2200\n"),
        ("hosts", "w1 ansible_port=2200\n"),  # no section at all: ungrouped hosts
        ("inventory", "all:\n  hosts:\n    w1: {ansible_port: 2200}\n"),
        ("hosts.cfg", "[web]\nw1 ansible_port=2200\n"),
        ("hosts.ini", "[web]\nw1 ansible_port=2200\n"),
    ],
)
def test_format_by_suffix_or_by_content(tmp_path: Path, name: str, text: str) -> None:
    write(tmp_path, {name: text})
    inventory = load(tmp_path / name)
    assert inventory.hosts["w1"].port == 2200


def test_yaml_suffix_with_broken_yaml_reports_the_yaml_error(tmp_path: Path) -> None:
    write(tmp_path, {"hosts.yml": "all:\n  hosts:\n    a: [1,\n"})
    assert "malformed YAML" in refused(tmp_path / "hosts.yml")


def test_a_yaml_looking_file_without_suffix_keeps_its_yaml_error(tmp_path: Path) -> None:
    write(tmp_path, {"hosts": "all:\n  hosts: [a, b]\n"})
    assert "all.hosts: expected a mapping, got list" in refused(tmp_path / "hosts")


def test_an_inventory_plugin_config_is_refused_with_the_way_out(tmp_path: Path) -> None:
    write(tmp_path, {"aws_ec2.yml": "plugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n"})
    message = refused(tmp_path / "aws_ec2.yml")
    assert "plugin: amazon.aws.aws_ec2" in message
    assert f"ansible-inventory -i {tmp_path / 'aws_ec2.yml'} --list -y > flat.yml" in message


# ---------------------------------------------------------------- INI errors


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[web:hostz]\nw1\n", ["line 1", "unknown type", "[group:vars]"]),
        ("[web servers]\nw1\n", ["line 1", "invalid section"]),
        ("[web]\nw1 novalue\n", ["line 2", "expected key=value after the host", "'novalue'"]),
        ("[web]\nw1\n[web:vars]\njustaword\n", ["line 4", "expected key=value in [web:vars]"]),
        ("[web]\nw1\n[db:vars]\nx=1\n", ["line 3", "[db:vars] is for a group no section declares"]),
        ("[web]\nw1 x='unclosed\n", ["line 2", "cannot split the host line"]),
        ("[web]\nw[1:x]\n", ["host range", "two numbers or two letters"]),
        ("# only a comment\n", ["inventory is empty"]),
    ],
)
def test_ini_errors_are_one_line_with_the_line_number(tmp_path: Path, text: str, needles: list[str]) -> None:
    write(tmp_path, {"hosts.ini": text})
    message = refused(tmp_path / "hosts.ini")
    assert message.startswith(str(tmp_path / "hosts.ini") + ":")
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), ("True", True), ("[1, 2]", [1, 2]), ("None", None), ("yes", "yes"), ("a b", "a b"),
     ("b'x'", "x"), ("[" * 5000 + "]" * 5000, "[" * 5000 + "]" * 5000), ("9" * 200_000, "9" * 200_000)],
)  # fmt: skip
def test_ini_values_are_python_literals_else_text(text: str, value: object) -> None:
    started = time.monotonic()
    assert literal(text) == value
    assert time.monotonic() - started < 2  # a huge or deeply nested value is not a hang


# ---------------------------------------------------------------- host ranges and ports


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("web[01:03]", ["web01", "web02", "web03"]),
        ("db-[a:c]", ["db-a", "db-b", "db-c"]),
        ("node[1:7:3]", ["node1", "node4", "node7"]),
        ("r[1:2]n[a:b]", ["r1na", "r1nb", "r2na", "r2nb"]),
        ("x[3:1]", []),
        ("[1:3].lab", ["1.lab", "2.lab", "3.lab"]),
        ("plain", ["plain"]),
    ],
)
def test_expand(pattern: str, hosts: list[str]) -> None:
    assert expand(pattern, "f") == hosts


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("web[1:1000000]", f"expands to 1000000 hosts, more than {MAX_HOSTS}"),
        ("a[1:200]b[1:200]", "expands to 40000 hosts"),
        ("w[01:100]", "both ends must be as wide"),
        ("w[1:5:0]", "the step must be a whole number >= 1"),
        ("w[c:a]", "runs backwards"),
        ("w[1:2:3:4]", "must be [begin:end] or [begin:end:step]"),
        ("w[1:]", "has no end"),
    ],
)
def test_bad_ranges_are_refused_before_expanding(pattern: str, needle: str) -> None:
    started = time.monotonic()
    with pytest.raises(UsageError) as info:
        expand(pattern, "inv.yml: all.hosts")
    assert needle in str(info.value)
    assert str(info.value).startswith("inv.yml: all.hosts: host range")
    assert time.monotonic() - started < 1  # refused from the bounds, not after building the list


def test_a_million_host_range_in_a_file_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, {"hosts.ini": "[web]\nweb[000001:999999].example.com\n"})
    message = refused(tmp_path / "hosts.ini")
    assert "'web[000001:999999].example.com' expands to 999999 hosts" in message
    assert "Split it into smaller ranges or list the hosts" in message


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("h.example.com:2201", ("h.example.com", 2201)), ("10.0.0.1:22", ("10.0.0.1", 22)),
     ("[::1]:2222", ("::1", 2222)), ("fe80::1", ("fe80::1", None)), ("w[1:3]:22", ("w[1:3]", 22)),
     ("w[1:3]", ("w[1:3]", None)), ("host:port", ("host:port", None))],
)  # fmt: skip
def test_split_port(pattern: str, expected: tuple[str, int | None]) -> None:
    assert split_port(pattern) == expected


# ---------------------------------------------------------------- hostile bytes, unreadable files


@pytest.mark.parametrize(
    "files",
    [
        {"hosts.yml": 'all:\n  hosts:\n    "web\\x1b[31m": \n'},
        {"hosts.yml": 'all:\n  hosts:\n    "a\\0b": \n'},
        {"hosts.yml": 'all:\n  children:\n    "g\\nx":\n      hosts: {h: }\n'},
        {"hosts.ini": "[web]\nw\x07eb1\n"},
    ],
)
def test_control_characters_in_names_are_refused(tmp_path: Path, files: dict[str, str]) -> None:
    write(tmp_path, files)
    message = refused(tmp_path / next(iter(files)))
    assert "has a control character; rename it" in message


def test_non_utf8_inventory_and_vars_files(tmp_path: Path) -> None:
    write(tmp_path, {"a/hosts.ini": b"[web]\nw1 x=\xff\xfe\n"})
    assert "is not UTF-8 text" in refused(tmp_path / "a" / "hosts.ini")
    write(tmp_path, {"b/hosts.yml": "all:\n  hosts:\n    h1:\n", "b/host_vars/h1.yml": b"x: \xc3\x28\n"})
    message = refused(tmp_path / "b" / "hosts.yml")
    assert "host_vars/h1.yml: vars file is not UTF-8 text" in message


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        ({"group_vars/all.yml": "- a\n- b\n"}, ["group_vars/all.yml: a vars file must be a mapping", "list"]),
        ({"group_vars/all.yml": "a: [1,\n"}, ["group_vars/all.yml: line 2: malformed YAML"]),
        ({"host_vars/h1/x.yml": "just text\n"}, ["host_vars/h1/x.yml: a vars file must be a mapping"]),
    ],
)
def test_bad_vars_files_are_one_line(tmp_path: Path, files: dict[str, str], needles: list[str]) -> None:
    write(tmp_path, {"hosts.yml": "all:\n  hosts:\n    h1:\n", **files})
    message = refused(tmp_path / "hosts.yml")
    for needle in needles:
        assert needle in message, message


def test_missing_file_and_folder_given_as_inventory(tmp_path: Path) -> None:
    assert "inventory not found" in refused(tmp_path / "nope.yml")
    assert "is a folder; pass the inventory file in it" in refused(tmp_path)


def test_group_priority_must_be_whole(tmp_path: Path) -> None:
    write(tmp_path, {"hosts.ini": "[web]\nw1\n[web:vars]\nansible_group_priority=high\n"})
    assert "ansible_group_priority 'high' is not a whole number" in refused(tmp_path / "hosts.ini")


def test_a_host_name_that_climbs_out_of_host_vars_reads_nothing_there(tmp_path: Path) -> None:
    write(tmp_path, {"inv/hosts.yml": "all:\n  hosts:\n    ../secret:\n", "secret.yml": "stolen: 1\n",
                     "inv/host_vars/placeholder.yml": "x: 1\n"})  # fmt: skip
    assert "stolen" not in load(tmp_path / "inv" / "hosts.yml").hosts["../secret"].vars


_UNREADABLE = """
import sys
from remediations.core.errors import UsageError
from remediations.core.inventory import load
try:
    load(sys.argv[1])
except UsageError as exc:
    print(exc)
"""


@pytest.mark.parametrize("which", ["hosts.yml", "group_vars/all.yml", "group_vars/web"])
def test_unreadable_files_are_one_line(tmp_path: Path, which: str) -> None:
    """A real file the reader may not read (root runs it without its read-anything capabilities)."""
    write(tmp_path, {"hosts.yml": "all:\n  children:\n    web:\n      hosts: {h1: }\n",
                     "group_vars/all.yml": "a: 1\n", "group_vars/web/main.yml": "b: 1\n"})  # fmt: skip
    os.chmod(tmp_path / which, 0)
    command = [sys.executable, "-c", _UNREADABLE, str(tmp_path / "hosts.yml")]
    if os.geteuid() == 0:  # root without the capabilities that let it read any file
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.stderr == "", result.stderr  # no traceback
    assert result.stdout.count("\n") == 1
    assert f"{tmp_path / which}: cannot read" in result.stdout
    assert "Permission denied" in result.stdout


# ---------------------------------------------------------------- refused values stay quiet until read


def test_run_wide_vars_and_the_controller_keep_a_refused_value_unread(tmp_path: Path) -> None:
    write(tmp_path, {"hosts.yml": "all:\n  vars:\n    tpl: '{{ x }}'\n    audit_log: /var/log/a.jsonl\n"
                                  "  hosts:\n    h1:\n    h2:\n"})  # fmt: skip
    inventory = load(tmp_path / "hosts.yml")
    shared = run_wide_vars(inventory)
    assert shared["audit_log"] == "/var/log/a.jsonl"
    controller = controller_host(inventory, "controller")
    assert controller.is_local
    assert controller.get("audit_log") == "/var/log/a.jsonl"
    with pytest.raises(UsageError, match=r"host controller: tpl: '\{\{ x \}\}' is a Jinja template"):
        controller.get("tpl")


def test_ungrouped_is_a_group_like_in_ansible(tmp_path: Path) -> None:
    write(tmp_path, {"hosts.ini": "lonely\n[web]\nw1\n"})
    inventory = load(tmp_path / "hosts.ini")
    assert [h.name for h in inventory.select("ungrouped")] == ["lonely"]
    assert inventory.groups["ungrouped"] == ["lonely"]
    assert inventory.hosts["lonely"].groups == ("all", "ungrouped")
    assert inventory.hosts["w1"].groups == ("all", "web")


def _fleet_inventory(folder: Path, hosts: int) -> Path:
    write(folder, {"hosts.ini": f"[web]\nweb[00001:{hosts:05d}]\n[db]\ndb[1:100]\n[prod:children]\nweb\ndb\n",
                   "group_vars/web.yml": "a: 1\n", "group_vars/all.yml": "b: 1\n",
                   "host_vars/web00042.yml": "c: 1\n"})  # fmt: skip
    return folder / "hosts.ini"


def test_ten_thousand_hosts_with_vars_folders_load_in_linear_time(tmp_path: Path) -> None:
    """Ten times the hosts takes about ten times as long (a ratio in one run, not a wall-clock limit:
    this machine is shared). List look-ups made it quadratic once: a hundred times."""
    small, big = _fleet_inventory(tmp_path / "small", 1_000), _fleet_inventory(tmp_path / "big", 10_000)
    times = {small: [], big: []}  # type: dict[Path, list[float]]
    for _ in range(3):
        for path in (small, big):  # interleaved, medians
            started = time.perf_counter()
            inventory = load(path)
            times[path].append(time.perf_counter() - started)
    ratio = sorted(times[big])[1] / sorted(times[small])[1]
    assert ratio < 30, f"10x the hosts took {ratio:.1f}x as long: not linear"
    assert len(inventory.groups["prod"]) == 10_100
    assert dict(inventory.hosts["web00042"].vars) == {"a": 1, "b": 1, "c": 1}
    assert dict(inventory.hosts["db7"].vars) == {"b": 1}


def test_legacy_and_short_connection_names_reach_the_ssh_connection_and_its_jump(tmp_path: Path) -> None:
    """Nothing is connected to: the Fabric connection is only built (address, user, port, keys)."""
    from remediations.core.connection import SSHRemote

    write(tmp_path, {"hosts.ini": "[web]\nw1 ansible_ssh_host=192.0.2.7 ansible_ssh_port=2200 "
                                  "ansible_ssh_user=ops ansible_private_key_file=/keys/id\n",
                     "group_vars/web.yml": "ansible_ssh_common_args: -o ProxyJump=jumper@192.0.2.1:2222\n"})
    connection = SSHRemote(load(tmp_path / "hosts.ini").hosts["w1"]).connection
    assert (connection.host, connection.user, connection.port) == ("192.0.2.7", "ops", 2200)
    assert connection.connect_kwargs["key_filename"] == ["/keys/id"]
    jump = connection.gateway
    assert (jump.host, jump.user, jump.port) == ("192.0.2.1", "jumper", 2222)
    assert jump.connect_kwargs["key_filename"] == ["/keys/id"]  # the jump uses the same key, as before


# ---------------------------------------------------------------- Ansible Vault

VAULT_CASE = Path(__file__).resolve().parents[2] / "fixtures" / "inventories" / "vault_decrypt"


@pytest.fixture
def vault_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ansible-vault-made fixture, copied so its password file can be changed."""
    import shutil

    shutil.copytree(VAULT_CASE, tmp_path / "inv")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(tmp_path / "inv" / "vault-pass.txt"))
    return tmp_path / "inv"


@pytest.mark.parametrize(
    ("password", "mode", "needle"),
    [
        (b"wrong-password\n", 0o600, "the vault password in ANSIBLE_VAULT_PASSWORD_FILE does not open it"),
        (b"\n", 0o600, "vault-pass.txt is empty"),
        (b"#!/bin/sh\necho pw\n", 0o700, "is a script, which this project does not run"),
    ],
)
def test_vault_password_problems_are_one_line_and_never_show_the_secret(
    vault_copy: Path, password: bytes, mode: int, needle: str
) -> None:
    (vault_copy / "vault-pass.txt").write_bytes(password)
    os.chmod(vault_copy / "vault-pass.txt", mode)
    message = refused(vault_copy / "hosts.yml")
    assert needle in message
    assert "s3cr3t" not in message and "tok-123" not in message


def test_damaged_vault_text_is_one_line(vault_copy: Path) -> None:
    header, body = (vault_copy / "group_vars" / "all" / "vault.yml").read_text().split("\n", 1)
    (vault_copy / "group_vars" / "all" / "vault.yml").write_text(f"{header}\n{body.replace('6', 'z', 3)}")
    assert "the Ansible Vault text is damaged" in refused(vault_copy / "hosts.yml")


def test_decrypted_values_are_masked_whatever_their_name(vault_copy: Path) -> None:
    from remediations.reporting.redact import Redactor

    host = load(vault_copy / "hosts.yml").hosts["v1"]
    redactor = Redactor()
    redactor.learn(host.vars)
    shown = redactor.text("app_token=tok-123456789 pw=s3cr3t-db-p@ss plain=visible")
    assert shown == "app_token=***** pw=***** plain=visible"


def test_a_decrypted_template_is_refused_without_showing_it() -> None:
    from remediations.core.inventory import Host
    from remediations.core.inventory_vars import refuse_unsupported
    from remediations.core.vault import VaultSecret

    out = refuse_unsupported({"db_url": VaultSecret("postgres://u:{{ pw }}@db")}, "inv.yml")
    with pytest.raises(UsageError) as info:
        Host("v1", out, (), "inv.yml").get("db_url")
    assert "Jinja template" in str(info.value) and "postgres://" not in str(info.value)
