"""restore-db's pure half: the decision from (record, server, dump, writers), the parsers of its facts,
its settings and writers, and the SQL it sends (names quoted as identifiers)."""

from __future__ import annotations

import datetime as dt
import io
import sys
from dataclasses import replace
from typing import Any

import pytest

from remediations.actions import writers
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.facts.postgres import PgTarget
from remediations.postgres import restore_db
from remediations.postgres import restore_db_plan as plan
from remediations.postgres import restore_db_sql as sql
from remediations.postgres.restore_db_plan import Decision, Dump, DumpRead, Facts, Server, State, Writer

NOW = dt.datetime(2026, 12, 1, 19, 0, 0, tzinfo=dt.UTC)
CONF = plan.Settings("shop", "bk", "dumps/", {"orders": 100}, "orders.created_at", 26.0, 4.0,
                     "/var/lib/remediations/restore-db-shop.json")  # fmt: skip
SERVER = Server(150005, "15.5", "/var/lib/postgresql/15/main", 100 * 1024**3, 64 * 110, True, oid=16384,
                size=8 * 1024**2, owner="shop", encoding="UTF8", collate="C.UTF-8", ctype="C.UTF-8",
                databases=("postgres", "shop", "template0", "template1"))  # fmt: skip
DUMP = Dump("dumps/shop-1.dump", 70_000, NOW - dt.timedelta(hours=3), "0123456789abcdef0123456789abcdef")
READ = DumpRead(True, "", "15.5", "15.5", 15, 2)
WRITERS = (
    plan.WriterFacts(Writer("api1", "api"), True, "running"),
    plan.WriterFacts(Writer("api1", "worker"), False, "container exited"),
)


def facts(**changes: Any) -> Facts:
    base = Facts(CONF, SERVER, State(), DUMP, READ, WRITERS, NOW)
    return replace(base, **changes)


def test_a_fresh_run_restores_into_a_new_stamped_database_and_swaps_the_old_one_aside() -> None:
    got = plan.decide(facts(), abort=False)
    assert got.action == "restore"
    assert got.new_database == "shop_restore_20261201_190000"
    assert got.old_database == "shop_old_20261201_190000"
    assert got.stop == ("api1:api",)  # the stopped worker is left as it is, and not started later
    assert got.start == ("api1:api",)
    assert got.single_transaction and got.drop_first == ()


def test_production_that_is_gone_is_restored_without_an_old_name() -> None:
    gone = replace(SERVER, exists=False, oid=0, size=0, databases=("postgres",))
    got = plan.decide(facts(server=gone), abort=False)
    assert got.action == "restore" and got.old_database == ""
    lines = plan.describe(facts(server=gone), got)
    assert any(line.startswith("swap in one transaction: shop_restore_") for line in lines)


LIVE = {"key": DUMP.key, "etag": DUMP.etag, "oid": SERVER.oid, "restored_at": "2026-12-01T18:00:00+00:00"}


@pytest.mark.parametrize(
    ("state", "dump", "server", "action"),
    [
        (State(live=LIVE), DUMP, SERVER, "nothing"),  # the same dump is live in the same database
        (State(live=LIVE), replace(DUMP, key="dumps/shop-2.dump"), SERVER, "restore"),  # a newer dump
        (State(live=LIVE), replace(DUMP, etag="f" * 32), SERVER, "restore"),  # same key, other content
        (State(live=LIVE), DUMP, replace(SERVER, oid=99999), "restore"),  # production was replaced since
        (State(), DUMP, SERVER, "restore"),
    ],
)
def test_a_rerun_has_nothing_to_do_only_when_the_record_says_this_dump_made_this_database(
    state: State, dump: Dump, server: Server, action: str
) -> None:
    got = plan.decide(facts(state=state, dump=dump, server=server), abort=False)
    assert got.action == action, got.reason
    if action == "nothing":
        assert "already holds s3://bk/dumps/shop-1.dump" in got.reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"read": DumpRead(False, "pg_restore: error: could not read from input file: end of file")},
         "does not read to its end on the host: pg_restore: error: could not read"),
        ({"read": replace(READ, dumped_from="16.2")},
         "the dump is from PostgreSQL 16.2 and the server is 15.5"),
        ({"server": replace(SERVER, free_bytes=1024)}, "has 1.0 KiB free, the restore needs about"),
        ({"server": replace(SERVER, free_bytes=int(8 * 1024**2 * 1.2))}, "the restore needs about 10.0 MiB"),
    ],
)  # fmt: skip
def test_the_preflight_refuses_with_nothing_changed(change: dict[str, Any], why: str) -> None:
    got = plan.decide(facts(**change), abort=False)
    assert got.action == "refuse" and why in got.reason and got.reason.endswith("nothing changed")


