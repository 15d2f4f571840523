"""What the inventory refuses, through the real front end (`python -m invoke …`): exit 2, one line on
stderr naming the file, the host, the var and the way out, and nothing run (no host locked, only the
`arguments` record audited). The hosts are local: a refusal that got through would run here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import labkit

VAULT = """!vault |
            $ANSIBLE_VAULT;1.1;AES256
            62313365396662343061393464336163383764373764613633653634306231386433626436623361
            6134"""


def _inventory(tmp_path: Path, name: str, host_line: str) -> Path:
    """An inventory in the form `name` says (hosts.ini or hosts.yml) whose one host local1 carries
    `host_line`; the shared settings come from group_vars/all.yml, as a real team keeps them."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(
        f"ansible_connection: local\nlock_dir: {tmp_path / 'lock'}\nstate_dir: {tmp_path / 'state'}\n"
        f"compose_project_dir: {tmp_path / 'project'}\ncompose_project_name: shop\napi_service: api\n"
    )
    path = tmp_path / name
    if name.endswith(".ini"):
        path.write_text(f"[app]\nlocal1 {host_line}\n")
    else:
        hosts = f"      hosts:\n        local1:\n          {host_line}\n"
        path.write_text(f"all:\n  children:\n    app:\n{hosts}")
    return path


@pytest.mark.parametrize(
    ("name", "host_line", "want"),
    [
        ("hosts.yml", "compose_project_dir: '{{ base }}/app'",
         ["host local1: compose_project_dir: '{{ base }}/app' is a Jinja template",
          "-m ansible.builtin.debug -a var=compose_project_dir"]),
        ("hosts.yml", f"compose_project_dir: {VAULT}",
         ["host local1: compose_project_dir: is an Ansible Vault value and no vault password is given",
          "set ANSIBLE_VAULT_PASSWORD_FILE"]),
        ("hosts.ini", "ansible_connection=docker",
         ["host local1: ansible_connection: 'docker' is not supported (only ssh and local)"]),
        ("hosts.ini", "ansible_become=true ansible_become_method=su",
         ["host local1: ansible_become: ansible_become_method 'su' is not supported"]),
        ("hosts.ini", "ansible_ssh_port=abc", ["host local1: ansible_ssh_port: 'abc' is not a port number"]),
    ],
)  # fmt: skip
def test_refused_inventory_value_is_one_line_exit_2_and_nothing_runs(
    tmp_path: Path, audit: Path, name: str, host_line: str, want: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = _inventory(tmp_path, name, host_line)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    ran = labkit.inv("restart-api", "--host", "local1", audit=audit, inventory=inventory, timeout=60)
    assert ran.code == 2, (ran.code, ran.stdout[-2000:], ran.stderr[-2000:])
    assert "Traceback" not in ran.stderr and ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr[-2000:]
    assert lines[0].startswith(f"error: {inventory}: host local1: "), lines[0]
    for fragment in want:
        assert fragment in lines[0], lines[0]
    assert [r["step"] for r in labkit.audit_lines(audit)] == ["arguments"]
    assert not (tmp_path / "lock").exists(), "a host was locked: the refused value reached the run"


def test_a_million_host_range_is_one_line_exit_2(tmp_path: Path, audit: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[web]\nweb[1:1000000] ansible_connection=local\n")
    ran = labkit.inv("restart-api", "--host", "web1", audit=audit, inventory=inventory, timeout=60)
    assert ran.code == 2 and "Traceback" not in ran.stderr
    assert ran.stderr.count("\n") == 1
    assert "host range 'web[1:1000000]' expands to 1000000 hosts, more than 10000" in ran.stderr
