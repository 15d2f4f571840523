"""db-health and restart-db without a host: the facts script's output parsed, the decisions as a table,
the commands each way of running a cluster gives, and the bad inputs (one line, nothing run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.facts import pg_server
from remediations.facts.pg_server import Cluster, ServerFacts, facts_command, parse_facts
from remediations.facts.postgres import PgTarget
from remediations.facts.systemd import UnitFacts
from remediations.postgres import db_health, restart_db
from remediations.runbook import spec
from tests import labkit

UP = json.dumps({"in_recovery": False, "started": 1767225600.5, "version": "15.8",
                 "data_directory": "/var/lib/postgresql/15/main", "database_exists": True})  # fmt: skip


def host(**vars: object) -> Host:
    return Host("db1", dict(vars), source="inv.yml")


def output(isready: int, ctl: int | None = None, server: str | None = None, checks: str | None = None,
           log: list[str] | None = None) -> str:  # fmt: skip
    lines = [f"@@isready {isready}"]
    if ctl is not None:
        said = {0: "pg_ctl: server is running (PID: 4242)", 3: "pg_ctl: no server running",
                4: "pg_ctl: directory \"/x\" does not exist"}[ctl]  # fmt: skip
        lines += [f"@@ctl {ctl}", said]
    if server is not None:
        lines += ["@@server 0", server] if server.startswith("{") else ["@@server 2", server]
    if checks is not None:
        lines += ["@@checks 0", checks] if checks.startswith("{") else ["@@checks 2", checks]
    if log is not None:
        lines += ["@@log", *log]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- parsing


def test_an_up_server_is_parsed() -> None:
    facts = parse_facts(output(0, 0, UP, '{"t:orders": 120}'))
    assert facts.state == "up" and facts.accepting and facts.started == 1767225600.5
    assert facts.checks == {"t:orders": 120} and facts.log == ()
    assert facts.describe(5432) == "accepting connections on port 5432 (PostgreSQL 15.8, primary)"


def test_a_down_server_keeps_its_log_lines_and_pg_ctl_words() -> None:
    log = [f"2026-01-01 00:00:0{i} UTC [1] LOG:  line {i}" for i in range(5)]
    facts = parse_facts(output(2, 3, log=log))
    assert facts.state == "down" and facts.log == tuple(log)
    assert facts.describe(5432) == ("no answer on port 5432; pg_ctl status: no postmaster runs "
                                    "(pg_ctl: no server running)")  # fmt: skip


@pytest.mark.parametrize(
    ("isready", "ctl", "state"),
    [(0, 0, "up"), (0, None, "up"), (1, 0, "starting"), (2, 0, "hung"), (2, 3, "down"), (2, None, "down"),
     (2, 4, "no-cluster"), (0, 4, "no-cluster"), (3, 3, "unknown")],
)  # fmt: skip
def test_the_state_from_pg_isready_and_pg_ctl(isready: int, ctl: int | None, state: str) -> None:
    assert parse_facts(output(isready, ctl)).state == state


def test_output_without_the_marks_is_an_error_not_a_state() -> None:
    facts = parse_facts("sh: 1: as_user: not found\n")
    assert facts.state == "unknown" and "as_user: not found" in facts.error


def test_a_failed_query_and_failed_checks_say_why() -> None:
    facts = parse_facts(output(0, 0, "psql: error: FATAL:  sorry, too many clients already",
                               'psql: error: FATAL:  database "shop" does not exist'))  # fmt: skip
    assert facts.server == {} and "too many clients" in facts.server_error
    assert facts.checks is None and 'database "shop" does not exist' in facts.checks_error


# -------------------------------------------------------------------------------------- the script


def test_the_facts_script_is_valid_shell_and_quotes_every_value(tmp_path: Path) -> None:
    cluster = Cluster(PgTarget(bin_dir="/usr/lib/postgresql/15/bin", socket_dir="/run/pg sock"),
                      data_dir="/srv/pg data", log_file="/var/log/pg's.log")  # fmt: skip
    text = facts_command(cluster, "shop", "select 1;")
    assert subprocess.run(["sh", "-n", "-c", text], check=False).returncode == 0
    assert "-h '/run/pg sock'" in text and "-D '/srv/pg data' status" in text
    assert "tail -n 30 -- '/var/log/pg'\"'\"'s.log'" in text
    assert "-d shop -f -" in text


def test_the_log_is_the_units_journal_the_file_or_the_newest_in_var_log() -> None:
    assert "journalctl" in pg_server.log_command(Cluster(PgTarget(), unit="postgresql@15-main.service"))
    with_file = Cluster(PgTarget(), data_dir="/d", log_file="/l.log")
    assert "tail -n 30 -- /l.log" in pg_server.log_command(with_file)
    assert "/d.server.log" in pg_server.log_command(Cluster(PgTarget(), data_dir="/d"))  # pg_ctl's default
    assert "ls -1t -- /var/log/postgresql/*.log" in pg_server.log_command(
        Cluster(PgTarget(), start_command="pg_ctlcluster 15 main start"))


# ----------------------------------------------------------------------------------------- settings


def test_the_cluster_is_read_from_the_inventory() -> None:
    cluster = Cluster.of(host(postgres_data_dir="/var/lib/postgresql/15/main/", postgres_port=5433,
                              postgres_start_timeout="30"))  # fmt: skip
    assert cluster.data_dir == "/var/lib/postgresql/15/main" and cluster.pg.port == 5433
    assert cluster.how == "pg_ctl" and cluster.start_timeout == 30.0
    assert Cluster.of(host(postgres_unit="postgresql@15-main", postgres_data_dir="/d")).unit == \
        "postgresql@15-main.service"  # fmt: skip
    assert Cluster.of(host(postgres_start_command="pg_ctlcluster 15 main start")).how == "command"


@pytest.mark.parametrize(
    ("vars", "words"),
    [({"postgres_data_dir": "relative/dir"}, "postgres_data_dir: 'relative/dir' is not an absolute path"),
     ({"postgres_unit": "postgresql.timer"}, "postgres_unit: 'postgresql.timer' is not a systemd service"),
     ({"postgres_data_dir": "/d", "postgres_start_timeout": "-1"}, "postgres_start_timeout: '-1'")],
)  # fmt: skip
def test_bad_vars_are_one_line_naming_the_var(vars: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        Cluster.of(host(**vars))


def test_restart_db_needs_to_know_how_the_cluster_runs() -> None:
    with pytest.raises(UsageError, match=r"set postgres_unit .*postgres_start_command, or postgres_data_dir"):
        restart_db.RestartDb().validate(host())
    restart_db.RestartDb().validate(host(postgres_data_dir="/d"))


def test_db_health_database_names_are_checked() -> None:
    with pytest.raises(UsageError, match="--database 'Shop;': a database name"):
        db_health.check_database("Shop;", "--database")
    with pytest.raises(UsageError, match="--database and --server-only: give one"):
        db_health.DbHealth(database="shop", server_only=True)
    with pytest.raises(UsageError, match="restore_db_database 'x-y'"):
        db_health.DbHealth().validate(host(restore_db_database="x-y"))


# ----------------------------------------------------------------------------------------- decisions

DOWN = parse_facts(output(2, 3, log=["FATAL:  could not open file"]))
UP_FACTS = parse_facts(output(0, 0, UP))


@pytest.mark.parametrize(
    ("facts", "force", "action"),
    [(UP_FACTS, False, "none"), (UP_FACTS, True, "restart"), (DOWN, False, "start"), (DOWN, True, "start"),
     (parse_facts(output(1, 0)), False, "wait"), (parse_facts(output(2, 0)), False, "restart"),
     (parse_facts(output(2, 4)), False, "fail"), (parse_facts("garbage"), False, "fail")],
)  # fmt: skip
def test_what_restart_db_does(facts: ServerFacts, force: bool, action: str) -> None:
    assert restart_db.decide(facts, 5432, force).action == action


def test_a_healthy_server_is_left_alone_and_says_so() -> None:
    decision = restart_db.decide(UP_FACTS, 5432, False)
    assert decision.reason == "accepting connections on port 5432 (PostgreSQL 15.8, primary); left alone"


def test_a_unit_that_is_active_while_the_server_is_down_is_restarted_else_started() -> None:
    down = parse_facts(output(2))
    active = UnitFacts("postgresql@15-main.service", {"ActiveState": "active", "LoadState": "loaded"})
    failed = UnitFacts("postgresql@15-main.service", {"ActiveState": "failed", "LoadState": "loaded"})
    assert restart_db.decide(down, 5432, False, active).action == "restart"
    assert restart_db.decide(down, 5432, False, failed).action == "start"


def test_pg_ctl_commands_start_with_a_log_and_retry_and_stop_fast_then_immediately() -> None:
    cluster = Cluster(PgTarget(bin_dir="/usr/lib/postgresql/15/bin"), data_dir="/d", log_file="/l",
                      start_timeout=45)  # fmt: skip
    [start] = restart_db.commands(cluster, "start")
    assert "pg_ctl -D /d -l /l -w -t 45 start" in start and "sleep 2" in start
    stop, start_again = restart_db.commands(cluster, "restart")
    assert "-m fast -w -t 60 stop" in stop and "-m immediate -w -t 60 stop" in stop and start_again == start
    for text in (start, stop):
        assert subprocess.run(["sh", "-n", "-c", text], check=False).returncode == 0


def test_start_and_stop_commands_from_the_inventory() -> None:
    cluster = Cluster(PgTarget(), start_command="pg_ctlcluster 15 main start",
                      stop_command="pg_ctlcluster 15 main stop")  # fmt: skip
    assert restart_db.commands(cluster, "start") == ["pg_ctlcluster 15 main start"]
    assert restart_db.commands(cluster, "restart") == ["pg_ctlcluster 15 main stop",
                                                       "pg_ctlcluster 15 main start"]
    with pytest.raises(HostError, match="a restart needs postgres_stop_command"):
        restart_db.commands(Cluster(PgTarget(), start_command="x"), "restart")


# -------------------------------------------------------------------------------------------- judge

TABLES = {"orders": 100, "customers": 10}


def test_db_health_judges_the_server_and_the_database() -> None:
    good = parse_facts(output(0, 0, UP, '{"t:orders": 120, "t:customers": 12}'))
    verdict = db_health.judge(good, 5432, "shop", TABLES, primary=False)
    assert verdict.server_ok and verdict.database_ok
    assert verdict.database == "database shop: checks passed: orders 120 rows, customers 12 rows"

    gone = parse_facts(output(0, 0, UP, '{"t:orders": null, "t:customers": 3}'))
    verdict = db_health.judge(gone, 5432, "shop", TABLES, primary=False)
    assert verdict.server_ok and verdict.database_ok is False
    assert "table orders is missing" in verdict.database and "customers has 3 rows" in verdict.database

    no_db = parse_facts(output(0, 0, UP.replace('"database_exists": true', '"database_exists": false')))
    assert db_health.judge(no_db, 5432, "shop", TABLES, False).database == "database shop does not exist"


def test_db_health_on_a_down_server_shows_the_log_and_skips_the_database() -> None:
    verdict = db_health.judge(DOWN, 5432, "shop", TABLES, primary=False)
    assert not verdict.server_ok and verdict.database_ok is None
    assert verdict.server.endswith("the server log's last 1 lines:\nFATAL:  could not open file")


def test_primary_fails_a_server_in_recovery() -> None:
    standby = parse_facts(output(0, 0, UP.replace('"in_recovery": false', '"in_recovery": true')))
    assert db_health.judge(standby, 5432, "", {}, primary=False).server_ok
    verdict = db_health.judge(standby, 5432, "", {}, primary=True)
    assert not verdict.server_ok and "in recovery" in verdict.server and "--primary" in verdict.server


# ----------------------------------------------------------------------------------------- runbooks


def test_the_database_runbooks_read_and_gate_their_restores_on_an_approval() -> None:
    books = {b.name: b for b in spec.every([spec.SHIPPED])}
    down = {s.id: s for s in books["database-down"].steps}
    assert down["probe"].target == "db-health" and down["restart"].target == "restart-db"
    assert down["restore"].target == "restore-db" and down["restore"].approve
    assert down["restart"].on_failure == "escalate" and down["verify"].on_success == "tell-fixed"
    loss = {s.id: s for s in books["data-loss"].steps}
    assert loss["preview"].mode == "check" and loss["restore"].approve
    assert loss["restore"].target == "restore-pitr"
    assert books["data-loss"].variables["to"].required


def test_the_lab_inventory_says_how_db1s_cluster_runs() -> None:
    from remediations.core import inventory

    db1 = inventory.load(labkit.LAB_INVENTORY).hosts["db1"]
    cluster = Cluster.of(db1)
    assert cluster.how == "pg_ctl" and cluster.data_dir == "/var/lib/postgresql/15/lab"


def test_the_log_file_found_in_the_log_directory_is_named_not_counted_as_a_line() -> None:
    text = "@@isready 2\n@@log\n@@log /var/log/postgresql/postgresql-15-main.log\nLOG:  a\nFATAL:  b\n"
    facts = parse_facts(text)
    assert facts.log == ("LOG:  a", "FATAL:  b") and facts.log_file.endswith("postgresql-15-main.log")
    verdict = db_health.judge(facts, 5432, "", {}, primary=False)
    where = "(/var/log/postgresql/postgresql-15-main.log)"
    assert f"the server log's last 2 lines {where}:\nLOG:  a" in verdict.server
