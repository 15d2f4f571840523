"""The WAL archive and what holds pg_wal/, as facts (pure): file names, base backup history files,
what PostgreSQL says about its slots and archiver, and the one round trip that gathers them.

A segment file is named by its timeline and position (XLogFileName); a base backup's history file
(`…backup`) names the segment it starts in. `facts_command` lists the archive directory, reads its
history files and asks PostgreSQL (SQL on stdin, `PG_FACTS_SQL`) about pg_wal/; `parse_facts` reads
its output. Nothing here runs a command.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.facts.postgres import (
    ARCHIVER_JSON_SQL,
    PgTarget,
    Section,
    archiver_failing,
    describe_archiver,
    human_age,
    human_bytes,
    script,
)

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}(\.partial)?$")
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
# WAL file names and base backup history files
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


def describe(files: Sequence[ArchiveFile]) -> str:
    if not files:
        return "no files"
    span = files[0].name if len(files) == 1 else f"{files[0].name} … {files[-1].name}"
    return f"{len(files)} segment(s), {human_bytes(sum(f.size for f in files))} ({span})"


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


# --------------------------------------------------------------------------------------------
# What holds pg_wal/
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