def test_an_older_dump_restores_into_a_newer_server() -> None:
    assert plan.decide(facts(read=replace(READ, dumped_from="13.4")), abort=False).action == "restore"
    assert plan.decide(facts(read=replace(READ, dumped_from="9.6.24")), abort=False).action == "restore"


def test_a_dump_bigger_than_half_the_lock_table_is_restored_without_a_single_transaction() -> None:
    big = replace(READ, entries=SERVER.lock_capacity // 2 + 1)
    got = plan.decide(facts(read=big), abort=False)
    assert got.action == "restore" and not got.single_transaction
    assert any("--exit-on-error (its 3521 entries" in line for line in plan.describe(facts(read=big), got))


INTERRUPTED = State(phase=plan.RESTORING, dump=DUMP.key, new_database="shop_restore_20261201_180000",
                    old_database="shop_old_20261201_180000", writers=["api1:api", "api2:api"],
                    started_at="2026-12-01T18:00:00+00:00")  # fmt: skip
HALF_MADE = replace(SERVER, databases=(*SERVER.databases, "shop_restore_20261201_180000"))


def test_a_run_interrupted_before_its_swap_is_finished_by_the_next_one() -> None:
    got = plan.decide(facts(state=INTERRUPTED, server=HALF_MADE), abort=False)
    assert got.action == "restore"
    assert got.drop_first == ("shop_restore_20261201_180000",)
    assert got.stop == ("api1:api",)  # running again meanwhile: stopped again
    assert got.start == ("api1:api", "api2:api")  # and the one still stopped is started at the end


def test_the_same_dump_is_restored_again_after_an_interruption_even_if_it_was_live_before() -> None:
    state = replace(INTERRUPTED, live=LIVE)
    assert plan.decide(facts(state=state, server=HALF_MADE), abort=False).action == "restore"


def test_abort_rolls_back_an_interrupted_run_and_is_a_noop_otherwise() -> None:
    got = plan.decide(facts(state=INTERRUPTED, server=HALF_MADE), abort=True)
    assert got.action == "rollback" and got.drop_first == ("shop_restore_20261201_180000",)
    assert got.start == ("api1:api", "api2:api") and not got.failure
    assert plan.decide(facts(state=INTERRUPTED), abort=True).drop_first == ()  # the host dropped it itself
    assert plan.decide(facts(), abort=True).action == "nothing"


def test_a_refused_preflight_after_an_interruption_still_starts_the_writers() -> None:
    got = plan.decide(facts(state=INTERRUPTED, server=HALF_MADE, read=DumpRead(False, "bad")), abort=False)
    assert got.action == "rollback" and got.start == ("api1:api", "api2:api")
    assert "rolled back" in got.failure


def test_a_run_that_swapped_is_finished_whatever_is_asked() -> None:
    swapped = replace(INTERRUPTED, phase=plan.SWAPPED)
    for abort in (False, True):
        got = plan.decide(facts(state=swapped), abort=abort)
        assert got.action == "finish" and got.start == ("api1:api", "api2:api")


# ------------------------------------------------------------------------------------ parsers


def test_the_dump_read_keeps_versions_and_entries_and_fails_on_a_cut_dump() -> None:
    out = "\n".join([
        "-- Dumped from database version 15.5 (Debian 15.5-1)", "-- Dumped by pg_dump version 15.6",
        "-- Name: customers; Type: TABLE; Schema: public; Owner: postgres",
        "-- Name: orders; Type: TABLE; Schema: public; Owner: postgres",
        "-- Data for Name: orders; Type: TABLE DATA; Schema: public; Owner: postgres", "@@rc 0",
    ])  # fmt: skip
    read = sql.parse_dump_read(out, "")
    assert read == DumpRead(True, "", "15.5 (Debian 15.5-1)", "15.6", 3, 1)
    cut = sql.parse_dump_read(out.replace("@@rc 0", "@@rc 1"), "pg_restore: error: could not read\n")
    assert not cut.ok and cut.error == "pg_restore: error: could not read"
    assert not sql.parse_dump_read("", "").ok  # the read never ended: no exit status at all


def test_the_dump_read_parses_the_listing_of_pg_restore_l() -> None:
    out = "\n".join([
        "@@toc ;     TOC Entries: 7",
        "@@toc ;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)",
        "@@toc ;     Dumped by pg_dump version: 15.18 (Debian 15.18-0+deb12u1)",
        "@@toc ; Selected TOC Entries:",
        "@@toc 214; 1259 17178 TABLE public orders postgres",
        "@@toc 3340; 0 17178 TABLE DATA public orders postgres",
        "@@toc 3197; 2606 17184 CONSTRAINT public orders orders_pkey postgres",
        "@@rc 0",
    ])  # fmt: skip
    read = sql.parse_dump_read(out, "")
    version = "15.18 (Debian 15.18-0+deb12u1)"
    assert read == DumpRead(True, "", version, version, 3, 1)
    assert not sql.parse_dump_read(out.replace("@@rc 0", "@@rc 1"), "pg_restore: error: x\n").ok


@pytest.mark.parametrize(("text", "major"), [("15.5", 150000), ("16.2 (Debian 16.2-1)", 160000),
                                             ("9.6.24", 90600), ("", 0), ("devel", 0)])  # fmt: skip
def test_major_versions(text: str, major: int) -> None:
    assert sql.major_of(text) == major


def test_the_record_round_trips_and_a_foreign_file_is_refused() -> None:
    assert State.parse(INTERRUPTED.to_json(), "p") == INTERRUPTED
    with_etag = replace(INTERRUPTED, dump_etag="abc", live=LIVE)
    assert State.parse(with_etag.to_json(), "p") == with_etag
    assert State.parse("", "p") == State()
    with pytest.raises(HostError, match="p is not a restore-db record"):
        State.parse("[1, 2", "p")
    assert INTERRUPTED.idle().phase == plan.IDLE and INTERRUPTED.idle().writers == []


def test_the_server_facts_parse() -> None:
    payload = {"version_num": 150005, "version": "15.5", "data_directory": "/d", "lock_capacity": 7040,
               "database": {"oid": 5, "size": 10, "owner": "o", "encoding": "UTF8", "collate": "C",
                            "ctype": "C", "connections": 2}, "databases": ["postgres", "shop"]}  # fmt: skip
    server = sql.parse_server(payload, 99)
    assert server.exists and server.major == 150000 and server.oid == 5 and server.connections == 2
    assert server.databases == ("postgres", "shop")
    assert not sql.parse_server({**payload, "database": None}, 99).exists
    assert sql.parse_server({**payload, "version_num": 90624}, 99).major == 90600


# ------------------------------------------------------------------------- settings, writers


@pytest.mark.parametrize("name", ["Shop", "shop-db", "postgres", "template1", "a" * 40, "", "x; drop"])
def test_database_names_outside_the_rules_are_bad_input(name: str) -> None:
    with pytest.raises(UsageError):
        plan.check_database(name, "--database")


def test_database_names_within_them_are_taken() -> None:
    assert plan.check_database("shop_2", "--database") == "shop_2"
    longest = "a" * 39  # and _restore_20261201_190000: 63 characters
    assert plan.check_database(longest, "--database") == longest
    assert len(plan.stamped(longest, plan.NEW_INFIX, NOW)) == 63


def test_settings_need_a_database() -> None:
    host = Host("db1", {"backup_s3_bucket": "bk"}, source="inv.yml")
    with pytest.raises(UsageError, match="give --database NAME or set restore_db_database"):
        plan.settings(host, None)
    assert plan.settings(host, "shop").state_path == "/var/lib/remediations/restore-db-shop.json"
    other = Host("db1", {"backup_s3_bucket": "bk", "restore_db_database": "Shop"}, source="inv.yml")
    with pytest.raises(UsageError, match="restore_db_database"):
        plan.settings(other, None)


def inventory() -> Inventory:
    db = Host("db1", {"restore_db_writers": {"api": ["api", "worker"]}}, ("db",), "inv.yml")
    api = {n: Host(n, {"compose_project_dir": "/srv/shop"}, ("api",), "inv.yml") for n in ("api1", "api2")}
    bare = Host("cron1", {}, (), "inv.yml")
    return Inventory("inv.yml", {"db1": db, **api, "cron1": bare}, {"api": ["api1", "api2"], "db": ["db1"]})


def test_writers_come_from_the_inventory_and_stop_flags() -> None:
    inv = inventory()
    found = writers.resolve(inv, inv.hosts["db1"], [Writer("api2", "celery"), Writer("api1", "api")])
    assert [(h.name, s) for h, s in found] == [
        ("api1", ["api", "worker"]),
        ("api2", ["api", "worker", "celery"]),
    ]


@pytest.mark.parametrize(
    ("stop", "why"),
    [
        ([Writer("nohost", "api")], "--stop nohost:api: no host nohost"),
        ([Writer("cron1", "api")], "missing required var 'compose_project_dir'"),
    ],
)
def test_writers_that_cannot_be_stopped_are_bad_input(stop: list[Writer], why: str) -> None:
    inv = inventory()
    with pytest.raises(UsageError, match=why):
        writers.resolve(inv, inv.hosts["db1"], stop)


@pytest.mark.parametrize("text", ["api1", "api1:", ":api", "api1:bad service"])
def test_stop_flags_are_host_colon_service(text: str) -> None:
    with pytest.raises(UsageError):
        Writer.parse(text)


def test_dump_and_latest_are_one_or_the_other() -> None:
    with pytest.raises(UsageError, match="--dump and --latest"):
        restore_db.RestoreDb.from_values(restore_db.RestoreDb.params.parse({"dump": "k", "latest": True}))
    with pytest.raises(UsageError, match="--abort restores nothing"):
        restore_db.RestoreDb.from_values(restore_db.RestoreDb.params.parse({"abort": True, "latest": True}))
    with pytest.raises(UsageError, match="not a compose service name"):
        restore_db.RestoreDb.params.parse({"stop": ["api1:bad name"]})


# ------------------------------------------------------------------------------ SQL and shell


def test_names_are_quoted_as_identifiers_and_the_swap_is_one_transaction() -> None:
    swap = sql.swap_sql("shop", "shop_restore_x", "shop_old_x", 150005, "it's restored")
    lines = swap.splitlines()
    assert lines[0] == "begin;" and "commit;" in lines
    assert 'alter database "shop" rename to "shop_old_x";' in lines
    assert 'alter database "shop_restore_x" rename to "shop";' in lines
    assert "pg_terminate_backend(pid, 10000)" in swap and "'it''s restored'" in swap
    assert lines.index("commit;") > max(i for i, line in enumerate(lines) if "rename" in line)
    create = sql.create_sql("shop_restore_x", SERVER, "c")
    assert create.startswith('create database "shop_restore_x" with template template0 owner "shop" ')
    assert sql.drop_sql("shop_restore_x") == 'drop database if exists "shop_restore_x" with (force);\n'


def test_the_restore_command_quotes_and_drops_on_failure() -> None:
    command = sql.restore_command(PgTarget(), "shop_restore_x", single=True)
    assert "pg_restore -p 5432 --exit-on-error --single-transaction -d shop_restore_x" in command
    assert "--no-owner" not in command  # production keeps its owners and grants
    assert 'drop database if exists "shop_restore_x"' in command


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def confirm(stdin: io.StringIO, yes: bool = False) -> None:
    remediation = restore_db.RestoreDb(yes=yes)
    run: Any = type("R", (), {"facts": facts()})()
    ctx: Any = type("C", (), {"host": Host("db1", {})})()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdin", stdin)
        remediation._confirm(ctx, run)


def test_confirmation_needs_the_name_typed_on_a_terminal_or_yes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HostError, match="needs --yes or the database's name typed on a terminal"):
        confirm(io.StringIO("shop\n"))  # piped in: not a terminal
    with pytest.raises(HostError, match="'shp' is not shop; nothing changed"):
        confirm(_Tty("shp\n"))
    confirm(_Tty("shop\n"))
    assert "Type the database's name (shop) to go on" in capsys.readouterr().err
    confirm(io.StringIO(""), yes=True)


def test_decision_defaults() -> None:
    assert Decision("nothing", "x").single_transaction
