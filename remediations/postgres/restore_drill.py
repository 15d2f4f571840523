"""restore-test: the weekly drill. Restore the newest dump into a scratch database and check it.

facts   PostgreSQL on the restore host answers, and whether the scratch database
        (`restore_database`, default restore_test_scratch) exists: one made by an earlier run that
        was killed (it carries our comment) is dropped first; any other database of that name is
        refused, as is a scratch name listed in `restore_protected_databases`;
        the newest dump under `dump_s3_prefix` in S3 (or the one --dump names);
decide  the drill, with the dump and the leftover to drop first: --check shows it and stops there;
apply   in one command on the restore host, create the scratch database and feed the dump into
        `pg_restore --exit-on-error --no-owner --no-acl`: fetched by the host itself (curl, a
        presigned URL on its stdin: `actions.drill_fetch`) or, with `restore_fetch: controller`
        or when the host gets none of it, streamed from the controller (S3 GET body → the SSH
        channel's stdin, a chunk at a time); no file on the controller or the host, the download
        overlaps the restore, and the whole object's byte count and (single-part) MD5 are checked
        against the GET's Content-Length and ETag; then the checks, one query
        (`facts.drill`): the tables of `restore_check_tables` exist with at least their minimum
        row counts, and the newest value of `restore_freshness_column` (table.column) is within
        `backup_rpo_hours` of the server's clock;
verify  the checks are the verification. The scratch database is always dropped afterwards, on
        failure and on interrupt (Ctrl-C or SIGTERM stop the drill after the current step, as they
        stop any run: `core.interrupt`; the drop is shielded from the stop); a SIGKILLed run
        leaves it to the next run, which drops it first.

Every run writes its result on the controller, atomically (temporary file, then rename): JSON at
`restore_test_json` and Prometheus textfile metrics at `restore_test_metrics` (`{host}` in either
path is replaced by the restore host's name).

About 500 lines on purpose: the drill's phases (cleanup, restore, checks, clean)
and their SQL read top to bottom in one module; the host-side fetch is `actions.drill_fetch`, the
checks' query `facts.drill`, the result files `actions.drill_report`.
"""

# ruff: noqa: S608 - SQL here is built only from validated names, quoted (see sql_literal)

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions import drill_fetch
from remediations.actions.drill_report import metrics_text, previous_success, write_results
from remediations.actions.pg_checks import check_vars, choose_dump, stream_into
from remediations.actions.s3client import Received, S3Store
from remediations.core import interrupt, validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import CommandResult, HostError, UsageError
from remediations.core.inventory import Host, truthy
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import RunResult, Status
from remediations.facts.drill import CheckOutcome as CheckOutcome
from remediations.facts.drill import checks_sql, split
from remediations.facts.drill import evaluate as evaluate
from remediations.facts.postgres import (
    PgTarget,
    human_bytes,
    must_ok,
    positive_number,
    script,
    sql_identifier,
    sql_literal,
)

DEFAULT_SCRATCH = "restore_test_scratch"
ALWAYS_PROTECTED = ("postgres", "template0", "template1")
SCRATCH_COMMENT = "remediations restore-test scratch database"
DEFAULT_JSON = "/var/lib/remediations/restore-test-{host}.json"
DEFAULT_METRICS = "/var/lib/prometheus/node-exporter/restore_test_{host}.prom"
DEFAULT_RPO_HOURS = 26.0
NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESTORE_TIMEOUT = 6 * 3600
FETCH_MODES = ("auto", "host", "controller")
URL_SECONDS = 120  # a presigned URL's life: the host's GET starts within it


# --------------------------------------------------------------------------------------------
# Settings (validated before any host is touched)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    scratch: str
    bucket: str
    prefix: str
    tables: Mapping[str, int]
    freshness: str  # table.column, or ""
    rpo_hours: float
    json_path: str
    metrics_path: str
    notify_success: bool
    fetch: str = "auto"  # who downloads the dump: the restore host (presigned URL) or the controller
    jobs: int = 1  # pg_restore -j: > 1 downloads the dump to a file on the host first (restore_jobs)
    spool: str = drill_fetch.DEFAULT_SPOOL  # where that file goes (restore_spool_dir)


