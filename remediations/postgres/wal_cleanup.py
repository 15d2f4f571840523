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

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.postgres import (
    ARCHIVER_JSON_SQL,
    PgTarget,
    S3Object,
    S3Store,
    Section,
    archiver_failing,
    describe_archiver,
    human_age,
    human_bytes,
    must_ok,
    parse_sections,
    script,
)

DEFAULT_KEEP = 2
DEFAULT_PREFIX = "wal/"
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}(\.partial)?$")
SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")
MAX_LISTED = 200
# Segments checksummed per run (16 MiB each: 4 GiB of reading on the host at most); the rest wait
# for the next run, which continues where this one stopped.
VERIFY_MAX = 256
DEFAULT_READBACK_MAX = 64
MD5_RE = re.compile(r"^[0-9a-f]{32}$")

PG_FACTS_SQL = """
select json_build_object(
  'data_directory', current_setting('data_directory'),
  'archive_mode', current_setting('archive_mode'),
  'in_recovery', pg_is_in_recovery(),
  'wal_files', (select count(*) from pg_ls_waldir()),
  'wal_bytes', (select coalesce(sum(size), 0) from pg_ls_waldir()),
  'archiver', ARCHIVER,
  'slots', (select coalesce(json_agg(s order by s.slot_name), '[]'::json) from (
      select slot_name, slot_type, active, wal_status,
             case when restart_lsn is null then null
                  else pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn()
                                            else pg_current_wal_lsn() end, restart_lsn)::float8
             end as retained_bytes
      from pg_replication_slots) s)
);
""".replace("ARCHIVER", ARCHIVER_JSON_SQL)


# --------------------------------------------------------------------------------------------
# WAL file names and base backup history files (pure)
# --------------------------------------------------------------------------------------------


def strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def is_segment(name: str, suffix: str = "") -> bool:
    """A WAL segment (or .partial) file name, after the archive's own suffix (pg_archivecleanup -x)."""
    return bool(SEGMENT_RE.match(strip_suffix(name, suffix)))


def segment_name(timeline: int, lsn: int, segment_size: int = 16 * 1024 * 1024) -> str:
    """The segment file holding `lsn` on `timeline` (XLogFileName)."""
    per_id = 0x100000000 // segment_size
    number = lsn // segment_size
    return f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}"


def parse_lsn(text: str) -> int:
    """`16/B374D848` → its 64-bit position."""
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class BaseBackup:
    """A base backup as its history file (`…backup`) in the WAL archive describes it."""

    history_file: str
    start_segment: str
    start_time: str = ""
    label: str = ""

    @property
    def order(self) -> tuple[str, str, str]:
        # Newer backups start later in WAL; the timeline (first 8 digits) does not order them,
        # as in pg_archivecleanup's comparison.
        return (self.start_segment[8:], self.start_time, self.history_file)


HISTORY_NAME_RE = re.compile(r"^([0-9A-F]{24})\.[0-9A-F]{8}\.backup$")
START_WAL_RE = re.compile(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)\s*$", re.MULTILINE)


def parse_history(name: str, text: str) -> BaseBackup | None:
    """A `000000010000000000000003.00000028.backup` file; None when it is not one."""
    match = HISTORY_NAME_RE.match(name)
    if match is None:
        return None
    fields = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(": ") for line in text.splitlines())
        if sep
    )
    start = START_WAL_RE.search(text)
    # The file name carries the start segment too (pg_archivecleanup trims it to that); the
    # content wins when it is readable.
    segment = start.group(1) if start else match.group(1)
    return BaseBackup(name, segment, fields.get("START TIME", ""), fields.get("LABEL", ""))


@dataclass(frozen=True)
class ArchiveFile:
    name: str
    size: int


