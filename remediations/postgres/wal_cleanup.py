"""wal-cleanup: delete archived WAL segments that no retained base backup needs.

facts   one round trip to the db host: the archive directory's files and sizes, every base backup
        history file (`*.backup`) in it, and from PostgreSQL what holds pg_wal/ (replication slots
        and the WAL each retains, pg_stat_archiver, pg_wal's size); then, on the controller, the
        archive prefix in S3 (one listing) and, only when segments are deletable, a second round
        trip for the MD5 of those segments (at most VERIFY_MAX of them);
decide  pure: the newest `wal_keep_base_backups` base backups are kept; the cut point is the start
        segment of the oldest of them, and a segment is deletable when it sorts before the cut point
        ignoring the timeline, exactly as pg_archivecleanup decides. Walking the deletable segments
        oldest first, the first one whose S3 copy is not proven the same stops the walk: it and
        every newer one are kept. "The same" is the same size *and* the same MD5: every segment is
        16 MiB, so the size alone says nothing. The S3 side's MD5 is the object's ETag for a
        single-part upload (the lab's archive_command uploads with one PUT), else the MD5 of the
        object read back (multipart uploads, SSE-KMS), at most `wal_s3_readback_max` per run;
apply   `rm` of exactly the planned files in the archive directory (never pg_wal/ itself);
verify  re-list the archive directory: the planned files are gone.

A failing archiver and an inactive replication slot that retains WAL are warnings: ok steps a
person must read, shown under the host's line, and exit code 3 (results.WARNING_EXIT_CODE).

`--drop-inactive-slot NAME` drops one named replication slot, only when it exists and is inactive.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions.s3client import S3Object, S3Store
from remediations.actions.wal_s3 import s3_md5s
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.postgres import PgTarget, must_ok, parse_sections, script
from remediations.facts.wal import (
    PG_FACTS_SQL,
    ArchiveFacts,
    ArchiveFile,
    BaseBackup,
    PgFacts,
    RemoteCopy,
    candidates,
    checksum_command,
    decide_slot,
    describe,
    facts_command,
    inside_pg_wal,
    is_segment,
    keep_set,
    older_than_cut,
    parse_facts,
    parse_md5sum,
    pg_wal_report,
    pg_warnings,
)

DEFAULT_KEEP = 2
DEFAULT_PREFIX = "wal/"
SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")
MAX_LISTED = 200
# Segments checksummed per run (16 MiB each: 4 GiB of reading on the host at most); the rest wait
# for the next run, which continues where this one stopped.
VERIFY_MAX = 256
DEFAULT_READBACK_MAX = 64


def slot_name(value: Any, flag: str) -> str:
    """--drop-inactive-slot: a replication slot's name."""
    name = str(value)
    if not SLOT_NAME_RE.match(name):
        raise UsageError(f"{flag} {name!r}: a slot name is 1-63 characters of a-z, 0-9 and _")
    return name


# --------------------------------------------------------------------------------------------
# Which archived segments to delete (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupPlan:
    delete: tuple[ArchiveFile, ...] = ()
    cut: BaseBackup | None = None
    kept_backups: tuple[BaseBackup, ...] = ()
    held: str = ""  # why segments older than the cut point are kept: S3 does not prove a copy
    deferred: str = ""  # why they are kept for now: this run's checksum limits
    nothing_because: str = ""

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.delete)


def to_checksum(
    files: Sequence[ArchiveFile], uploaded: Mapping[str, S3Object], limit: int = VERIFY_MAX
) -> list[ArchiveFile]:
    """The candidates whose MD5 the host computes: oldest first, up to the first one S3 lacks at
    that size (it stops the walk anyway), at most `limit`."""
    chosen: list[ArchiveFile] = []
    for f in files[:limit]:
        remote = uploaded.get(f.name)
        if remote is None or remote.size != f.size:
            break
        chosen.append(f)
    return chosen