def settings(host: Host) -> Settings:
    where = f"{host.source}: host {host.name}"
    scratch = str(host.get("restore_database") or DEFAULT_SCRATCH)
    if not NAME_RE.match(scratch):
        raise UsageError(f"{where}: restore_database {scratch!r} must be a plain lower-case name")
    protected = host.get("restore_protected_databases") or []
    if isinstance(protected, str):
        protected = [protected]
    if scratch in {*ALWAYS_PROTECTED, *(str(p) for p in protected)}:
        raise UsageError(
            f"{where}: restore_database {scratch!r} is a production database "
            "(restore_protected_databases): refusing to restore over it"
        )
    bucket = str(host.require("backup_s3_bucket"))
    tables, freshness = check_vars(host)
    fetch = str(host.get("restore_fetch") or "auto")
    if fetch not in FETCH_MODES:
        raise UsageError(f"{where}: restore_fetch {fetch!r} must be one of {', '.join(FETCH_MODES)}")
    jobs, spool = drill_fetch.jobs_and_spool(host, where)
    return Settings(
        fetch=fetch,
        jobs=int(jobs),
        spool=spool,
        scratch=scratch,
        bucket=bucket,
        prefix=str(host.get("dump_s3_prefix", "dumps/") or ""),
        tables=tables,
        freshness=freshness,
        rpo_hours=positive_number(host, "backup_rpo_hours", DEFAULT_RPO_HOURS),
        json_path=str(host.get("restore_test_json") or DEFAULT_JSON).replace("{host}", host.name),
        metrics_path=str(host.get("restore_test_metrics") or DEFAULT_METRICS).replace("{host}", host.name),
        notify_success=truthy(host.get("restore_test_notify_success", False)),
    )


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def facts_sql(scratch: str) -> str:
    return (
        "select json_build_object('version', current_setting('server_version'), 'scratch', "
        f"(select json_build_object('comment', shobj_description(oid, 'pg_database')) from pg_database "
        f"where datname = {sql_literal(scratch)}));\n"
    )


def drop_sql(scratch: str) -> str:
    return f"drop database if exists {sql_identifier(scratch)} with (force);\n"


def create_sql(scratch: str) -> str:
    return (
        f"create database {sql_identifier(scratch)};\n"
        f"comment on database {sql_identifier(scratch)} is {sql_literal(SCRATCH_COMMENT)};\n"
    )


def restore_command(pg: PgTarget, scratch: str, after: str = "") -> str:
    """Create the scratch database, then pg_restore reading the dump on stdin; when it fails (a
    cut stream included: the controller may be gone by then), the host itself drops the scratch
    database; then `after` (`checks_then_drop`)."""
    restore = pg.shell("pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-d", scratch)
    body = f"failed=0; {restore} || failed=1"
    lines = drill_fetch.create_then(pg, create_sql(scratch), drop_sql(scratch), body)
    return script(*lines, *([after] if after else []))


def facts_command(pg: PgTarget) -> str:
    """The server's facts (facts_sql on stdin), and whether the host has curl and python3 (for
    the CRC32 of the dump): one round trip."""
    return script(
        "command -v curl >/dev/null 2>&1 && echo curl",
        "command -v python3 >/dev/null 2>&1 && echo python3",
        pg.psql(),
    )


@dataclass
class Drill:
    """One drill on one restore host: what gather found, and what the drill made as it went."""

    conf: Settings
    pg: PgTarget
    report: dict[str, Any]
    started: float
    store: Any = None  # S3Store
    key: str = ""
    size: int = 0
    dump: Any = None  # the S3Object (its ETag and the checksums S3 keeps)
    leftover: bool = False
    version: str = ""  # of the server
    curl: bool = False  # on the restore host
    python: bool = False  # python3 on the restore host (the CRC32 of the dump)
    answer: str = ""  # the checks' JSON, when the restore's command ran them
    error: str = ""  # gather failed (its step is recorded); a real run still writes the result
    created: bool = False
    dropped_by_host: bool = False  # the restore's command dropped the scratch database itself


def new_report(host: Host, conf: Settings) -> dict[str, Any]:
    return {
        "host": host.name,
        "database": conf.scratch,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "success": False,
        "phases": {},
        "rows": {},
        "error": "",
    }


