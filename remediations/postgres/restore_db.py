"""restore-db: put a production database back from a dump in S3, without making the incident worse.

facts   on the database host, in one round trip: the server (version, data directory and its free
        space, lock table), the production database (oid, size, owner, encoding, connections), every
        database's name, and this task's record (`restore_db_plan.State`; the SQL and shell text
        are `restore_db_sql`); the row counts of
        `restore_check_tables` in production; in S3 the dump (--dump, else the newest under
        `dump_s3_prefix`), then the dump read to its end by the host's own pg_restore (streamed S3 →
        SSH stdin → `pg_restore -f -`, the SQL discarded but for its comments: the versions and the
        table of contents); on each writer host (`restore_db_writers`, --stop: `actions.writers`)
        its services' state;
decide  pure (`restore_db_plan.decide`): refuse (the dump does not read, a newer major version, too
        little disk), nothing (production already holds this dump), finish or roll back an
        interrupted run, or restore;
apply   confirm (--yes, or the database's name typed on a terminal); stop the running writers
        (`compose stop`), recorded first; restore into a NEW database from template0 with
        `pg_restore --exit-on-error` (and `--single-transaction` when the server's lock table holds
        the dump's objects); the sanity checks of restore-test on it; then one transaction
        terminates the connections to production, renames it `DB_old_STAMP` (kept, never dropped
        here) and the new one to its name; start the writers and wait until healthy. A failed
        restore or check, or a stop request before the swap, drops the new database and starts the
        writers again: production is as it was.
verify  production is the restored database (its oid), its rows and freshness, before and after.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import remote_write, writers
from remediations.actions.pg_checks import choose_dump
from remediations.core import interrupt, validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.drill import CheckOutcome, checks_sql, evaluate, split
from remediations.facts.postgres import PgTarget, human_bytes, must_ok, script
from remediations.facts.sections import parse_sections
from remediations.postgres import restore_db_fetch as fetch
from remediations.postgres import restore_db_plan as plan
from remediations.postgres import restore_db_sql as sql
from remediations.postgres.restore_db_plan import SWAPPED, Decision, Dump, Facts, State, Writer

RESTORE_TIMEOUT = 6 * 3600


def _parse_stop(value: Any, flag: str) -> list[Writer]:
    return [Writer.parse(v, flag) for v in value]


@dataclass
class Run:
    """One run on the database host: the facts, the decision and what the run did as it went."""

    facts: Facts
    decision: Decision
    pg: PgTarget
    store: Any  # S3Store
    subs: dict[str, HostContext]  # writer host name -> its context
    before: CheckOutcome | None
    state: State
    touched: bool = False  # the record says a run is in progress: a failure from here rolls back
    swapped: bool = False
    new_oid: int = 0
    stream: bool = False  # the host's own GET got none of the dump in the preflight: stream it


class RestoreDb(Remediation):
    """Restore a production database from a dump in S3: a new database, checked, then swapped in.

    --host is the database host; --database (default restore_db_database) the database. The dump is
    --dump KEY (a key, or a name under dump_s3_prefix) or the newest (--latest, the default). The
    writers (restore_db_writers: host pattern → compose services, and each --stop HOST:SERVICE) are
    stopped during the restore and started again. The old database is kept, renamed DB_old_STAMP.
    A real run needs --yes or the database's name typed on a terminal; --check shows the plan.
    --abort rolls back a run that was interrupted before its swap.
    """

    task: ClassVar[str] = "restore-db"
    params = args(
        Arg(
            "dump",
            "restore this dump (its key, or its name under dump_s3_prefix)",
            example="dumps/shop-20260115.dump",
        ),
        Arg("latest", "restore the newest dump under dump_s3_prefix (the default)", kind="flag"),
        Arg(
            "database",
            "the database to restore (default: the host's restore_db_database var)",
            parse=lambda v, f: plan.check_database(v, f),
            example="shop",
        ),
        Arg(
            "stop",
            "also stop this writer during the restore; repeatable",
            kind="list",
            parse=_parse_stop,
            example="api1:celery-worker",
        ),
        Arg("yes", "do not ask for the database's name before changing anything", kind="flag"),
        Arg(
            "abort",
            "roll back a run interrupted before its swap (drop its new database, start the "
            "writers it stopped); nothing else",
            kind="flag",
        ),
    )
    required_vars: ClassVar[tuple[str, ...]] = ("backup_s3_bucket",)

    def __init__(
        self,
        dump: str | None = None,
        latest: bool = False,
        database: str | None = None,
        stop: Sequence[Writer] = (),
        yes: bool = False,
        abort: bool = False,
    ) -> None:
        if dump and latest:
            raise UsageError("--dump and --latest: give one (--latest is the default)")
        if abort and (dump or latest):
            raise UsageError("--abort restores nothing: leave out --dump and --latest")
        self.dump, self.database, self.stop = dump, database, tuple(stop)
        self.yes, self.abort = yes, abort
        self._inventory: Inventory | None = None
        self._writers: dict[str, list[tuple[Host, list[str]]]] = {}
        self._notes: dict[str, str] = {}  # host name -> how its preflight read went, when not as asked

    def arguments(self) -> dict[str, Any]:
        return {
            "dump": self.dump,
            "database": self.database,
            "stop": [w.label for w in self.stop],
            "yes": self.yes,
            "abort": self.abort,
        }

    def prepare(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def validate(self, host: Host) -> None:
        super().validate(host)
        plan.settings(host, self.database)
        PgTarget.from_host(host)
        assert self._inventory is not None
        self._writers[host.name] = writers.resolve(self._inventory, host, self.stop)

    def deadline(self, host: Host) -> float:
        configured = validate.value(host, "run_deadline")
        return float(configured) if configured is not None else 2 * RESTORE_TIMEOUT

    # ----------------------------------------------------------------------------------- facts

    def run(self, ctx: HostContext) -> None:
        """The writer hosts stay open (and locked, in a real run) from the facts to the end."""
        with ExitStack() as stack:
            subs = {t.name: stack.enter_context(ctx.open(t)) for t, _ in self._writers[ctx.host.name]}
            run = self.gather_run(ctx, subs, stack)
            if run.decision.action == "refuse":
                ctx.record("decide", Status.FAILED, run.decision.reason)
                return
            if ctx.carry_out(self.plan(run)):
                self.verify_run(ctx, run)

    def gather_run(self, ctx: HostContext, subs: dict[str, HostContext], stack: ExitStack) -> Run:
        conf, pg = plan.settings(ctx.host, self.database), PgTarget.from_host(ctx.host)
        with ctx.step("facts") as step:
            server, state = self._server(ctx, pg, conf)
            before = self._count_quietly(ctx, pg, conf) if server.exists else None
            there = (
                f"{human_bytes(server.size)}, {server.connections} connection(s)"
                if server.exists
                else "ABSENT"
            )
            step.done(
                Status.OK,
                f"PostgreSQL {server.version}; {conf.database}: {there}; "
                f"{human_bytes(server.free_bytes)} free in {server.data_directory}; record: {state.phase}"
                + (f"; rows: {before.summary(conf)}" if before else ""),
                phase=state.phase,
            )
        self._open_recorded(ctx, subs, stack, state)
        store, dump, read = None, Dump("", 0, dt.datetime.now(dt.UTC)), sql.DumpRead(True)
        if not self.abort and state.phase != SWAPPED:
            store, dump, read = self._dump(ctx, pg, conf, state, server)
        found = tuple(writers.gather(subs, self._writers[ctx.host.name]))
        facts = Facts(conf, server, state, dump, read, found, dt.datetime.now(dt.UTC))
        made = Run(facts, plan.decide(facts, self.abort), pg, store, subs, before, state)
        made.stream = "could not fetch it" in self._notes.pop(ctx.host.name, "")
        return made

    def _open_recorded(
        self, ctx: HostContext, subs: dict[str, HostContext], stack: ExitStack, state: State
    ) -> None:
        """The hosts of writers an earlier run stopped (with a --stop this run was not given)."""
        assert self._inventory is not None
        for label in state.writers:
            name = Writer.parse(label).host
            if name not in subs and name in self._inventory.hosts:
                subs[name] = stack.enter_context(ctx.open(self._inventory.hosts[name]))

    def _server(self, ctx: HostContext, pg: PgTarget, conf: plan.Settings) -> tuple[sql.Server, State]:
        command = sql.facts_command(pg, conf.database, conf.state_path)
        result = must_ok(ctx.remote.run(command, timeout=120), "reading the server's facts")
        found = {s.name: s.body for s in parse_sections(result.stdout)}
        if "error" in found:
            raise HostError(f"PostgreSQL on {ctx.host.name} does not answer: {found['error'].strip()[-300:]}")
        state = State.parse(found.get("state", ""), conf.state_path)
        free = found.get("df", "").strip()
        if "server" not in found or not free.isdigit():
            raise HostError(f"reading the server's facts failed: {result.tail(3) or 'no output'}", result)
        server = sql.parse_server(json.loads(found["server"].strip()), int(free))
        return replace(server, tools=tuple(found.get("tools", "").split())), state

    def _count(self, ctx: HostContext, pg: PgTarget, conf: plan.Settings, database: str) -> CheckOutcome:
        """The checks of restore-test on `database`: tables, row minimums, freshness."""
        answer = self._psql(ctx, pg, checks_sql(list(conf.tables), conf.freshness), "checks", database)
        exists, measured = split(json.loads(answer))
        return evaluate(conf, exists, measured)

    def _count_quietly(self, ctx: HostContext, pg: PgTarget, conf: plan.Settings) -> CheckOutcome | None:
        """Production's counts before the restore; a production that cannot be read (the reason for
        the restore, perhaps) has none, and does not stop it."""
        try:
            return self._count(ctx, pg, conf, conf.database)
        except HostError as exc:
            if type(exc) is not HostError:  # lost, interrupted, past the deadline: the host ends
                raise
            return None

    @staticmethod
    def _psql(ctx: HostContext, pg: PgTarget, text: str, what: str, database: str = "postgres") -> str:
        result = must_ok(ctx.remote.run(script(pg.psql(database)), stdin=text.encode(), timeout=600), what)
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    def _dump(
        self, ctx: HostContext, pg: PgTarget, conf: plan.Settings, state: State, server: sql.Server
    ) -> tuple[Any, Dump, sql.DumpRead]:
        """The dump to restore, read to its end by the host's pg_restore (unless production already
        holds it: then there is nothing to read it for)."""
        from remediations.actions.s3client import S3Store

        with ctx.step("dump") as step:
            store = S3Store(ctx.host.vars)
            for secret in store.secrets:
                ctx.redactor.add_value(secret)
            where = store.where(conf.bucket, conf.prefix)
            found = choose_dump(store.list(conf.bucket, conf.prefix), conf.prefix, self.dump, where)
            dump = Dump(
                found.key, found.size, found.modified, found.etag, found.checksums, found.checksum_type
            )
            words = dump.describe(conf.bucket, dt.datetime.now(dt.UTC))
            if plan.already_live(state, server, dump):
                step.done(Status.OK, f"{words}: already live")
                return store, dump, sql.DumpRead(True)
            read, checked, note = fetch.read_dump(ctx, store, pg, conf, dump, server)
            words += note
            self._notes[ctx.host.name] = note
            if read.ok:
                words += (
                    f": reads to its end ({checked}); pg_dump {read.dumped_by} of PostgreSQL "
                    f"{read.dumped_from}, {read.entries} entries ({read.data_entries} with data)"
                )
            else:
                words += f": does NOT read: {read.error}"
            step.done(Status.OK if read.ok else Status.FAILED, words, dump=dump.key, bytes=dump.size)
        return store, dump, read

    # ---------------------------------------------------------------------------------- decide

    def plan(self, run: Run) -> Plan:
        """The decision as changes: check mode shows each, a real run applies them in order."""
        decision, facts = run.decision, run.facts
        if decision.action == "nothing":
            return Plan.nothing(decision.reason)
        lines = plan.describe(facts, decision)
        data = {
            "dump": facts.dump.key,
            "database": facts.conf.database,
            "new_database": decision.new_database,
            "old_database": decision.old_database,
            "stop": list(decision.stop),
            "start": list(decision.start),
        }
        if decision.action in ("finish", "rollback"):
            return Plan.of(
                Change(
                    decision.action,
                    f"{decision.reason}: " + "; ".join(lines),
                    lambda ctx: self._recover(ctx, run),
                    own_steps=True,
                    data=data,
                )
            )
        stopping = f"stop {', '.join(decision.stop)}" if decision.stop else "stop no writer (none running)"
        restoring = "; ".join(line for line in lines[1:] if line.startswith(("drop", "restore")))
        starting = (
            f"start the writers {', '.join(decision.start) or '(none)'}, wait until healthy, "
            "record the dump as live"
        )
        return Plan.of(
            Change(
                "stop",
                f"{lines[0]}; confirm, then {stopping}",
                self._guarded(run, self._stop),
                own_steps=True,
                data=data,
            ),
            Change("restore", restoring, self._guarded(run, self._restore), own_steps=True),
            Change(
                "checks",
                next(x for x in lines if x.startswith("check ")),
                self._guarded(run, self._checks),
                own_steps=True,
            ),
            Change(
                "swap",
                next(x for x in lines if x.startswith("swap")),
                self._guarded(run, self._swap),
                own_steps=True,
            ),
            Change("start", starting, self._guarded(run, self._finish), own_steps=True),
        )

    # ----------------------------------------------------------------------------------- apply

    def _guarded(self, run: Run, phase: Callable[[HostContext, Run], None]) -> Callable[[HostContext], None]:
        """A phase that, when it fails or is stopped before the swap, puts production back as it
        was: the new database dropped, the writers started again (shielded from the stop)."""

        def apply(ctx: HostContext) -> None:
            try:
                phase(ctx, run)
            except BaseException:
                if run.touched and not run.swapped:
                    with interrupt.shielded():
                        self._roll_back(ctx, run)
                raise

        return apply

    def _confirm(self, ctx: HostContext, run: Run) -> None:
        database = run.facts.conf.database
        if self.yes:
            return
        if not (sys.stdin and sys.stdin.isatty()):
            raise HostError(
                f"refused: restoring {database} needs --yes or the database's name typed on a "
                "terminal, and there is none; nothing changed"
            )
        sys.stderr.write(
            f"\nrestore-db replaces {database} on {ctx.host.name} with "
            f"{run.facts.dump.describe(run.facts.conf.bucket, run.facts.now)}.\n"
            f"Type the database's name ({database}) to go on: "
        )
        sys.stderr.flush()
        answer = sys.stdin.readline().strip()
        if answer != database:
            raise HostError(f"refused: {validate.shown(answer)} is not {database}; nothing changed")

    def _save(self, ctx: HostContext, run: Run, state: State) -> None:
        """The record, written whole or not at all, before what it announces is done."""
        job = remote_write.Write(
            run.facts.conf.state_path, state.to_json().encode(), mode="600", make_dir=True
        )
        remote_write.write(ctx.remote, job)
        run.state, run.touched = state, state.phase != plan.IDLE

    def _stop(self, ctx: HostContext, run: Run) -> None:
        with ctx.step("confirm") as step:
            self._confirm(ctx, run)
            step.done(Status.OK, "--yes given" if self.yes else "confirmed")
        decision = run.decision
        recorded = list(dict.fromkeys([*run.state.writers, *decision.stop]))
        self._save(
            ctx,
            run,
            replace(
                run.state,
                phase=plan.STOPPING,
                writers=recorded,
                dump=run.facts.dump.key,
                dump_etag=run.facts.dump.etag,
                new_database=decision.new_database,
                old_database=decision.old_database,
                started_at=sql.now_text(),
            ),
        )
        for label in decision.stop:
            writer = Writer.parse(label)
            writers.stop(run.subs[writer.host], writer)

    def _restore(self, ctx: HostContext, run: Run) -> None:
        conf, decision, dump = run.facts.conf, run.decision, run.facts.dump
        self._save(ctx, run, replace(run.state, phase=plan.RESTORING))
        for name in decision.drop_first:
            with ctx.step("drop leftover") as step:
                self._psql(ctx, run.pg, sql.drop_sql(name), f"dropping {name}")
                step.done(Status.CHANGED, f"dropped {name}, left half-made by an interrupted run")
        with ctx.step("restore") as step:
            new = decision.new_database
            create = sql.create_sql(new, run.facts.server, sql.NEW_COMMENT + dump.key)
            self._psql(ctx, run.pg, create, f"creating {new}")
            mode = "one transaction" if decision.single_transaction else "--exit-on-error"
            server, fell_back = run.facts.server, ""
            if fetch.host_fetches(conf, server) and not run.stream:  # not twice a GET that gets nothing
                args = (ctx, run.store, run.pg, conf, dump, server, new, decision.single_transaction)
                done = fetch.restore(*args)
                if not isinstance(done, str):
                    words = f"the database host fetched {human_bytes(done[0])} from S3 ({done[1]})"
                    step.done(Status.CHANGED, f"restored into {new} ({mode}): {words}")
                    return
                fell_back = f"; the database host could not fetch it ({done})"
            streamed = fetch.stream_restore(
                ctx, run.store, run.pg, conf, dump, new, decision.single_transaction
            )
            step.done(Status.CHANGED, f"{streamed} ({mode}){fell_back}")

    def _checks(self, ctx: HostContext, run: Run) -> None:
        conf, new = run.facts.conf, run.decision.new_database
        with ctx.step("checks") as step:
            outcome = self._count(ctx, run.pg, conf, new)
            if not outcome.ok:
                raise HostError(f"{new}: {outcome.summary(conf)}; {conf.database} was not touched")
            step.done(Status.OK, f"{new}: {outcome.summary(conf)}", rows=outcome.rows)

    def _swap(self, ctx: HostContext, run: Run) -> None:
        conf, decision, server = run.facts.conf, run.decision, run.facts.server
        with ctx.step("swap") as step:
            comment = (
                f"restored by remediations restore-db from s3://{conf.bucket}/{run.facts.dump.key} "
                f"at {sql.now_text()}"
            )
            text = sql.swap_sql(
                conf.database, decision.new_database, decision.old_database, server.version_num, comment
            )
            answer = self._psql(ctx, run.pg, text, "the swap")
            run.swapped, run.new_oid = True, int(answer or 0)
            self._save(ctx, run, replace(run.state, phase=SWAPPED))
            kept = (
                f"{conf.database} renamed {decision.old_database} (kept); " if decision.old_database else ""
            )
            step.done(Status.CHANGED, f"{kept}{decision.new_database} is now {conf.database}")

    def _finish(self, ctx: HostContext, run: Run) -> None:
        """Start the writers; once they are healthy the dump is recorded as live."""
        failed = writers.start(ctx, run.subs, run.state.writers)
        if failed:
            raise HostError(
                f"{', '.join(failed)} did not come back healthy; the restore stands "
                f"({run.facts.conf.database} is the restored database): fix them, then run "
                "again to start them"
            )
        dump = run.facts.dump
        live = {
            "key": dump.key,
            "etag": dump.etag,
            "oid": run.new_oid or run.facts.server.oid,
            "restored_at": sql.now_text(),
            "old_database": run.state.old_database,
        }
        self._save(ctx, run, replace(run.state.idle(), live=live))

    def _recover(self, ctx: HostContext, run: Run) -> None:
        """Finish a run that swapped (start its writers), or roll back one interrupted before."""
        if run.decision.action == "finish":
            run.swapped, run.new_oid = True, run.facts.server.oid
            swapped_in = Dump(run.state.dump, 0, run.facts.now, run.state.dump_etag)
            run.facts = replace(run.facts, dump=swapped_in)  # the dump to record as live
            self._finish(ctx, run)
            return
        self._roll_back(ctx, run)
        if run.decision.failure:
            raise HostError(run.decision.failure)

    def _roll_back(self, ctx: HostContext, run: Run) -> None:
        """Production as it was: the new database (and any half-made one) dropped, the writers this
        task stopped started again, the record idle."""
        names = list(
            dict.fromkeys(
                n for n in (*run.decision.drop_first, run.decision.new_database, run.state.new_database) if n
            )
        )
        with ctx.step("rollback") as step:
            for name in names:
                self._psql(ctx, run.pg, sql.drop_sql(name), f"dropping {name}")
            step.done(
                Status.CHANGED,
                f"dropped {', '.join(names) or 'nothing'}; {run.facts.conf.database} untouched",
            )
        if not writers.start(ctx, run.subs, run.state.writers):
            self._save(ctx, run, run.state.idle())

    # ---------------------------------------------------------------------------------- verify

    def verify_run(self, ctx: HostContext, run: Run) -> None:
        """Production is the restored database (its oid); its rows and freshness, before → after."""
        conf = run.facts.conf
        if not run.swapped:
            return
        with ctx.step("verify") as step:
            server, _ = self._server(ctx, run.pg, conf)
            if not server.exists or (run.new_oid and server.oid != run.new_oid):
                raise HostError(
                    f"{conf.database} is not the restored database (oid {server.oid}, expected {run.new_oid})"
                )
            after = self._count(ctx, run.pg, conf, conf.database)
            before = run.before.rows if run.before else {}
            rows = "; ".join(f"{t} {before.get(t, '?')} → {n}" for t, n in after.rows.items())
            fresh = (
                ""
                if after.newest_age is None
                else f"; newest {conf.freshness} {plan.human_age(after.newest_age)} old"
            )
            step.done(
                Status.OK if after.ok else Status.FAILED,
                f"{conf.database} is the restored database; rows before → after: {rows or 'none checked'}"
                f"{fresh}",
                rows_before=before,
                rows_after=after.rows,
                newest_age_seconds=after.newest_age,
            )