def decide(
    files: Sequence[ArchiveFile],
    backups: Sequence[BaseBackup],
    keep: int,
    uploaded: Mapping[str, RemoteCopy] | None,
    local_md5: Mapping[str, str] | None = None,
    where: str = "S3",
    suffix: str = "",
    verify_max: int = VERIFY_MAX,
) -> CleanupPlan:
    """Pure: which archived files to delete, and why the others are kept.

    `uploaded` maps file name → what S3 holds (None: S3 was not consulted, as when nothing is
    deletable anyway); `local_md5` maps file name → the MD5 the host computed.
    """
    if not backups:
        return CleanupPlan(
            nothing_because="no base backup history file (*.backup) in the archive: "
            "cannot tell which segments a base backup needs; nothing deleted"
        )
    kept = keep_set(backups, keep)
    cut = kept[0]
    deletable = older_than_cut(files, cut.start_segment, suffix)
    if not deletable:
        return CleanupPlan(
            cut=cut, kept_backups=kept, nothing_because=f"no archived segment older than {cut.start_segment}"
        )
    if uploaded is None:
        raise ValueError("what S3 holds is needed when there are candidates")
    local_md5 = local_md5 or {}
    delete: list[ArchiveFile] = []
    held = deferred = ""
    for index, f in enumerate(deletable):
        remote = uploaded.get(f.name)
        here = local_md5.get(f.name, "")
        if remote is None:
            held = f"{f.name} is missing from {where}"
        elif remote.size != f.size:
            held = f"{f.name} has {remote.size} bytes in {where} but {f.size} here"
        elif index >= verify_max:
            deferred = f"{f.name} not compared: this run checksums at most {verify_max} segments"
        elif not here:
            held = f"{f.name}: no MD5 of the archived file here (md5sum failed on the host)"
        elif remote.deferred:
            deferred = f"{f.name} in {where} not compared: {remote.deferred}"
        elif not remote.md5:
            held = f"{f.name} in {where}: {remote.unknown_why or 'its MD5 is not known'}"
        elif remote.md5 != here:
            held = f"{f.name} in {where} has MD5 {remote.md5} ({remote.md5_from}) but {here} here"
        if held or deferred:
            newer = len(deletable) - len(delete) - 1
            tail = f": kept it and every newer one ({newer} more segment(s) older than the cut point)"
            if held:
                held += tail
            else:
                deferred += tail + "; the next run continues"
            break
        delete.append(f)
    return CleanupPlan(tuple(delete), cut, kept, held, deferred)


def basis(plan: CleanupPlan) -> str:
    """Why the cut point is where it is, in words."""
    if plan.cut is None:
        return ""
    names = ", ".join(b.history_file for b in plan.kept_backups)
    return (
        f"cut point {plan.cut.start_segment} (oldest of {len(plan.kept_backups)} kept base "
        f"backup(s): {names})"
    )


def listing(files: Sequence[ArchiveFile]) -> str:
    """The files to delete, one a line (at most MAX_LISTED), for --diff."""
    text = "\n".join(f"- {f.name} ({f.size} bytes)" for f in files[:MAX_LISTED])
    if len(files) > MAX_LISTED:
        text += f"\n… and {len(files) - MAX_LISTED} more"
    return text


def nothing_to_delete(plan: CleanupPlan) -> str:
    reason = plan.held or plan.deferred or plan.nothing_because
    why = basis(plan)
    return f"nothing to delete: {reason}" + (f"; {why}" if why else "")


# --------------------------------------------------------------------------------------------
# The remediation
# --------------------------------------------------------------------------------------------


@dataclass
class WalFacts:
    conf: WalSettings
    pg: PgTarget
    archive: ArchiveFacts
    copies: dict[str, RemoteCopy] | None = None  # what S3 holds (None: not consulted)
    local: dict[str, str] | None = None  # the MD5 of the checked segments, here