class RestoreTest(Remediation):
    """The weekly restore drill: the newest dump from S3 into a scratch database, then checks.

    On the restore host (--host, default the group 'restore'): restore into restore_database
    (default restore_test_scratch; never one of restore_protected_databases), check
    restore_check_tables (table: minimum rows) and restore_freshness_column against the RPO, then
    always drop the scratch database. The host fetches the dump itself with curl and a presigned
    URL (restore_fetch: auto, the default, falls back to streaming it from the controller;
    host or controller force one way). Writes JSON (restore_test_json) and Prometheus textfile metrics
    (restore_test_metrics) atomically. Exit code 1 on failure; --check says what it would do.
    """

    task: ClassVar[str] = "restore-test"
    cron_safe: ClassVar[bool] = True
    params = args(Arg("dump", "restore this dump (key, or name under dump_s3_prefix), not the newest"))
    default_hosts: ClassVar[str | None] = "restore"
    required_vars: ClassVar[tuple[str, ...]] = ("backup_s3_bucket",)

    def __init__(self, dump: str | None = None) -> None:
        self.dump = dump

    def validate(self, host: Host) -> None:
        super().validate(host)
        settings(host)

    def deadline(self, host: Host) -> float:
        """The drill of a big database takes hours: the streamed restore has its own bound; this
        one only stops a drill that hangs past it and the rest."""
        configured = validate.value(host, "run_deadline")
        return float(configured) if configured is not None else 2 * RESTORE_TIMEOUT

    def notify_anyway(self, run: RunResult, hosts: Sequence[Host]) -> bool:
        """A successful drill (its checks ran and passed) is announced too where
        `restore_test_notify_success` says so."""
        drilled = any(s.step == "checks" and s.status == Status.OK for h in run.hosts for s in h.steps)
        if not drilled or run.exit_code != 0:
            return False
        return any(settings(h).notify_success for h in hosts)

    # ---------------------------------------------------------------------------------- gather

    def gather(self, ctx: HostContext) -> Drill:
        """PostgreSQL answers and the scratch database is ours (or absent); the dump to restore.
        A failure is recorded as its step and kept in `error`: the real run writes it as the
        drill's result."""
        conf = settings(ctx.host)
        drill = Drill(conf, PgTarget.from_host(ctx.host), new_report(ctx.host, conf), time.monotonic())
        with ctx.step("facts") as step:
            drill.error = self._server(ctx, drill)
            if drill.error:
                step.done(Status.FAILED, drill.error)
                return drill
            facts_text = f"; scratch database {conf.scratch} left behind by an earlier run"
            step.done(
                Status.OK, f"PostgreSQL {drill.version} answers" + (facts_text if drill.leftover else "")
            )
        with ctx.step("select") as step:
            try:
                drill.store = store = S3Store(ctx.host.vars)
                for secret in store.secrets:
                    ctx.redactor.add_value(secret)
                drill.dump = self._choose(store, conf)
                drill.key, drill.size = drill.dump.key, drill.dump.size
            except HostError as exc:
                if type(exc) is not HostError:  # lost, interrupted, past the deadline: the host ends
                    raise
                drill.error = str(exc)
                step.done(Status.FAILED, drill.error)
                return drill
            drill.report.update(dump=f"s3://{conf.bucket}/{drill.key}", dump_bytes=drill.size)
            step.done(
                Status.OK, f"dump s3://{conf.bucket}/{drill.key} ({human_bytes(drill.size)})", dump=drill.key
            )
        return drill

    def _server(self, ctx: HostContext, drill: Drill) -> str:
        """What stops the drill on this server ("" when nothing does); sets `leftover`."""
        conf = drill.conf
        result = ctx.remote.run(facts_command(drill.pg), stdin=facts_sql(conf.scratch).encode(), timeout=60)
        if not result.ok:
            return f"PostgreSQL on the restore host does not answer: {result.tail(2)}"
        lines = result.stdout.strip().splitlines()
        drill.curl = "curl" in lines[:-1]
        drill.python = "python3" in lines[:-1]
        facts = json.loads(lines[-1])
        scratch = facts.get("scratch")
        if scratch is not None and scratch.get("comment") != SCRATCH_COMMENT:
            return (
                f"database {conf.scratch} exists and was not made by restore-test; not touched "
                "(drop it, or set restore_database to another name)"
            )
        drill.leftover = scratch is not None
        drill.version = str(facts.get("version"))
        return ""

    def _choose(self, store: Any, conf: Settings) -> Any:
        """The S3 object to restore: --dump's, else the newest under the prefix."""
        return choose_dump(
            store.list(conf.bucket, conf.prefix), conf.prefix, self.dump, f"s3://{conf.bucket}/{conf.prefix}"
        )

    # ---------------------------------------------------------------------------------- decide

    def decide(self, ctx: HostContext, facts: Drill) -> Plan:
        """The drill; or, when gather failed, only the writing of the failed drill's result."""
        conf = facts.conf
        if facts.error:
            summary = f"write the failed drill's result to {conf.json_path} and {conf.metrics_path}"
            return Plan.of(Change("report", summary, lambda ctx: self._finish(ctx, facts), own_steps=True))
        summary = (
            f"restore s3://{conf.bucket}/{facts.key} into scratch database {conf.scratch} and check "
            f"{len(conf.tables)} table(s)"
            + (f", drop the leftover {conf.scratch} first" if facts.leftover else "")
        )
        return Plan.of(Change("restore", summary, lambda ctx: self._drill(ctx, facts), own_steps=True),
                       check_step="decide")  # fmt: skip

    # ----------------------------------------------------------------------------------- apply

    def _drill(self, ctx: HostContext, drill: Drill) -> None:
        """The drill's steps; whatever happens, the scratch database is dropped and the result
        written."""
        try:
            if drill.leftover:
                with ctx.step("cleanup") as step:
                    self._psql(
                        ctx,
                        drill,
                        drop_sql(drill.conf.scratch),
                        f"dropping the leftover {drill.conf.scratch}",
                    )
                    step.done(
                        Status.CHANGED,
                        f"dropped scratch database {drill.conf.scratch} left behind by an earlier run",
                    )
            try:
                self._restore(ctx, drill)
                drill.report["success"] = self._checks(ctx, drill)
            finally:
                with interrupt.shielded():  # a stopped drill still drops what it made
                    self._clean(ctx, drill)
        except BaseException as exc:
            stopping = interrupt.requested()
            why = (
                f"interrupted by {stopping}; the drill stopped"
                if stopping
                else str(exc) or type(exc).__name__
            )
            drill.report["error"] = drill.report["error"] or why
            raise
        finally:
            self._finish(ctx, drill)

    def _psql(self, ctx: HostContext, drill: Drill, sql: str, what: str, database: str = "postgres") -> str:
        result = ctx.remote.run(script(drill.pg.psql(database)), stdin=sql.encode(), timeout=600)
        return must_ok(result, what).stdout.strip()

    @contextmanager
    def _phase(self, ctx: HostContext, name: str, report: dict[str, Any]) -> Iterator[Any]:
        """A step of the drill, its wall time in the report. Once the run was told to stop, no
        phase starts (ctx.step says so)."""
        start = time.monotonic()
        try:
            with ctx.step(name) as step:
                yield step
        finally:
            report["phases"][name] = round(time.monotonic() - start, 3)

    def _restore(self, ctx: HostContext, drill: Drill) -> None:
        """Create the scratch database and restore the dump into it: fetched by the restore host
        itself (restore_fetch auto, when it has curl, or host) or streamed from the controller."""
        conf = drill.conf
        with self._phase(ctx, "restore", drill.report) as step:
            fallback = ""
            if conf.fetch == "host" or (conf.fetch == "auto" and drill.curl):
                message = self._host_fetch(ctx, drill)
                if message.startswith("restored"):
                    step.done(Status.OK, message)
                    return
                if conf.fetch == "host":
                    raise HostError(f"the restore host could not fetch the dump: {message}")
                fallback = f"; the restore host could not fetch it ({message})"
            step.done(Status.OK, self._stream(ctx, drill) + fallback)

    def _run_restore(self, ctx: HostContext, drill: Drill, run: Any) -> CommandResult:
        """`run()` runs a script of drill_fetch.create_then; what it made is recorded."""
        made_before, drill.created = drill.created, True  # from here on it may exist: it is dropped
        result: CommandResult = run()
        if result.exit_code == drill_fetch.CREATE_FAILED:
            drill.created = made_before  # not made by this command: not ours, unless made before
            raise HostError(f"creating {drill.conf.scratch} failed: {result.tail(2)}", result)
        return result

    def _stream(self, ctx: HostContext, drill: Drill) -> str:
        """The dump streamed from S3 through the controller into pg_restore on the host."""
        conf = drill.conf
        got = Received()
        chunks = drill.store.stream(conf.bucket, drill.key, got)
        command = restore_command(drill.pg, conf.scratch, self._after(drill))
        send = lambda: stream_into(ctx.remote, command, chunks, RESTORE_TIMEOUT)  # noqa: E731
        result = self._run_restore(ctx, drill, send)
        if not result.ok:
            raise HostError(f"pg_restore failed (exit {result.exit_code}): {result.tail(3)}", result)
        checked = "its MD5 matches the ETag" if got.md5_checked else "the size matches Content-Length"
        self._ran_checks(drill, drill_fetch.parse(result.stdout))
        drill.report["streamed_bytes"] = got.received
        drill.report["fetched_by"] = "controller"
        return (f"streamed {human_bytes(got.received)} from S3 into pg_restore ({checked}); "
                f"restored into {conf.scratch}")  # fmt: skip

    def _host_fetch(self, ctx: HostContext, drill: Drill) -> str:
        """The restore host GETs the dump with a presigned URL (on curl's stdin) into pg_restore.
        Returns "restored …", or why the host got none of it (the caller may stream instead);
        any other failure raises."""
        conf = drill.conf
        where = f"s3://{conf.bucket}/{drill.key}"
        dump = drill.dump
        hasher = drill_fetch.choose_hash(dump.etag, dump.checksums, dump.checksum_type, drill.python)
        with drill.store.failing(f"presigning a GET of {where}"):
            url = drill_fetch.presigned_get(
                drill.store, conf.bucket, drill.key, URL_SECONDS, checksum=hasher == "crc32"
            )
        ctx.redactor.add_value(url)
        ctx.redactor.add_value(url.partition("Signature=")[2].partition("&")[0])  # also alone
        command = drill_fetch.fetch_script(
            drill.pg, conf.scratch, create_sql(conf.scratch), drop_sql(conf.scratch), hasher=hasher,
            jobs=conf.jobs, size=drill.size, spool=conf.spool, after=self._after(drill),
        )  # fmt: skip
        config = drill_fetch.curl_config(url, checksum=hasher == "crc32")
        result = self._run_restore(
            ctx, drill, lambda: ctx.remote.run(command, stdin=config, timeout=RESTORE_TIMEOUT)
        )
        got = drill_fetch.parse(result.stdout)
        if drill_fetch.not_fetched(got):  # the script dropped the scratch database
            return drill_fetch.why_not(got, result.tail(1))
        problem, checked = drill_fetch.verdict(got, where, hasher)
        drill.report["streamed_bytes"] = got.bytes
        if problem:
            raise HostError(problem + (f"; pg_restore exit {got.restore}" if got.restore else ""), result)
        if not result.ok:
            raise HostError(f"pg_restore failed (exit {got.restore}): {result.tail(3)}", result)
        drill.report["fetched_by"] = "host"
        drill.report["integrity"] = checked
        self._ran_checks(drill, got)
        how = (
            f"to a file, then pg_restore -j {conf.jobs}"
            if got.mode == "file"
            else "into pg_restore" + (f" ({got.mode})" if got.mode.startswith("stream (") else "")
        )
        return (f"restored into {conf.scratch}: the restore host fetched {human_bytes(got.bytes)} "
                f"from S3 {how} ({checked})")  # fmt: skip

    def _after(self, drill: Drill) -> str:
        """The checks and the drop, run by the restore's own command (`checks_then_drop`)."""
        checks = checks_sql(list(drill.conf.tables), drill.conf.freshness)
        return drill_fetch.checks_then_drop(
            drill.pg, drill.conf.scratch, checks, drop_sql(drill.conf.scratch)
        )

    def _ran_checks(self, drill: Drill, got: drill_fetch.Fetched) -> None:
        """The checks' answer the restore's command printed; a scratch database it dropped is no
        longer the drill's to drop."""
        drill.answer = got.checks
        if got.checks and got.dropped:
            drill.created = False
            drill.dropped_by_host = True

    def _checks(self, ctx: HostContext, drill: Drill) -> bool:
        conf, report = drill.conf, drill.report
        with self._phase(ctx, "checks", report) as step:
            sql = checks_sql(list(conf.tables), conf.freshness)
            answer = drill.answer or self._psql(ctx, drill, sql, "checks", conf.scratch)
            exists, measured = split(json.loads(answer))
            outcome = evaluate(conf, exists, measured)
            report["rows"] = outcome.rows
            report["newest_age_seconds"] = outcome.newest_age
            if not outcome.ok:
                report["error"] = outcome.summary(conf)
            step.done(Status.OK if outcome.ok else Status.FAILED, outcome.summary(conf), rows=outcome.rows)
        return outcome.ok

    def _clean(self, ctx: HostContext, drill: Drill) -> None:
        if drill.dropped_by_host:
            done = f"dropped scratch database {drill.conf.scratch} (by the restore's command)"
            ctx.record("drop", Status.OK, done)
            return
        if drill.created:
            with ctx.step("drop") as step:
                self._psql(ctx, drill, drop_sql(drill.conf.scratch), f"dropping {drill.conf.scratch}")
                step.done(Status.OK, f"dropped scratch database {drill.conf.scratch}")

    def _finish(self, ctx: HostContext, drill: Drill) -> None:
        """Write the drill's result (JSON and metrics) on the controller."""
        conf, report = drill.conf, drill.report
        report["error"] = report["error"] or drill.error
        report["duration_seconds"] = round(time.monotonic() - drill.started, 3)
        now = time.time()
        last = now if report["success"] else previous_success(conf.json_path)
        report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        report["last_success_timestamp"] = last
        write_results(ctx, conf.json_path, conf.metrics_path, report, metrics_text(ctx.host.name, report))