@dataclass(frozen=True)
class RemoteCopy:
    """What S3 holds under an archived file's name: its size and, once known, its MD5."""

    size: int
    md5: str = ""  # hex; "" when not known
    md5_from: str = ""  # "ETag" | "read back"
    unknown_why: str = ""  # why the MD5 is not known (a fault: the segment is kept)
    deferred: str = ""  # why it was not checked in this run (no fault: the next run checks it)


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


def keep_set(backups: Iterable[BaseBackup], keep: int) -> tuple[BaseBackup, ...]:
    """The `keep` newest base backups, oldest first."""
    ordered = sorted(backups, key=lambda b: b.order)
    return tuple(ordered[-keep:]) if keep > 0 else ()


def older_than_cut(files: Iterable[ArchiveFile], cut_segment: str, suffix: str = "") -> list[ArchiveFile]:
    """The segments pg_archivecleanup would remove for this cut point, oldest first.

    Its rule: a WAL segment or .partial file whose name, from the 9th character on (the timeline
    ignored), sorts before the cut segment's. History files (.backup, .history) never match.
    """
    chosen = [
        f for f in files if is_segment(f.name, suffix) and strip_suffix(f.name, suffix)[8:] < cut_segment[8:]
    ]
    return sorted(chosen, key=lambda f: (strip_suffix(f.name, suffix)[8:], f.name))


def candidates(
    files: Sequence[ArchiveFile], backups: Sequence[BaseBackup], keep: int, suffix: str = ""
) -> list[ArchiveFile]:
    """The segments older than the cut point, oldest first (none without a base backup)."""
    kept = keep_set(backups, keep)
    return older_than_cut(files, kept[0].start_segment, suffix) if kept else []


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


def etag_md5(etag: str) -> str:
    """The MD5 an ETag is, when it looks like one (a single-part upload); "" for `…-N` (multipart)."""
    tag = etag.strip('"').lower()
    return tag if MD5_RE.match(tag) else ""


def etag_not_md5(head: Mapping[str, Any]) -> str:
    """Why an object's single-part-looking ETag is not its MD5 ("" when it is)."""
    if head.get("SSECustomerAlgorithm"):
        return "SSE-C"
    if str(head.get("ServerSideEncryption") or "").startswith("aws:kms"):
        return "SSE-KMS"
    return ""


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


def describe(files: Sequence[ArchiveFile]) -> str:
    if not files:
        return "no files"
    span = files[0].name if len(files) == 1 else f"{files[0].name} … {files[-1].name}"
    return f"{len(files)} segment(s), {human_bytes(sum(f.size for f in files))} ({span})"


# --------------------------------------------------------------------------------------------
# What holds pg_wal/ (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    name: str
    slot_type: str
    active: bool
    wal_status: str
    retained_bytes: float | None


@dataclass
class PgFacts:
    error: str = ""
    data_directory: str = ""
    archive_mode: str = ""
    wal_files: int = 0
    wal_bytes: int = 0
    archiver: dict[str, Any] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)


