"""The inventory loader against Ansible itself: `ansible-inventory -i FILE --list`, case for case.

Each case is a folder under tests/fixtures/inventories/ (an inventory file, maybe group_vars/ and
host_vars/ beside it). For every case the hosts, every group's members and every host's effective
vars must be what ansible-inventory says (its `_meta.hostvars`). Cases this project refuses on
purpose (README: "Inventories: what is read, what is refused") are in REFUSED: Ansible's raw value
must still match, and reading the var must be one line naming the var and the way out.

ansible-core lives in its own venv, .venv-oracle (made by scripts/bootstrap; never a dependency of
the product). Missing, the test fails under CI and is skipped elsewhere with the command to make it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from remediations.core.errors import UsageError
from remediations.core.inventory import Inventory, load
from remediations.core.inventory_vars import HostVars, Refused, UnsafeText, VaultText
from remediations.core.validate import VARS, check_vars
from remediations.core.vault import PASSWORD_ENV, VaultSecret

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "inventories"
ORACLE_VENV = Path(os.environ.get("REMEDIATIONS_ORACLE_VENV", ROOT / ".venv-oracle"))
ANSIBLE_INVENTORY = ORACLE_VENV / "bin" / "ansible-inventory"

# case folder -> the inventory file in it
CASES: dict[str, str] = {
    "yaml_nested": "hosts.yml",
    "ini_basic": "hosts.ini",
    "ini_no_extension": "hosts",
    "yaml_group_vars_files": "hosts.yml",
    "group_vars_folders": "hosts.yml",
    "host_vars_folders": "hosts.ini",
    "precedence_ladder": "hosts.yml",
    "depth_order": "hosts.yml",
    "group_priority_yaml": "hosts.yml",
    "group_priority_ini": "inventory.ini",
    "ranges_yaml": "hosts.yml",
    "ranges_ini": "hosts.ini",
    "host_ports": "hosts.yml",
    "host_ports_ini": "hosts.ini",
    "legacy_ssh_vars": "hosts.ini",
    "unicode_names": "hosts.yml",
    "empty_groups": "hosts.yml",
    "empty_groups_ini": "hosts.ini",
    "hosts_in_several_groups": "hosts.yml",
    "children_defined_elsewhere": "hosts.yml",
    "ungrouped_hosts": "hosts.yml",
    "ini_children_forward": "hosts.ini",
    "ini_values": "hosts.ini",
    "yaml_types": "hosts.yml",
    "json_inventory": "hosts.json",
    "top_level_groups_only": "hosts.yaml",
    "real_team_layout": "inventories/prod/hosts.ini",
    "unsafe_tag": "hosts.yml",
    "order_conflict": "hosts.yml",
    "ini_repeated": "hosts.ini",
    "ip_and_int_names": "hosts.yml",
    "hv_for_range": "hosts",
    "refuse_jinja": "hosts.yml",
    "refuse_vault": "hosts.yml",
    "refuse_connection": "hosts.ini",
    "refuse_become_method": "hosts.yml",
    "refuse_ini_undefined_child": "hosts.ini",
    "refuse_vault_file": "hosts.yml",
    "refuse_int_host_name": "hosts.yml",
    "vault_decrypt": "hosts.yml",
}
# case -> its vault password file (ansible-inventory --vault-password-file, ANSIBLE_VAULT_PASSWORD_FILE)
VAULT_PASSWORDS = {"vault_decrypt": "vault-pass.txt"}

# case -> (host, var, what the one-line refusal must say) for values Ansible reads and we refuse
REFUSED: dict[str, list[tuple[str, str, list[str]]]] = {
    "refuse_jinja": [
        ("j1", "compose_project_dir", ["'{{ base_dir }}/app' is a Jinja template",
                                       "-m ansible.builtin.debug -a var=compose_project_dir"]),
        ("j1", "role_setting", ["Jinja template", "ansible -i ", " j1 ", "-a var=role_setting"]),
    ],
    "refuse_vault": [
        ("v1", "postgres_admin_passfile",
         ["is an Ansible Vault value and no vault password is given", "set ANSIBLE_VAULT_PASSWORD_FILE"]),
    ],
    "refuse_connection": [
        ("c1", "ansible_connection", ["'docker' is not supported (only ssh and local)", "--host"]),
        ("win1", "ansible_connection", ["'winrm' is not supported"]),
    ],
    "refuse_become_method": [
        ("su1", "ansible_become",
         ["ansible_become_method 'su' is not supported", "set ansible_become_method: sudo"]),
    ],
}
# case -> what our refusal says where ansible-inventory cannot read the inventory either
BOTH_REFUSE: dict[str, list[str]] = {
    "refuse_ini_undefined_child": ["hosts.ini: line 2:", "[prod:children]", "'ghost'"],
    "refuse_vault_file": ["group_vars/all/vault.yml: encrypted with Ansible Vault and no password is given",
                          "set ANSIBLE_VAULT_PASSWORD_FILE"],
    "refuse_int_host_name": ["all.hosts: host pattern 1234 must be a string; put it in quotes"],
}


def _run_ansible(inventory: Path, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_CONFIG": str(home / "ansible.cfg"),  # empty: no user or project config
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1",
        "ANSIBLE_NOCOLOR": "1",
        "LC_ALL": "C.UTF-8",
    }
    return subprocess.run(  # our own venv's ansible-inventory
        [str(ANSIBLE_INVENTORY), "-i", str(inventory), "--list", *extra],
        capture_output=True, text=True, env=env, cwd=home, timeout=120, check=False,
    )  # fmt: skip


def _listing(case: str, home: Path) -> dict[str, Any] | None:
    """ansible-inventory's --list for one case; None when Ansible cannot read it."""
    password = VAULT_PASSWORDS.get(case)
    extra = ["--vault-password-file", str(FIXTURES / case / password)] if password else []
    result = _run_ansible(FIXTURES / case / CASES[case], home, *extra)
    if result.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def oracle() -> Iterator[dict[str, dict[str, Any] | None]]:
    """ansible-inventory's answer for every case, run once per test run (two at a time)."""
    if not ANSIBLE_INVENTORY.exists():
        message = f"{ANSIBLE_INVENTORY} is missing: run scripts/bootstrap (it makes .venv-oracle)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "ansible.cfg").write_text("")
        (home / "tmp").mkdir()
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = pool.map(lambda c: _listing(c, home), CASES)
            answers = dict(zip(CASES, runs, strict=True))
        yield answers