class WalCleanup(Remediation):
    """Delete archived WAL segments (wal_archive_dir) that no retained base backup needs.

    The cut point is the start segment of the oldest of the wal_keep_base_backups (default 2) newest
    base backups, from their .backup history files, as pg_archivecleanup computes it. A segment is
    deleted only when it is in S3 (wal_s3_bucket, wal_s3_prefix) with the same size and MD5 (the
    ETag of a single-part upload, else the object read back); the first one that is not keeps
    itself and every newer one, and fails the host. pg_wal/ is never touched. The result also says
    what holds pg_wal/: replication slots (and the WAL each retains), archiver failures, the age of
    the last archived segment; a failing archiver and an inactive slot retaining WAL are warnings
    (exit code 3). --check lists what it would delete (--diff: the files).
    """

    task: ClassVar[str] = "wal-cleanup"
    cron_safe: ClassVar[bool] = True
    params = args(
        Arg("drop_inactive_slot", "also drop this replication slot, only if it exists and is inactive",
            parse=slot_name),
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("wal_archive_dir",)

    def __init__(self, drop_inactive_slot: str | None = None) -> None:
        self.drop_inactive_slot = (
            None if drop_inactive_slot is None else slot_name(drop_inactive_slot, "--drop-inactive-slot")
        )

    def validate(self, host: Host) -> None:
        super().validate(host)
        settings(host)

    # ---------------------------------------------------------------------------------- gather

    def gather(self, ctx: HostContext) -> WalFacts:
        conf = settings(ctx.host)
        facts = WalFacts(conf, PgTarget.from_host(ctx.host), ArchiveFacts())
        with ctx.step("facts") as step:
            facts.archive = archive = self._archive(ctx, facts)
            if archive.missing:
                raise HostError(
                    f"archive directory {conf.archive_dir} does not exist on the host; nothing deleted"
                )
            if inside_pg_wal(archive.realpath, archive.pg.data_directory):
                raise HostError(
                    f"wal_archive_dir {conf.archive_dir} is PostgreSQL's own pg_wal/ ({archive.realpath}); "
                    "refusing to touch it"
                )
            segments = [f for f in archive.files if is_segment(f.name, conf.suffix)]
            step.done(
                Status.OK,
                f"{conf.archive_dir}: {describe(sorted(segments, key=lambda f: f.name))}, "
                f"{len(archive.backups)} base backup history file(s)",
                segments=len(segments),
                bytes=sum(f.size for f in segments),
                base_backups=[b.history_file for b in sorted(archive.backups, key=lambda b: b.order)],
            )
        self._report_pg_wal(ctx, archive.pg)
        deletable = candidates(archive.files, archive.backups, conf.keep, conf.suffix)
        if deletable:
            self._s3_copies(ctx, facts, deletable)
        return facts

    @staticmethod
    def _archive(ctx: HostContext, facts: WalFacts) -> ArchiveFacts:
        """The archive directory and PostgreSQL's view of pg_wal/: one round trip."""
        command = facts_command(facts.conf.archive_dir, facts.pg)
        result = ctx.remote.run(command, stdin=PG_FACTS_SQL.encode(), timeout=120)
        if "@@pg" not in result.stdout:
            raise HostError(f"gathering facts failed (exit {result.exit_code}): {result.tail()}", result)
        return parse_facts(parse_sections(result.stdout))

    @staticmethod
    def _report_pg_wal(ctx: HostContext, pg: PgFacts) -> None:
        if pg.error:
            ctx.record("pg_wal", Status.FAILED, f"cannot ask PostgreSQL what holds pg_wal/: {pg.error}")
            return
        ctx.record(
            "pg_wal",
            Status.OK,
            pg_wal_report(pg),
            wal_bytes=pg.wal_bytes,
            slots=[vars(s) for s in pg.slots],
            archiver=pg.archiver,
        )
        # Not the run's doing and not for it to fix, so not a failure; but an hourly cron job that
        # stays silent while pg_wal/ fills the disk is worse: a warning, and exit code 3.
        for step, message in pg_warnings(pg):
            ctx.record(step, Status.OK, message).warning = True

    @staticmethod
    def _s3_copies(ctx: HostContext, facts: WalFacts, deletable: Sequence[ArchiveFile]) -> None:
        """What S3 holds of the deletable segments: one listing, then the MD5s here and there."""
        conf = facts.conf
        with ctx.step("s3") as step:
            store = S3Store(ctx.host.vars)
            for secret in store.secrets:
                ctx.redactor.add_value(secret)
            objects = store.list(conf.bucket, conf.prefix)
            uploaded = {o.key[len(conf.prefix) :]: o for o in objects if "/" not in o.key[len(conf.prefix) :]}
            facts.copies = {name: RemoteCopy(o.size) for name, o in uploaded.items()}
            step.done(Status.OK, f"{len(uploaded)} object(s) under {store.where(conf.bucket, conf.prefix)}")
        checked = to_checksum(deletable, uploaded)
        if not checked:
            return
        with ctx.step("checksums") as step:
            names = "".join(f"{f.name}\0" for f in checked)
            # md5sum exits 1 when one file vanished meanwhile; the others still count, and the
            # missing one is kept (decide finds no MD5 for it).
            result = ctx.remote.run(checksum_command(conf.archive_dir), stdin=names.encode(), timeout=600)
            facts.local = local = parse_md5sum(result.stdout)
            if not local and not result.ok:
                raise HostError(f"md5sum failed (exit {result.exit_code}): {result.tail()}", result)
            found, read_back = s3_md5s(store, conf.bucket, conf.readback_max, uploaded, checked, local)
            facts.copies.update(found)
            by_etag = sum(1 for c in found.values() if c.md5_from == "ETag")
            step.done(
                Status.OK,
                f"MD5 of {len(local)} segment(s) here; in S3 {by_etag} from the ETag, {read_back} read back",
                compared=len(found),
                read_back=read_back,
            )

    # ---------------------------------------------------------------------------------- decide

    def decide(self, ctx: HostContext, facts: WalFacts) -> Plan:
        """The slot to drop (on request) and the segments to delete; what is kept and why is
        recorded here, in check mode and real runs alike."""
        changes = [c for c in (self._slot_change(ctx, facts),) if c is not None]
        conf, archive = facts.conf, facts.archive
        where = f"s3://{conf.bucket}/{conf.prefix}"
        plan = decide(
            archive.files, archive.backups, conf.keep, facts.copies, facts.local, where, conf.suffix
        )
        if plan.delete:
            changes.append(self._delete_change(facts, plan))
            if plan.held:
                ctx.record("s3-check", Status.FAILED, plan.held)
            elif plan.deferred:
                ctx.record("s3-check", Status.OK, plan.deferred)
        elif plan.held:
            if not changes:  # the host fails here: nothing is to be done
                with ctx.step("decide"):
                    raise HostError(nothing_to_delete(plan))
            ctx.record("decide", Status.FAILED, nothing_to_delete(plan))
        elif not changes:
            return Plan.nothing(nothing_to_delete(plan))
        else:
            ctx.record("decide", Status.OK, nothing_to_delete(plan))
        return Plan.of(*changes)

    def _slot_change(self, ctx: HostContext, facts: WalFacts) -> Change | None:
        """--drop-inactive-slot: the change, or None (what stops it is recorded)."""
        name, pg = self.drop_inactive_slot, facts.archive.pg
        if not name:
            return None
        if pg.error:
            ctx.record("drop-slot", Status.FAILED, f"slot {name!r} not dropped: {pg.error}")
            return None
        action, why = decide_slot(pg.slots, name)
        if action != "drop":
            ctx.record("drop-slot", Status.FAILED if action == "refuse" else Status.OK, why)
            return None
        target = facts.pg

        def apply(ctx: HostContext) -> str:
            return drop_slot(ctx, target, name, why)

        return Change("drop-slot", f"drop {why}", apply)

    @staticmethod
    def _delete_change(facts: WalFacts, plan: CleanupPlan) -> Change:
        archive_dir, files = facts.conf.archive_dir, plan.delete
        data: dict[str, Any] = {"files": [f.name for f in files[:MAX_LISTED]], "bytes": plan.bytes,
                                "count": len(files)}  # fmt: skip
        command = f"cd {shlex.quote(archive_dir)} && xargs -0 rm -f --"
        summary = f"delete {describe(files)}; {basis(plan)}"

        def apply(ctx: HostContext) -> None:
            with ctx.step("delete") as step:
                names = "".join(f"{f.name}\0" for f in files)
                must_ok(
                    ctx.remote.run(command, stdin=names.encode(), timeout=300), "deleting archived segments"
                )
                step.done(
                    Status.CHANGED, f"deleted {describe(files)}; {basis(plan)}", diff=listing(files), **data
                )

        return Change("decide", summary, apply, diff=listing(files), commands=(command,), own_steps=True,
                      data={**data, "delete": True})  # fmt: skip

    # ---------------------------------------------------------------------------------- verify

    def verify(self, ctx: HostContext, facts: WalFacts, plan: Plan) -> None:
        """The planned files are gone from the archive directory (re-listed)."""
        deleted = [c for c in plan.changes if c.data.get("delete")]
        if not deleted:
            return
        planned = [name for c in deleted for name in c.data["files"]]
        with ctx.step("verify") as step:
            after = {f.name for f in self._archive(ctx, facts).files}
            left = [name for name in planned if name in after]
            if left:
                raise HostError(f"{len(left)} planned file(s) are still there, e.g. {left[0]}")
            step.done(Status.OK, f"{deleted[0].data['count']} segment(s) gone from {facts.conf.archive_dir}")


def drop_slot(ctx: HostContext, pg: PgTarget, name: str, why: str) -> str:
    """Drop the replication slot `name` if it is still inactive; the step's message."""
    sql = (
        "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots "
        "where slot_name = :'slot' and not active;\n"
        "select count(*) from pg_replication_slots where slot_name = :'slot';\n"
    )
    command = script(pg.psql("postgres", "-v", f"slot={name}"))
    result = must_ok(ctx.remote.run(command, stdin=sql.encode(), timeout=60), f"dropping slot {name!r}")
    dropped, remaining = [*result.stdout.split(), "?", "?"][:2]
    if remaining != "0":
        raise HostError(f"slot {name!r} is still there (it became active?); not dropped", result)
    return f"dropped {why}" if dropped == "1" else f"slot {name!r} is gone"


@dataclass(frozen=True)
class WalSettings:
    archive_dir: str
    bucket: str
    prefix: str
    keep: int  # base backups kept
    suffix: str  # of archived files (pg_archivecleanup -x)
    readback_max: int  # S3 objects read back per run to learn their MD5


def settings(host: Host) -> WalSettings:
    """wal-cleanup's inventory vars, validated."""
    where = f"{host.source}: host {host.name}"
    archive_dir = str(host.require("wal_archive_dir"))
    if not archive_dir.startswith("/"):
        raise UsageError(f"{where}: wal_archive_dir must be an absolute path")
    bucket = str(host.get("wal_s3_bucket") or host.get("backup_s3_bucket") or "")
    if not bucket:
        host.require("wal_s3_bucket")
    prefix = str(host.get("wal_s3_prefix", DEFAULT_PREFIX) or "")
    keep_value = host.get("wal_keep_base_backups", DEFAULT_KEEP)
    try:
        keep = int(keep_value)
    except (TypeError, ValueError):
        keep = 0
    if keep < 1:
        raise UsageError(f"{where}: wal_keep_base_backups must be 1 or more, got {keep_value!r}")
    readback_value = host.get("wal_s3_readback_max", DEFAULT_READBACK_MAX)
    if isinstance(readback_value, bool) or not isinstance(readback_value, int) or readback_value < 0:
        raise UsageError(
            f"{where}: wal_s3_readback_max must be a whole number, 0 or more, got {readback_value!r}"
        )
    return WalSettings(
        archive_dir, bucket, prefix, keep, str(host.get("wal_archive_suffix") or ""), readback_value
    )