def parse_pg_facts(exit_code: str, body: str) -> PgFacts:
    if exit_code != "0":
        lines = [line for line in body.strip().splitlines() if line.strip()]
        return PgFacts(error=" ".join(lines[-2:]) or f"psql exited {exit_code}")
    try:
        data = json.loads(body.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return PgFacts(error="psql printed something that is not JSON")
    slots = [
        Slot(
            str(s["slot_name"]),
            str(s["slot_type"]),
            bool(s["active"]),
            str(s.get("wal_status") or ""),
            s.get("retained_bytes"),
        )
        for s in data.get("slots") or []
    ]
    return PgFacts(
        data_directory=str(data.get("data_directory") or ""),
        archive_mode=str(data.get("archive_mode") or ""),
        wal_files=int(data.get("wal_files") or 0),
        wal_bytes=int(data.get("wal_bytes") or 0),
        archiver=dict(data.get("archiver") or {}),
        slots=slots,
    )


def pg_wal_report(pg: PgFacts) -> str:
    """What holds pg_wal/, in one line."""
    parts = [f"pg_wal/ holds {pg.wal_files} file(s), {human_bytes(pg.wal_bytes)}"]
    inactive = [s for s in pg.slots if not s.active]
    for slot in inactive:
        retained = "unknown WAL" if slot.retained_bytes is None else human_bytes(slot.retained_bytes)
        parts.append(f"inactive {slot.slot_type} slot {slot.name!r} retains {retained}")
    active = len(pg.slots) - len(inactive)
    if active:
        parts.append(f"{active} active slot(s)")
    if not pg.slots:
        parts.append("no replication slots")
    archiver = pg.archiver
    if pg.archive_mode == "off":
        parts.append("archive_mode is off")
    parts.append(describe_archiver(archiver))
    age = archiver.get("last_archived_age")
    if age is None:
        parts.append("nothing archived yet")
    else:
        parts.append(f"last archived {archiver.get('last_archived_wal')} {human_age(float(age))} ago")
    return "; ".join(parts)


def retains_wal(slot: Slot) -> bool:
    """An inactive slot holding WAL back: pg_wal/ grows until a client uses it again or it is
    dropped (a slot without restart_lsn, or one whose WAL is already lost, holds nothing)."""
    return not slot.active and slot.retained_bytes is not None and slot.wal_status != "lost"


def pg_warnings(pg: PgFacts) -> list[tuple[str, str]]:
    """(step, message) for each condition a person must look at: a failing archiver, and each
    inactive slot retaining WAL."""
    if pg.error:
        return []
    found: list[tuple[str, str]] = []
    if archiver_failing(pg.archiver):
        found.append(
            ("archiver", f"{describe_archiver(pg.archiver)}: WAL piles up in pg_wal/ until it archives again")
        )
    for slot in pg.slots:
        if retains_wal(slot):
            found.append(
                (
                    f"slot {slot.name}",
                    f"inactive {slot.slot_type} replication slot {slot.name!r} retains "
                    f"{human_bytes(slot.retained_bytes or 0)} of WAL in pg_wal/",
                )
            )
    return found


def decide_slot(slots: Sequence[Slot], name: str) -> tuple[str, str]:
    """("drop" | "none" | "refuse", why) for --drop-inactive-slot."""
    found = [s for s in slots if s.name == name]
    if not found:
        return "none", f"no replication slot named {name!r}; nothing to drop"
    slot = found[0]
    if slot.active:
        return "refuse", f"replication slot {name!r} is active (a client uses it); not dropped"
    retained = "unknown WAL" if slot.retained_bytes is None else human_bytes(slot.retained_bytes)
    return "drop", f"inactive {slot.slot_type} slot {name!r} retaining {retained}"


# --------------------------------------------------------------------------------------------
# Facts: one round trip to the host
# --------------------------------------------------------------------------------------------


def facts_command(archive_dir: str, pg: PgTarget) -> str:
    """The archive's files and history files, and PostgreSQL's view of pg_wal/ (SQL on stdin)."""
    q = shlex.quote
    return script(
        f"dir={q(archive_dir)}",
        'if [ ! -d "$dir" ]; then echo "@@missing"; else',
        '  echo "@@realpath $(realpath -- "$dir")"',
        '  echo "@@files"; find "$dir" -maxdepth 1 -type f -printf "%f\\t%s\\n"',
        '  for f in "$dir"/*.backup; do [ -f "$f" ] || continue; '
        'echo "@@history $(basename -- "$f")"; head -c 8192 -- "$f"; echo; done',
        "fi",
        f'out=$({pg.psql()} 2>&1); rc=$?; echo "@@pg $rc"; printf "%s\\n" "$out"',
    )


def checksum_command(archive_dir: str) -> str:
    """MD5 of the archived files named on stdin (NUL-separated): `md5sum` lines, one per file."""
    return f"cd {shlex.quote(archive_dir)} && xargs -0 -r md5sum --"


def parse_md5sum(output: str) -> dict[str, str]:
    """`md5sum` output → file name → MD5. md5sum escapes an odd name with a leading backslash, which
    no segment name needs: such a line does not parse, and that file is kept."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        digest, sep, name = line.partition("  ")
        if sep and MD5_RE.match(digest):
            found[name] = digest
    return found


@dataclass
class ArchiveFacts:
    missing: bool = False
    realpath: str = ""
    files: list[ArchiveFile] = field(default_factory=list)
    backups: list[BaseBackup] = field(default_factory=list)
    pg: PgFacts = field(default_factory=PgFacts)


def parse_facts(sections: Sequence[Section]) -> ArchiveFacts:
    facts = ArchiveFacts()
    for section in sections:
        if section.name == "missing":
            facts.missing = True
        elif section.name == "realpath":
            facts.realpath = section.arg.strip()
        elif section.name == "files":
            for line in section.body.splitlines():
                name, sep, size = line.rpartition("\t")
                if sep and size.isdigit():
                    facts.files.append(ArchiveFile(name, int(size)))
        elif section.name == "history":
            backup = parse_history(section.arg.strip(), section.body)
            if backup is not None:
                facts.backups.append(backup)
        elif section.name == "pg":
            facts.pg = parse_pg_facts(section.arg.strip(), section.body)
    return facts


def inside_pg_wal(realpath: str, data_directory: str) -> bool:
    """True when the archive directory is pg_wal/ (or inside it): refuse to touch it."""
    path = realpath.rstrip("/")
    if path.rsplit("/", 1)[-1] in ("pg_wal", "pg_xlog") or "/pg_wal/" in path + "/":
        return True
    if data_directory:
        wal = data_directory.rstrip("/") + "/pg_wal"
        return path == wal or path.startswith(wal + "/")
    return False


# --------------------------------------------------------------------------------------------
# The remediation
# --------------------------------------------------------------------------------------------


class WalCleanup(Remediation):
    task: ClassVar[str] = "wal-cleanup"
    cron_safe: ClassVar[bool] = True
    required_vars: ClassVar[tuple[str, ...]] = ("wal_archive_dir",)

    def __init__(self, drop_inactive_slot: str | None = None) -> None:
        if drop_inactive_slot is not None and not SLOT_NAME_RE.match(drop_inactive_slot):
            raise UsageError(
                f"--drop-inactive-slot {drop_inactive_slot!r}: a slot name is 1-63 characters of "
                "a-z, 0-9 and _"
            )
        self.drop_inactive_slot = drop_inactive_slot

    def validate(self, host: Host) -> None:
        super().validate(host)
        settings(host)

    def run(self, ctx: HostContext) -> None:
        conf = settings(ctx.host)
        pg = PgTarget.from_host(ctx.host)

        def gather() -> ArchiveFacts:
            result = ctx.remote.run(
                facts_command(conf.archive_dir, pg), stdin=PG_FACTS_SQL.encode(), timeout=120
            )
            if "@@pg" not in result.stdout:
                raise HostError(f"gathering facts failed (exit {result.exit_code}): {result.tail()}", result)
            return parse_facts(parse_sections(result.stdout))

        with ctx.step("facts") as step:
            facts = gather()
            if facts.missing:
                raise HostError(
                    f"archive directory {conf.archive_dir} does not exist on the host; nothing deleted"
                )
            if inside_pg_wal(facts.realpath, facts.pg.data_directory):
                raise HostError(
                    f"wal_archive_dir {conf.archive_dir} is PostgreSQL's own pg_wal/ ({facts.realpath}); "
                    "refusing to touch it"
                )
            segments = [f for f in facts.files if is_segment(f.name, conf.suffix)]
            step.done(
                Status.OK,
                f"{conf.archive_dir}: {describe(sorted(segments, key=lambda f: f.name))}, "
                f"{len(facts.backups)} base backup history file(s)",
                segments=len(segments),
                bytes=sum(f.size for f in segments),
                base_backups=[b.history_file for b in sorted(facts.backups, key=lambda b: b.order)],
            )
        self._report_pg_wal(ctx, facts.pg)
        if self.drop_inactive_slot:
            self._drop_slot(ctx, pg, facts.pg, self.drop_inactive_slot)
        self._cleanup(ctx, facts, conf, gather)

    def _report_pg_wal(self, ctx: HostContext, pg: PgFacts) -> None:
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

    def _drop_slot(self, ctx: HostContext, pg: PgTarget, facts: PgFacts, name: str) -> None:
        if facts.error:
            ctx.record("drop-slot", Status.FAILED, f"slot {name!r} not dropped: {facts.error}")
            return
        action, why = decide_slot(facts.slots, name)
        if action != "drop":
            ctx.record("drop-slot", Status.FAILED if action == "refuse" else Status.OK, why)
            return
        if ctx.check:
            ctx.record("drop-slot", Status.CHANGED, f"would drop {why}")
            return
        with ctx.step("drop-slot") as step:
            sql = (
                "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots "
                "where slot_name = :'slot' and not active;\n"
                "select count(*) from pg_replication_slots where slot_name = :'slot';\n"
            )
            result = must_ok(
                ctx.remote.run(
                    script(pg.psql("postgres", "-v", f"slot={name}")), stdin=sql.encode(), timeout=60
                ),
                f"dropping slot {name!r}",
            )
            dropped, remaining = [*result.stdout.split(), "?", "?"][:2]
            if remaining != "0":
                raise HostError(f"slot {name!r} is still there (it became active?); not dropped", result)
            step.done(Status.CHANGED, f"dropped {why}" if dropped == "1" else f"slot {name!r} is gone")

    def _cleanup(self, ctx: HostContext, facts: ArchiveFacts, conf: WalSettings, gather: Any) -> None:
        copies: dict[str, RemoteCopy] | None = None
        local: dict[str, str] = {}
        where = f"s3://{conf.bucket}/{conf.prefix}"
        deletable = candidates(facts.files, facts.backups, conf.keep, conf.suffix)
        if deletable:
            with ctx.step("s3") as step:
                store = S3Store(ctx.host.vars)
                for secret in store.secrets:
                    ctx.redactor.add_value(secret)
                objects = store.list(conf.bucket, conf.prefix)
                uploaded = {
                    o.key[len(conf.prefix) :]: o for o in objects if "/" not in o.key[len(conf.prefix) :]
                }
                copies = {name: RemoteCopy(o.size) for name, o in uploaded.items()}
                step.done(
                    Status.OK, f"{len(uploaded)} object(s) under {store.where(conf.bucket, conf.prefix)}"
                )
            checked = to_checksum(deletable, uploaded)
            if checked:
                with ctx.step("checksums") as step:
                    names = "".join(f"{f.name}\0" for f in checked)
                    # md5sum exits 1 when one file vanished meanwhile; the others still count, and
                    # the missing one is kept (decide finds no MD5 for it).
                    result = ctx.remote.run(
                        checksum_command(conf.archive_dir), stdin=names.encode(), timeout=600
                    )
                    local = parse_md5sum(result.stdout)
                    if not local and not result.ok:
                        raise HostError(f"md5sum failed (exit {result.exit_code}): {result.tail()}", result)
                    found, read_back = s3_md5s(store, conf, uploaded, checked, local)
                    copies.update(found)
                    by_etag = sum(1 for c in found.values() if c.md5_from == "ETag")
                    step.done(
                        Status.OK,
                        f"MD5 of {len(local)} segment(s) here; in S3 {by_etag} from the ETag, "
                        f"{read_back} read back",
                        compared=len(found),
                        read_back=read_back,
                    )
        plan = decide(facts.files, facts.backups, conf.keep, copies, local, where, conf.suffix)
        basis = ""
        if plan.cut is not None:
            names = ", ".join(b.history_file for b in plan.kept_backups)
            basis = (
                f"cut point {plan.cut.start_segment} (oldest of {len(plan.kept_backups)} kept base "
                f"backup(s): {names})"
            )
        listing = "\n".join(f"- {f.name} ({f.size} bytes)" for f in plan.delete[:MAX_LISTED])
        if len(plan.delete) > MAX_LISTED:
            listing += f"\n… and {len(plan.delete) - MAX_LISTED} more"
        if not plan.delete:
            reason = plan.held or plan.deferred or plan.nothing_because
            ctx.record(
                "decide",
                Status.FAILED if plan.held else Status.OK,
                f"nothing to delete: {reason}" + (f"; {basis}" if basis else ""),
            )
            return
        data: dict[str, Any] = {
            "files": [f.name for f in plan.delete[:MAX_LISTED]],
            "bytes": plan.bytes,
            "count": len(plan.delete),
        }
        if ctx.check:
            ctx.record(
                "decide",
                Status.CHANGED,
                f"would delete {describe(plan.delete)}; {basis}",
                diff=listing,
                **data,
            )
        else:
            with ctx.step("delete") as step:
                names = "".join(f"{f.name}\0" for f in plan.delete)
                command = f"cd {shlex.quote(conf.archive_dir)} && xargs -0 rm -f --"
                must_ok(
                    ctx.remote.run(command, stdin=names.encode(), timeout=300), "deleting archived segments"
                )
                step.done(Status.CHANGED, f"deleted {describe(plan.delete)}; {basis}", diff=listing, **data)
            with ctx.step("verify") as step:
                after = {f.name for f in gather().files}
                left = [f.name for f in plan.delete if f.name in after]
                if left:
                    raise HostError(f"{len(left)} planned file(s) are still there, e.g. {left[0]}")
                step.done(Status.OK, f"{len(plan.delete)} segment(s) gone from {conf.archive_dir}")
        if plan.held:
            ctx.record("s3-check", Status.FAILED, plan.held)
        elif plan.deferred:
            ctx.record("s3-check", Status.OK, plan.deferred)


def s3_md5s(
    store: S3Store,
    conf: WalSettings,
    uploaded: Mapping[str, S3Object],
    checked: Sequence[ArchiveFile],
    local: Mapping[str, str],
) -> tuple[dict[str, RemoteCopy], int]:
    """The MD5 of each checked segment's S3 copy, oldest first, until the first that differs (decide
    stops there); and how many objects were read back.

    A single-part ETag is the MD5 unless SSE-KMS or SSE-C made it something else: a head request
    tells, and is only needed when the ETag does not match. Otherwise the object is read back,
    at most `wal_s3_readback_max` per run.
    """
    found: dict[str, RemoteCopy] = {}
    read_back = 0
    for f in checked:
        obj = uploaded[f.name]
        here = local.get(f.name)
        if not here:
            break
        tag_md5 = etag_md5(obj.etag)
        hidden = "" if tag_md5 == here or not tag_md5 else etag_not_md5(store.head(conf.bucket, obj.key))
        if tag_md5 and not hidden:
            found[f.name] = RemoteCopy(obj.size, tag_md5, "ETag")
        elif hidden == "SSE-C":
            found[f.name] = RemoteCopy(
                obj.size,
                unknown_why=f"encrypted with a customer key (SSE-C): its ETag {obj.etag} is not "
                "its MD5 and it cannot be read back without the key",
            )
        elif read_back >= conf.readback_max:
            why = "multipart upload" if not tag_md5 else hidden
            found[f.name] = RemoteCopy(
                obj.size,
                deferred=f"its ETag {obj.etag} is not its MD5 ({why}) and this run read back "
                f"wal_s3_readback_max={conf.readback_max} object(s) already",
            )
        else:
            read_back += 1
            found[f.name] = RemoteCopy(obj.size, store.md5(conf.bucket, obj.key), "read back")
        if found[f.name].md5 != here:
            break
    return found, read_back


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