@pytest.fixture(autouse=True)
def no_vault_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the cases in VAULT_PASSWORDS have one; the developer's own is never used here."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


def _members(listing: dict[str, Any], group: str) -> list[str]:
    body = listing.get(group, {})
    found = list(body.get("hosts", []))
    for child in body.get("children", []):
        found.extend(h for h in _members(listing, child) if h not in found)
    return found


def _group_names(listing: dict[str, Any]) -> set[str]:
    names = {name for name in listing if name != "_meta"}
    for name, body in listing.items():
        if name != "_meta":
            names.update(body.get("children", []))
    return names


def _as_ansible_shows(value: Any) -> Any:
    """Our raw value as ansible-inventory prints it (a refused one as Ansible holds it)."""
    if isinstance(value, Refused):
        value = value.original
    if isinstance(value, VaultText):
        return {"__ansible_vault": str(value)}
    if isinstance(value, VaultSecret):  # --list shows an inline one still encrypted, a file's decrypted
        return {"__ansible_vault": value.ciphertext} if value.ciphertext else str(value)
    if isinstance(value, UnsafeText):
        return {"__ansible_unsafe": str(value)}
    if isinstance(value, dict):
        return {str(k): _as_ansible_shows(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_ansible_shows(v) for v in value]
    return value


def _raw_vars(inventory: Inventory, host: str) -> dict[str, Any]:
    variables = inventory.hosts[host].vars
    assert isinstance(variables, HostVars)
    shown = {name: _as_ansible_shows(variables.raw(name)) for name in variables}
    return dict(json.loads(json.dumps(shown)))


def test_the_table_has_every_fixture_and_enough_cases() -> None:
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == set(CASES)
    readable = [c for c in CASES if c not in BOTH_REFUSE]
    assert len(readable) >= 25
    assert sum(CASES[c].endswith((".ini", "hosts")) for c in readable) >= 8  # INI is the common form


@pytest.mark.parametrize("case", [c for c in CASES if c not in BOTH_REFUSE])
def test_loader_matches_ansible_inventory(
    case: str, oracle: dict[str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    if case in VAULT_PASSWORDS:
        monkeypatch.setenv(PASSWORD_ENV, str(FIXTURES / case / VAULT_PASSWORDS[case]))
    listing = oracle[case]
    assert listing is not None, f"ansible-inventory could not read {case}"
    inventory = load(FIXTURES / case / CASES[case])
    hostvars = listing["_meta"]["hostvars"]
    assert set(inventory.hosts) == set(_members(listing, "all"))
    assert set(inventory.groups) == _group_names(listing)
    for group in inventory.groups:
        if group == "all":  # ours is in file order (README); Ansible lists `all` through its children
            assert set(inventory.groups[group]) == set(_members(listing, group))
        else:
            assert inventory.groups[group] == _members(listing, group), group
    for host in inventory.hosts:
        assert _raw_vars(inventory, host) == hostvars.get(host, {}), host
        expected_groups = {g for g in inventory.groups if host in _members(listing, g)}
        assert set(inventory.hosts[host].groups) == expected_groups | {"all"}


@pytest.mark.parametrize(
    ("case", "host", "var", "needles"),
    [(case, *row) for case, rows in REFUSED.items() for row in rows],
)
def test_refused_value_is_one_line_naming_the_var_and_the_way_out(
    case: str, host: str, var: str, needles: list[str]
) -> None:
    inventory = load(FIXTURES / case / CASES[case])
    target = inventory.hosts[host]
    reads: list[Callable[[], Any]] = [lambda: target.get(var), lambda: target.vars[var]]
    if var in VARS:  # a var this project reads is refused by the checks run before any host is touched
        reads.append(lambda: check_vars(target))
    for read in reads:
        with pytest.raises(UsageError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{inventory.source}: host {host}: {var}: "), message
        for needle in needles:
            assert needle in message, message


def test_unrefused_neighbours_of_refused_values_read_normally() -> None:
    jinja = load(FIXTURES / "refuse_jinja" / "hosts.yml").hosts["j1"]
    assert (jinja.get("ok_var"), jinja.get("base_dir")) == ("plain", "/srv")
    role_only = load(FIXTURES / "refuse_jinja" / "hosts.yml").hosts["j2"]
    check_vars(role_only)  # a template in a var this project never reads stops nothing
    connections = load(FIXTURES / "refuse_connection" / "hosts.ini").hosts
    assert connections["l1"].is_local and not connections["s1"].is_local
    become = load(FIXTURES / "refuse_become_method" / "hosts.yml").hosts
    assert become["doas_off"].become is False  # the method does not matter when nothing becomes
    assert become["sudo1"].become is True
    check_vars(become["sudo1"])
    with pytest.raises(UsageError, match="ansible_become_method 'su'"):
        _ = become["su1"].become


@pytest.mark.parametrize("case", list(BOTH_REFUSE))
def test_what_ansible_cannot_read_is_refused_in_one_line(
    case: str, oracle: dict[str, dict[str, Any] | None]
) -> None:
    assert oracle[case] is None, f"ansible-inventory read {case}; it should not"
    with pytest.raises(UsageError) as info:
        load(FIXTURES / case / CASES[case])
    message = str(info.value)
    assert "\n" not in message
    for needle in BOTH_REFUSE[case]:
        assert needle in message, message


def test_vault_values_decrypt_to_what_ansible_decrypts(
    tmp_path: Path, oracle: dict[str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ansible-vault wrote the fixture (an inline !vault value, a vars file encrypted whole); what
    Ansible's own debug module prints for them is what this project reads, and each is a secret."""
    case = FIXTURES / "vault_decrypt"
    monkeypatch.setenv(PASSWORD_ENV, str(case / "vault-pass.txt"))
    host = load(case / "hosts.yml").hosts["v1"]
    (tmp_path / "ansible.cfg").write_text("")
    (tmp_path / "tmp").mkdir()
    for var in ("postgres_admin_password", "app_token", "port_in_vault"):
        result = subprocess.run(
            [str(ANSIBLE_INVENTORY.with_name("ansible")), "-i", str(case / "hosts.yml"), "v1",
             "-m", "ansible.builtin.debug", "-a", f"var={var}", "-e", "ansible_connection=local",
             "--vault-password-file", str(case / "vault-pass.txt"), "-o"],
            capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "ANSIBLE_HOME": str(tmp_path),
                 "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
                 "ANSIBLE_NOCOLOR": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        shown = json.loads(result.stdout.split("=>", 1)[1])[var]
        assert host.get(var) == shown, var
    assert isinstance(host.get("postgres_admin_password"), VaultSecret)
    assert isinstance(host.get("app_token"), VaultSecret)
    assert host.get("plain") == "visible" and not isinstance(host.get("plain"), VaultSecret)


FLATTENED = ["real_team_layout", "precedence_ladder", "group_vars_folders", "ranges_ini", "legacy_ssh_vars"]


def test_the_way_out_flattening_with_ansible_inventory_reads_the_same(
    tmp_path: Path, oracle: dict[str, dict[str, Any] | None]
) -> None:
    """`ansible-inventory -i X --list -y > flat.yml` (the way out this README gives for inventory
    plugins) loads here to the same hosts, groups and vars as X itself."""
    (tmp_path / "ansible.cfg").write_text("")
    (tmp_path / "tmp").mkdir()
    for case in FLATTENED:
        original = load(FIXTURES / case / CASES[case])
        result = _run_ansible(FIXTURES / case / CASES[case], tmp_path, "-y")
        assert result.returncode == 0, result.stderr
        (tmp_path / f"{case}.yml").write_text(result.stdout)
        flat = load(tmp_path / f"{case}.yml")
        assert set(flat.hosts) == set(original.hosts), case
        assert {g: set(h) for g, h in flat.groups.items()} == {g: set(h) for g, h in original.groups.items()}
        for host in original.hosts:
            assert _raw_vars(flat, host) == _raw_vars(original, host), (case, host)


def test_connection_settings_follow_ansible_names() -> None:
    """Not in --list (it shows vars, not what ssh gets): the last name set wins, as in Ansible's
    ssh plugin (`ansible_ssh_host` over `ansible_host`, ...)."""
    hosts = load(FIXTURES / "legacy_ssh_vars" / "hosts.ini").hosts
    assert (hosts["o1"].address, hosts["o1"].port, hosts["o1"].user) == ("192.0.2.1", 2200, "legacy")
    assert (hosts["o2"].address, hosts["o2"].port, hosts["o2"].user) == ("192.0.2.22", 2222, "old")
    assert hosts["o3"].key_file == os.path.expanduser("~/.ssh/old_key")
    ports = load(FIXTURES / "host_ports" / "hosts.yml").hosts
    assert (ports["host.example.com"].address, ports["host.example.com"].port) == ("host.example.com", 2201)
    assert ports["explicit.example.com"].port == 2999  # the host's own ansible_port beats :2201
    assert ports["plain.example.com"].port == 2022  # from host_vars/


@pytest.mark.parametrize(("ci", "code", "says"), [("true", 1, "1 error"), (None, 0, "1 skipped")])
def test_a_missing_oracle_fails_under_ci_and_is_skipped_elsewhere(
    ci: str | None, code: int, says: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(REMEDIATIONS_ORACLE_VENV="/nonexistent/venv-oracle", **({"CI": ci} if ci else {}))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(Path(__file__)),
         "-k", "test_what_ansible_cannot_read and vault_file"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == code, result.stdout[-3000:]
    assert says in result.stdout
    assert "/nonexistent/venv-oracle/bin/ansible-inventory is missing: run scripts/bootstrap" in result.stdout
