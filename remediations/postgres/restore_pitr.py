"""restore-pitr: point-in-time recovery from a base backup and the archived WAL.

facts   one round trip to the db host: the WAL archive (`wal_archive_dir`: names, sizes, mtimes,
        the base backup and timeline history files), the base backups under
        `basebackup_local_dir` (one folder each: `pg_basebackup -Ft -X none`, base.tar[.gz] and
        backup_manifest) and the server's settings; with `pitr_s3_credentials_file`, from the
        controller, the archive's S3 copy (segments, history files) and the base backups
        base-backup uploaded (pitr_s3); then the free space and the spare port (pitr_plan); before
        a switch, whether each writer (restore_db_writers, --stop) runs;
decide  pure (facts.pitr): the newest base backup that *ended* before the target (refused when
        none did, naming the oldest); every WAL segment from its start to the first one archived
        at or after the target, along the target timeline's history; a target past the archive's
        end, a missing segment or history file, a history file S3 holds that the local archive
        does not refuse with nothing changed;
apply   unpack the backup (the local tar, or its S3 parts fetched by the host) into a new data
        directory beside the old one, recovery settings in its postgresql.auto.conf
        (restore_command from the archive, recovery_target_time in UTC, promote, the timeline;
        archiving off in a drill, held before a switch), start it on the spare port (socket only)
        and wait until it promoted; then verify it (out of recovery, on the expected new
        timeline, the last replayed commit at or before the target and the recovery stopped
        before the next one, the configured tables and row minimums); then stop the running
        writers, switch the data directory (the old one renamed `DATA.pre-pitr-STAMP`, kept) and
        start the writers again; or, in a drill, stop the restore and remove it. `--drill --onto
        HOST` does the drill on a restore host, from S3 only;
verify  the cluster answers on its own port from the new directory, out of recovery, on the new
        timeline.

A failed restore stops the restored server and removes its directory: the cluster is not touched.
Each applied run writes JSON and Prometheus metrics (`restore_pitr_*`) on the controller.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, ClassVar

from remediations.actions import pitr_host as hostside
from remediations.actions import writers
from remediations.actions.drill_report import previous_success, write_results
from remediations.actions.pitr_report import metrics_text
from remediations.actions.writers import Writer
from remediations.core import interrupt
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts import pitr
from remediations.facts.drill import checks_sql, split
from remediations.facts.postgres import (
    PgTarget,
    must_ok,
    parse_sections,
    positive_number,
    script,
)
from remediations.postgres import pitr_plan, restore_drill
from remediations.postgres.pitr_plan import Restore
from remediations.postgres.pitr_settings import Onto, onto_settings, refuse, settings, target_time
from remediations.reporting.cronlog import RUN_ID_ENV


class RestorePitr(Remediation):
    """Point-in-time recovery: restore a base backup into a new data directory, replay the archived
    WAL up to --to, verify, then switch the cluster to it (the old data directory is kept).

    --to is a date, a time and an explicit UTC offset ('2024-01-15 14:30:00+03'). The base backup is
    the newest one under basebackup_local_dir that ended before the target; every WAL segment from
    its start to the target must be in wal_archive_dir, else the run refuses with nothing changed.
    The restore runs on pitr_spare_port (default postgres_port + 1) and must promote on the expected
    timeline with its last replayed commit at or before the target and pitr_check_tables holding
    their minimum rows (in pitr_check_database) before the switch. A switch needs --yes or the host
    name typed at the prompt. --drill restores and verifies, then removes the restore: the
    production cluster is not touched (without --to: to the archive's end; cron-safe). --drill
    --onto HOST restores onto another host (a restore host with PostgreSQL of the same major
    version) from S3 only: a base backup base-backup uploaded, the WAL in wal_s3_prefix, fetched
    with HOST's pitr_s3_credentials_file, into its pitr_restore_dir. Writes JSON
    (restore_pitr_json) and Prometheus metrics (restore_pitr_metrics) of every applied run.
    """

    task: ClassVar[str] = "restore-pitr"
    cron_safe: ClassVar[bool] = True  # the --drill form only: a switch refuses to run from cron
    params = args(
        Arg(
            "to",
            "the point in time to recover to, with an explicit UTC offset",
            parse=target_time,
            example="'2024-01-15 14:30:00+03'",
        ),
        Arg(
            "drill",
            kind="flag",
            help="restore and verify on the spare port, then remove it; the cluster is not touched",
        ),
        Arg("yes", kind="flag", help="switch without asking (else type the host name at the prompt)"),
        Arg(
            "stop",
            "also stop this writer (HOST:SERVICE) during the switch; repeatable (restore_db_writers "
            "of the db host are stopped too)",
            kind="list",
            parse=lambda value, flag: [Writer.parse(v, flag) for v in value],
            example="api1:celery-worker",
        ),
        Arg(
            "onto",
            "with --drill: restore onto this inventory host (from S3 only) instead of the db host",
            example="dbrestore",
        ),
    )
    required_vars: ClassVar[tuple[str, ...]] = ("wal_archive_dir", "basebackup_local_dir")
    default_serial: ClassVar[int | None] = 1

    def __init__(
        self,
        to: float | None = None,
        drill: bool = False,
        yes: bool = False,
        onto: str | None = None,
        stop: Sequence[Writer] = (),
    ) -> None:
        if to is None and not drill:
            raise UsageError(
                "--to is required: the point in time to recover to, e.g. --to '2024-01-15 "
                "14:30:00+03' (only --drill may leave it out: then it recovers to the archive's end)"
            )
        if not drill and os.environ.get(RUN_ID_ENV):
            raise UsageError(
                "restore-pitr switches a cluster only when a person runs it: from cron, give --drill"
            )
        if onto is not None and not drill:
            raise UsageError(
                f"--onto {onto}: only a --drill restores onto another host (a switch replaces the db "
                "host's own data directory): add --drill"
            )
        if stop and drill:
            raise UsageError("--stop: a drill stops no writer (the cluster is not touched): leave it out")
        self.to, self.drill, self.yes, self.onto, self.stop = to, drill, yes, onto, tuple(stop)
        self._onto: Onto | None = None
        self._subs: dict[str, HostContext] = {}  # db host → the --onto host's context
        self._inventory: Inventory | None = None
        self._writers: dict[str, list[tuple[Host, list[str]]]] = {}  # db host → writer hosts, services
        self._writer_subs: dict[str, dict[str, HostContext]] = {}
        self._running: dict[str, list[str]] = {}  # db host → the writers running before the switch

    def arguments(self) -> dict[str, Any]:
        return {"to": self.to, "drill": self.drill, "yes": self.yes, "onto": self.onto,
                "stop": [w.label for w in self.stop]}  # fmt: skip

    def prepare(self, inventory: Inventory) -> None:
        self._inventory = inventory
        if self.onto is None:
            return
        host = inventory.hosts.get(self.onto)
        if host is None:
            raise UsageError(f"--onto {self.onto}: no host {self.onto} in {inventory.source}")
        self._onto = onto_settings(host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        conf = settings(host)
        if not self.drill:  # the writers of the database: stopped during the switch
            assert self._inventory is not None
            self._writers[host.name] = writers.resolve(self._inventory, host, self.stop)
        if self._onto is not None:
            if self._onto.host.name == host.name:
                raise UsageError(f"--onto {host.name} is the db host itself: leave --onto out")
            if conf.s3 is None or conf.base_s3 is None:
                raise UsageError(
                    f"{host.source}: host {host.name}: --onto restores from S3 only: set "
                    "pitr_s3_credentials_file and backup_s3_bucket on the db host"
                )

    def run(self, ctx: HostContext) -> None:
        """With --onto the restore host, before a switch the writers' hosts stay open (and locked)
        from the facts to the end."""
        name = ctx.host.name
        with ExitStack() as stack:
            if self._onto is not None:
                self._subs[name] = stack.enter_context(ctx.open(self._onto.host))
            resolved = self._writers.get(name, [])
            self._writer_subs[name] = {t.name: stack.enter_context(ctx.open(t)) for t, _ in resolved}
            try:
                if resolved:
                    found = writers.gather(self._writer_subs[name], resolved)
                    self._running[name] = [f.writer.label for f in found if f.running]
                super().run(ctx)
            finally:
                self._subs.pop(name, None)
                self._writer_subs.pop(name, None)

    def _remote(self, ctx: HostContext) -> Any:
        """The connection the restore's commands run on: the --onto host's, or the db host's."""
        return self._subs.get(ctx.host.name, ctx).remote

    def deadline(self, host: Host) -> float:
        """The recovery's timeout and half an hour (the --onto and writer hosts too: they are held
        as long as the db host)."""
        configured = host.get("run_deadline")
        if configured is not None:
            return float(configured)
        return positive_number(host, "pitr_recovery_timeout", 3600) + 1800

    # ---------------------------------------------------------------------------------- gather

    def gather(self, ctx: HostContext) -> Restore:
        conf, pg = settings(ctx.host), PgTarget.from_host(ctx.host)
        with ctx.step("facts") as step:
            credentials = conf.s3.credentials_file if conf.s3 else ""
            command = pitr.facts_command(conf.archive_dir, conf.base_dir, pg, credentials)
            result = ctx.remote.run(command, stdin=pitr.PG_SQL.encode(), timeout=120)
            if "@@pg" not in result.stdout:
                raise HostError(f"gathering facts failed (exit {result.exit_code}): {result.tail()}", result)
            facts = pitr.parse_facts(parse_sections(result.stdout))
            sub = self._subs.get(ctx.host.name)
            plan = pitr_plan.choose(ctx, conf, facts, self.to, self._onto, sub)
            step.done(
                Status.OK,
                pitr_plan.describe(plan),
                backup=plan.backup.folder,
                in_s3=plan.backup.in_s3,
                onto=plan.onto.host.name if plan.onto else None,
                wal_first=plan.wal.first,
                wal_last=plan.wal.last,
                segments=plan.wal.count,
                timeline=plan.timeline,
                new_timeline=plan.expected,
                target=plan.target_text,
                new_dir=plan.lay.new_dir,
            )
        return plan

    # ---------------------------------------------------------------------------------- decide

    def decide(self, ctx: HostContext, facts: Restore) -> Plan:
        lay = facts.lay
        restore = Change(
            "restore",
            f"restore {facts.backup.label} into {lay.new_dir}{facts.where}, recover on port "
            f"{lay.spare_port} to {facts.target_text} and verify it",
            lambda ctx: self._restore(ctx, facts),
            own_steps=True,
            commands=(hostside.restore_script(lay, unpack=pitr_plan.unpack(facts)),),
        )
        if self.drill:
            end = Change(
                "drill",
                f"then remove {lay.new_dir}{facts.where}; the cluster is not touched",
                lambda ctx: self._drill_end(ctx, facts),
                own_steps=True,
            )
        else:
            end = Change(
                "switch",
                f"then switch the cluster to it{self._stopping(ctx)}: {lay.data_dir} kept as {lay.kept_dir}, "
                f"{lay.new_dir} becomes {lay.data_dir}",
                lambda ctx: self._switch(ctx, facts),
                own_steps=True,
                commands=(self._switch_text(facts),),
            )
        return Plan.of(restore, end, check_step="decide")

    def _stopping(self, ctx: HostContext) -> str:
        running = self._running.get(ctx.host.name, [])
        return f" (its writers {', '.join(running)} stopped during it, then started)" if running else ""

    def _switch_text(self, facts: Restore) -> str:
        lay, conf = facts.lay, facts.conf
        start = conf.start_command or hostside.default_start(
            lay, conf.log_file or f"{lay.data_dir}.server.log"
        )
        return hostside.switch_script(lay, start, conf.stop_command or hostside.default_stop(lay))

    # ----------------------------------------------------------------------------------- apply

    def _confirm(self, ctx: HostContext) -> None:
        if self.drill or self.yes:
            return
        if not sys.stdin.isatty():
            raise refuse("a switch needs --yes (or run it from a terminal and type the host name)")
        answer = input(
            f"restore-pitr replaces the data of {ctx.host.name}'s cluster; type {ctx.host.name} to go on: "
        )
        if answer.strip() != ctx.host.name:
            raise refuse("not confirmed")

    def _restore(self, ctx: HostContext, facts: Restore) -> None:
        """Unpack, recover, verify; on any failure the restore is removed and the cluster untouched."""
        facts.report.update(self._new_report(ctx, facts))
        with ctx.step("confirm") as step:
            self._confirm(ctx)
            step.done(Status.OK, "drill: the cluster is not touched" if self.drill else "switch confirmed")
        try:
            with self._phase(ctx, facts, "restore") as step:
                result = self._remote(ctx).run(
                    hostside.restore_script(facts.lay, unpack=pitr_plan.unpack(facts)),
                    timeout=6 * 3600,
                    stdin=pitr_plan.overrides(facts, self.drill).encode(),
                )
                facts.made = result.exit_code != 65
                must_ok(result, f"unpacking {facts.backup.folder} into {facts.lay.new_dir}")
                step.done(
                    Status.CHANGED,
                    f"unpacked {facts.backup.label} into {facts.lay.new_dir}{facts.where}; recovery "
                    f"started on port {facts.lay.spare_port}",
                )
            with self._phase(ctx, facts, "recover") as step:
                step.done(Status.OK, self._recover(ctx, facts))
            with self._phase(ctx, facts, "checks") as step:
                outcome = self._checks(ctx, facts)
                facts.report["rows"] = outcome.rows
                if not outcome.ok:
                    raise HostError(outcome.summary(facts.conf.checks))
                step.done(Status.OK, outcome.summary(facts.conf.checks), rows=outcome.rows)
        except BaseException as exc:
            facts.report["error"] = str(exc) or type(exc).__name__
            with interrupt.shielded():
                if facts.made:
                    self._remove(ctx, facts, "the restore failed: removed")
                self._finish(ctx, facts)
            raise

    def _recover(self, ctx: HostContext, facts: Restore) -> str:
        """Wait for the promotion, then judge it; the step's message."""
        lay = facts.lay
        result = self._remote(ctx).run(
            hostside.wait_script(lay, facts.conf.recovery_timeout), timeout=facts.conf.recovery_timeout + 120
        )
        sections = {s.name: s for s in parse_sections(result.stdout)}
        log = sections["log"].body if "log" in sections else ""
        if "promoted" not in sections:
            how = (
                "stopped"
                if "died" in sections
                else f"is still in recovery after {facts.conf.recovery_timeout:g}s"
            )
            raise HostError(
                f"the restored server {how}; its log: {' | '.join(log.strip().splitlines()[-3:])}"
            )
        spare = replace(facts.pg, port=lay.spare_port, socket_dir=lay.socket_dir)
        state = json.loads(
            self._psql(
                self._remote(ctx), spare, hostside.VERIFY_SQL, "asking the restored server"
            ).splitlines()[-1]
        )
        return self._judge(facts, state, log)

    @staticmethod
    def _judge(facts: Restore, state: dict[str, Any], log: str) -> str:
        problems, message = hostside.judge(state, log, facts.target, facts.expected)
        facts.report.update(
            timeline=state.get("timeline"),
            replayed_at=state.get("replayed_at"),
            stopped_before=hostside.stopped_at(log)[1],
        )
        if problems:
            raise HostError("the restored server is not what was asked for: " + "; ".join(problems))
        return message

    def _checks(self, ctx: HostContext, facts: Restore) -> restore_drill.CheckOutcome:
        checks, database = facts.conf.checks, facts.conf.check_database
        spare = replace(facts.pg, port=facts.lay.spare_port, socket_dir=facts.lay.socket_dir)
        answer = self._psql(self._remote(ctx), spare, checks_sql(list(checks.tables), ""), "checks", database)
        exists, measured = split(json.loads(answer))
        return restore_drill.evaluate(checks, exists, measured)

    @staticmethod
    def _psql(remote: Any, pg: PgTarget, sql: str, what: str, database: str = "postgres") -> str:
        result = remote.run(script(pg.psql(database)), stdin=sql.encode(), timeout=600)
        return must_ok(result, what).stdout.strip()

    def _remove(self, ctx: HostContext, facts: Restore, message: str) -> None:
        with ctx.step("cleanup") as step:
            must_ok(
                self._remote(ctx).run(hostside.cleanup_script(facts.lay), timeout=600),
                f"removing {facts.lay.new_dir}",
            )
            facts.made = False
            step.done(
                Status.OK,
                f"{message} {facts.lay.new_dir}{facts.where}; the cluster was not touched",
            )

    def _drill_end(self, ctx: HostContext, facts: Restore) -> None:
        try:
            self._remove(ctx, facts, "drill passed: removed")
            facts.report["success"] = True
        finally:
            self._finish(ctx, facts)

    def _switch(self, ctx: HostContext, facts: Restore) -> None:
        """Stop the running writers, switch, start them again (whatever the switch did)."""
        labels, subs = self._running.get(ctx.host.name, []), self._writer_subs.get(ctx.host.name, {})
        try:
            for label in labels:
                writer = Writer.parse(label)
                writers.stop(subs[writer.host], writer)
            self._switch_only(ctx, facts)
        finally:
            with interrupt.shielded():
                failed = writers.start(ctx, subs, labels) if labels else []
        if failed:
            raise HostError(
                f"{', '.join(failed)} did not come back healthy after the switch (the cluster is "
                "restored): start them by hand"
            )

    def _switch_only(self, ctx: HostContext, facts: Restore) -> None:
        try:
            with self._phase(ctx, facts, "switch") as step:
                result = ctx.remote.run(self._switch_text(facts), timeout=900)
                out = result.stdout
                if "@@switched" not in out:
                    facts.made = "@@moved" not in out  # before the rename the restore is still there
                    back = "; the old data directory was put back and started" if "@@rollback" in out else ""
                    raise HostError(
                        f"the switch failed (exit {result.exit_code}): {result.tail(3)}{back}", result
                    )
                facts.made = False
                step.done(
                    Status.CHANGED,
                    f"{facts.lay.data_dir} now holds the data as of {facts.target_text}; "
                    f"the old data directory is kept as {facts.lay.kept_dir}",
                )
            facts.report["success"] = True
        except BaseException as exc:
            facts.report["error"] = str(exc) or type(exc).__name__
            raise
        finally:
            self._finish(ctx, facts)

    # ---------------------------------------------------------------------------------- verify

    def verify(self, ctx: HostContext, facts: Restore, plan: Plan) -> None:
        """After a switch: the cluster answers on its port from its data directory, out of recovery,
        on the new timeline."""
        if self.drill:
            return
        with ctx.step("verify") as step:
            state = json.loads(
                self._psql(ctx.remote, facts.pg, hostside.VERIFY_SQL, "asking the cluster").splitlines()[-1]
            )
            if state.get("in_recovery") or state.get("timeline") != facts.expected:
                raise HostError(
                    f"the cluster answers but is in recovery or on timeline {state.get('timeline')}, "
                    f"expected {facts.expected}"
                )
            step.done(
                Status.OK,
                f"the cluster answers on port {facts.pg.port} from {state.get('data_directory')}, "
                f"on timeline {facts.expected}",
            )

    # --------------------------------------------------------------------------------- reports

    def _new_report(self, ctx: HostContext, facts: Restore) -> dict[str, Any]:
        return {
            "host": ctx.host.name,
            "drill": self.drill,
            "onto": facts.onto.host.name if facts.onto else "",
            "backup_in_s3": facts.backup.in_s3,
            "target": facts.target_text,
            "backup": facts.backup.folder,
            "wal_first": facts.wal.first,
            "wal_last": facts.wal.last,
            "segments": facts.wal.count,
            "target_epoch": facts.target,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "success": False,
            "phases": {},
            "rows": {},
            "error": "",
        }

    def _phase(self, ctx: HostContext, facts: Restore, name: str) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def timed() -> Any:
            start = time.monotonic()
            try:
                with ctx.step(name) as step:
                    yield step
            finally:
                facts.report["phases"][name] = round(time.monotonic() - start, 3)

        return timed()

    def _finish(self, ctx: HostContext, facts: Restore) -> None:
        conf, report = facts.conf, facts.report
        report["duration_seconds"] = round(time.monotonic() - facts.started, 3)
        report["last_success_timestamp"] = (
            time.time() if report["success"] else previous_success(conf.json_path)
        )
        write_results(ctx, conf.json_path, conf.metrics_path, report, metrics_text(ctx.host.name, report))
