"""A real team's inventory layout reaches the real hosts: hosts.ini with a host range, a `host:port`
key and the legacy `ansible_ssh_host`/`ansible_ssh_user`, the settings in `group_vars/` folders and
`host_vars/` beside it. restart-api --check over it connects to api1 and api2 (real sshd, strict host
keys) and restarts nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import labkit
from tests.labkit import LAB_INVENTORY, inv

pytestmark = pytest.mark.lab

CONNECTION = ("ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_common_args")


def _team_layout(root: Path) -> Path:
    """The lab's inventory rewritten as a team keeps it: INI plus group_vars/ and host_vars/."""
    lab_vars = yaml.safe_load(LAB_INVENTORY.read_text())["all"]["vars"]
    connection = {k: v for k, v in lab_vars.items() if k in CONNECTION}
    compose = {k: v for k, v in lab_vars.items() if k not in CONNECTION}
    files = {
        # api1 by a name DNS does not know: only ansible_ssh_host (the legacy name) says where it is
        "hosts.ini": "[api]\nshop-api-a ansible_ssh_host=198.18.0.11 ansible_ssh_user=nobody-wrong\n"
                     "198.18.0.1[2:2]:22\n\n[shop:children]\napi\n",
        "group_vars/all/connection.yml": yaml.safe_dump(connection),
        "group_vars/shop/compose.yml": yaml.safe_dump(compose),
        "group_vars/api": yaml.safe_dump({"health_timeout": 20}),
        # the host's own file beats the inventory line, as in Ansible (ansible_ssh_user over ansible_user)
        "host_vars/shop-api-a.yml": yaml.safe_dump({"ansible_ssh_user": lab_vars["ansible_user"]}),
    }  # fmt: skip
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "hosts.ini"


@pytest.fixture
def healthy_api(lab: Any) -> Any:
    for host in ("api1", "api2"):
        labkit.repair(host)
    yield lab


def test_ini_inventory_with_vars_folders_reaches_the_hosts(
    healthy_api: Any, audit: Path, tmp_path: Path
) -> None:
    inventory = _team_layout(tmp_path / "prod")
    before = {h: labkit.started_at(h) for h in ("api1", "api2")}
    ran = inv("restart-api", "--host", "shop", "--check", "--json", audit=audit, inventory=inventory)
    assert ran.code == 0, ran.stderr + ran.stdout
    for name in ("shop-api-a", "198.18.0.12"):
        result = ran.host(name)
        assert result["status"] == "changed", result
        assert "would restart api" in result["message"]
    assert {h: labkit.started_at(h) for h in ("api1", "api2")} == before
