"""The data-loss runbook on the lab: restore-pitr's throwaway cluster on db1 (port 5440, its own
archive and base backups: tests/lab/postgres/test_restore_pitr.py's fixture, db1's main cluster not
touched) loses rows and a table; check mode shows the plan and changes nothing, a real run without
an approval pauses before the restore, and `--from restore --yes` puts the cluster back as it was at
the noted time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests import labkit, pglab
from tests.lab.postgres import test_restore_pitr as pitr

pytestmark = pytest.mark.lab

cluster = pitr.cluster  # the throwaway cluster and an inventory pointing db1's tasks at it


def inventory_for(cluster_inventory: Path) -> Path:
    """db-health (the runbook's verify) checks the cluster's own table, and pg_ctl status its own
    data directory."""
    data = yaml.safe_load(cluster_inventory.read_text())
    db1 = data["all"]["children"]["db"]["hosts"]["db1"]
    db1.update(restore_check_tables={"items": 100}, postgres_data_dir=pitr.DATA)
    path = cluster_inventory.with_name("data-loss.yml")
    path.write_text(yaml.safe_dump(data))
    return path


def run(inventory: Path, audit: Path, *args: str) -> labkit.Ran:
    return labkit.inv("runbook", "data-loss", "--host", "db1", *args, audit=audit, inventory=inventory,
                      timeout=300, stdin="", env=pglab.AWS_ENV)  # fmt: skip


def test_data_loss_previews_pauses_for_approval_then_restores_to_the_time(cluster: Path, audit: Path) -> None:
    inventory = inventory_for(cluster)
    pitr.sql("create table items (id int primary key, note text); "
             "insert into items select g, 'before' from generate_series(1, 100) g", db="shop")  # fmt: skip
    pitr.base_backup()
    pitr.sql("create table keepme (x int); insert into keepme values (42); "
             "insert into items select g, 'later' from generate_series(101, 120) g", db="shop")  # fmt: skip
    time.sleep(1.1)
    noted = time.time()
    time.sleep(1.1)
    pitr.sql("delete from items where id <= 50; drop table keepme", db="shop")  # the damage
    pitr.switch_wal()
    damaged = pitr.state()
    given = ("--var", f"to={pitr.stamp(noted)}")

    check = run(inventory, audit, "--check", "--json", *given)
    assert check.code == 0, check.stderr + check.stdout
    [host] = json.loads(check.stdout)["hosts"]
    path = [(s["id"], s["status"]) for s in host["steps"]]
    assert path[:2] == [("preview", "changed"), ("restore", "changed")], path
    assert [p[0] for p in path] == ["preview", "restore", "verify", "tell"], path
    preview = host["steps"][0]["message"]
    assert "would then switch the cluster" in preview and f"{pitr.DATA} kept as" in preview, preview
    assert host["steps"][1]["note"] == "a real run asks for approval here"
    assert pitr.state() == damaged, "check mode changed nothing"

    paused = run(inventory, audit, *given)
    assert paused.code == 3, paused.stderr + paused.stdout
    assert "waiting for approval" in paused.stdout and "--from restore --yes" in paused.stdout
    assert pitr.state() == damaged, "nothing restored without an approval"

    done = run(inventory, audit, "--from", "restore", "--yes", *given)
    assert done.code == 0, done.stderr + done.stdout
    assert "data-loss on db1: changed" in done.stdout, done.stdout
    assert pitr.sql("select count(*), min(id), max(id) from items", db="shop") == "120|1|120"
    assert pitr.sql("select x from keepme", db="shop") == "42"
    assert [n for n in pitr.dirs() if n.startswith("data.pre-pitr-")], "the damaged data directory is kept"
