"""Point-in-time recovery, as facts (pure): base backups and when they ended, timeline history
files, the WAL segments a recovery to a target time reads, and the one round trip that gathers them.

A base backup is a folder under `basebackup_local_dir` on the db host holding `pg_basebackup -Ft`
output (`base.tar` or `base.tar.gz`, and `backup_manifest`, whose WAL-Ranges give its start LSN).
When it ended comes from its history file in the WAL archive (`…backup`: START/STOP WAL LOCATION,
STOP TIME, START TIMELINE), matched by the start LSN. A timeline's history file (`0000000N.history`)
lists its ancestors and where each one ended. Nothing here runs a command.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from remediations.facts.postgres import PgTarget, Section, script
from remediations.facts.wal import parse_lsn, segment_name

SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
BACKUP_NAME_RE = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")
TL_HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
LSN_RE = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
# A time as PostgreSQL writes it in a backup history file (log_timezone, %Z): the zone is an
# abbreviation ("UTC") or a numeric offset ("+03") when the zone has none.
PG_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (UTC|GMT|Z|[+-]\d{2}(?::?\d{2})?)$")


def segment_number(name: str) -> int:
    """The position of a segment file (timeline ignored): log id * 256 + segment."""
    match = SEGMENT_RE.match(name)
    if match is None:
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(match.group(2), 16) * (0x100000000 // SEGMENT_SIZE) + int(match.group(3), 16)


def name_of(timeline: int, number: int) -> str:
    return segment_name(timeline, number * SEGMENT_SIZE, SEGMENT_SIZE)


def format_lsn(lsn: int) -> str:
    """A position as PostgreSQL writes it: `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def pg_time(text: str) -> float | None:
    """Unix time of `2024-01-15 11:30:00 UTC` / `… +03`; None for another zone abbreviation."""
    match = PG_TIME_RE.match(text.strip())
    if match is None:
        return None
    zone = match.group(2)
    offset = "+00:00" if zone in ("UTC", "GMT", "Z") else zone
    if len(offset) == 3:
        offset += ":00"
    elif ":" not in offset:
        offset = offset[:3] + ":" + offset[3:]
    return dt.datetime.fromisoformat(f"{match.group(1)}{offset}").timestamp()


def iso(epoch: float) -> str:
    """A Unix time as PostgreSQL reads it back, in UTC with an explicit offset."""
    stamp = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return (
        stamp.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        if stamp.microsecond
        else stamp.strftime("%Y-%m-%d %H:%M:%S+00")
    )


# --------------------------------------------------------------------------------------------
# Base backups
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupHistory:
    """A base backup's history file in the archive."""

    name: str
    start_lsn: int
    stop_lsn: int
    timeline: int
    stop_time: float | None  # None: its zone is an abbreviation we do not read (see `ended`)
    label: str = ""
    archived_at: float = 0.0  # the file's mtime in the archive: written just after the backup ended

    @property
    def ended(self) -> float:
        """When the backup ended, at the latest: STOP TIME has whole seconds (the real end is
        within the second after it); without a readable STOP TIME, the time it was archived."""
        return self.stop_time + 1.0 if self.stop_time is not None else self.archived_at


def parse_backup_history(name: str, text: str, archived_at: float = 0.0) -> BackupHistory | None:
    """A `000000010000000100000071.00000028.backup` file; None when it is not a complete one."""
    if not BACKUP_NAME_RE.match(name):
        return None
    fields = {
        k.strip(): v.strip() for k, sep, v in (line.partition(": ") for line in text.splitlines()) if sep
    }
    try:
        start = parse_lsn(fields["START WAL LOCATION"].split()[0])
        stop = parse_lsn(fields["STOP WAL LOCATION"].split()[0])
        timeline = int(fields.get("START TIMELINE") or int(name[:8], 16))
    except (KeyError, ValueError, IndexError):
        return None
    return BackupHistory(
        name,
        start,
        stop,
        timeline,
        pg_time(fields.get("STOP TIME", "")),
        fields.get("LABEL", ""),
        archived_at,
    )


MANIFEST_START_RE = re.compile(r'"Start-LSN"\s*:\s*"([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})"')
MANIFEST_TL_RE = re.compile(r'"Timeline"\s*:\s*(\d+)')


@dataclass(frozen=True)
class Part:
    """One object of a base backup's tar in S3."""

    name: str
    size: int
    md5: str


@dataclass(frozen=True)
class BaseBackup:
    """A base backup (a folder on the host, or one in S3), and its history file once matched."""

    folder: str  # its name under basebackup_local_dir (or basebackup_s3_prefix)
    tar: str  # base.tar or base.tar.gz
    size: int
    start_lsn: int | None  # from backup_manifest's WAL-Ranges (or the S3 marker)
    history: BackupHistory | None = None
    parts: tuple[Part, ...] = ()  # in S3: the tar's parts, in order; () for a local folder
    timeline: int = 0  # in S3: from the marker

    @property
    def in_s3(self) -> bool:
        return bool(self.parts)

    @property
    def label(self) -> str:
        return f"{self.folder} (S3)" if self.in_s3 else self.folder


def history_name(timeline: int, start_lsn: int) -> str:
    """The name of a base backup's history file in the archive (BackupHistoryFileName)."""
    return f"{segment_name(timeline, start_lsn, SEGMENT_SIZE)}.{start_lsn % SEGMENT_SIZE:08X}.backup"


def manifest_start(tail: str) -> int | None:
    """The start LSN in the end of a backup_manifest (its WAL-Ranges come last)."""
    found = MANIFEST_START_RE.findall(tail)
    return parse_lsn(found[0].upper()) if found else None


def match_backups(folders: Sequence[BaseBackup], histories: Sequence[BackupHistory]) -> list[BaseBackup]:
    """Each folder with the history file of the same start LSN."""
    by_start = {h.start_lsn: h for h in histories}
    return [
        replace(f, history=by_start.get(f.start_lsn) if f.start_lsn is not None else None) for f in folders
    ]


@dataclass(frozen=True)
class Choice:
    backup: BaseBackup | None
    refused: str = ""


def choose_backup(backups: Sequence[BaseBackup], target: float | None) -> Choice:
    """The newest base backup that ended before the target (None: the newest); else the refusal,
    naming the oldest one and when it ended."""
    usable = sorted((b for b in backups if b.history is not None), key=lambda b: (b.history.ended, b.folder))  # type: ignore[union-attr]
    if not usable:
        unmatched = ", ".join(b.folder for b in backups) or "none"
        return Choice(
            None,
            "no base backup with its history file (*.backup) in the WAL archive "
            f"(backup folders: {unmatched})",
        )
    before = [b for b in usable if target is None or b.history.ended <= target]  # type: ignore[union-attr]
    if not before:
        oldest = usable[0]
        assert oldest.history is not None
        return Choice(
            None,
            f"no base backup ended before the target {iso(target or 0)}: the oldest, "
            f"{oldest.folder}, ended at {iso(oldest.history.ended)}",
        )
    return Choice(before[-1])


# --------------------------------------------------------------------------------------------
# Timelines and the WAL a recovery reads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineStep:
    timeline: int
    begins: int  # the LSN where it branched off its parent (0 for the first)


def parse_timeline_history(text: str) -> list[tuple[int, int]]:
    """(parent timeline, switch LSN) lines of a `0000000N.history` file; comments skipped."""
    found: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and LSN_RE.match(parts[1]):
            found.append((int(parts[0]), parse_lsn(parts[1])))
    return found


def timeline_path(target: int, histories: Mapping[int, str]) -> list[TimelineStep] | str:
    """The timelines from the first to `target`, each with where it begins; a message when the
    target's history file is missing."""
    if target == 1:
        return [TimelineStep(1, 0)]
    if target not in histories:
        return f"timeline {target}'s history file {target:08X}.history is not in the archive"
    steps: list[TimelineStep] = []
    begins = 0
    for parent, switch in parse_timeline_history(histories[target]):
        steps.append(TimelineStep(parent, begins))
        begins = switch
    steps.append(TimelineStep(target, begins))
    return steps


def timeline_at(path: Sequence[TimelineStep], number: int) -> int:
    """The timeline recovery reads segment `number` from: the newest one begun by that segment
    (the segment a switch happens in is read from the new timeline)."""
    chosen = path[0].timeline
    for step in path:
        if step.begins // SEGMENT_SIZE <= number:
            chosen = step.timeline
    return chosen


def expected_timeline(target: int, histories: Mapping[int, str]) -> int:
    """The timeline a promotion makes: one past the newest history file following the target's,
    as PostgreSQL probes them (findNewestTimeLine)."""
    newest = target
    while newest + 1 in histories:
        newest += 1
    return newest + 1


def disagreement(local: Mapping[int, str], s3: Mapping[int, str], where: str, s3_where: str) -> str:
    """ "" when every timeline history file the S3 copy holds is in the local archive with the same
    lines; else the refusal. The restore_command reads the local archive first and S3 after it, so
    PostgreSQL would pick its new timeline (and the timeline path) from both: a stray history file
    only in S3 moves the promotion to another timeline than the one planned."""
    only = sorted(t for t in s3 if t not in local)
    differ = sorted(
        t for t in s3 if t in local and parse_timeline_history(s3[t]) != parse_timeline_history(local[t])
    )
    if not only and not differ:
        return ""
    words = []
    if only:
        words.append(", ".join(f"{t:08X}.history" for t in only) + f" only in {s3_where}")
    if differ:
        words.append(", ".join(f"{t:08X}.history" for t in differ) + f" different in {where} and {s3_where}")
    return (
        "the WAL archive's two copies disagree on the timeline history: "
        + "; ".join(words)
        + " (the restore_command would fetch them: remove the stray file or copy the right one into both)"
    )


@dataclass(frozen=True)
class Segment:
    size: int
    mtime: float  # when it was archived


@dataclass(frozen=True)
class WalRange:
    first: str = ""
    last: str = ""
    count: int = 0
    refused: str = ""
    archive_end: str = ""  # the newest segment on the path, and when it was archived


def wal_range(
    start_lsn: int, path: Sequence[TimelineStep], segments: Mapping[str, Segment], target: float | None
) -> WalRange:
    """The segments a recovery from `start_lsn` to `target` reads, each checked to be archived.

    Walking from the start segment: a segment archived at or after the target closes the range
    (every commit up to the target is in it or before it); the end of the archive before that
    refuses (the target is past the archive's end), and so does a hole before the end.
    """
    on_path = sorted(
        segment_number(n)
        for n in segments
        if SEGMENT_RE.match(n) and timeline_at(path, segment_number(n)) == int(n[:8], 16)
    )
    newest = on_path[-1] if on_path else -1
    end = ""
    if newest >= 0:
        end_name = name_of(timeline_at(path, newest), newest)
        end = f"{end_name} archived at {iso(segments[end_name].mtime)}"
    number = start_lsn // SEGMENT_SIZE
    first = name_of(timeline_at(path, number), number)
    count = 0
    while True:
        name = name_of(timeline_at(path, number), number)
        found = segments.get(name)
        if found is None:
            if number <= newest:
                return WalRange(
                    first,
                    name,
                    count,
                    f"WAL segment {name} is missing from the archive "
                    f"(needed between {first} and the target; the archive goes on to {end})",
                    end,
                )
            if target is None and count:
                return WalRange(first, name_of(timeline_at(path, number - 1), number - 1), count, "", end)
            where = f"the archive ends at {end}" if end else "the archive holds no segment of this history"
            return WalRange(first, name, count, f"the target is past the archive's end: {where}", end)
        count += 1
        if target is not None and found.mtime >= target:
            return WalRange(first, name, count, "", end)
        number += 1


# --------------------------------------------------------------------------------------------
# Facts: one round trip
# --------------------------------------------------------------------------------------------

PG_SQL = """select json_build_object(
  'data_directory', current_setting('data_directory'),
  'config_file', current_setting('config_file'),
  'hba_file', current_setting('hba_file'),
  'version', current_setting('server_version_num'),
  'socket_dirs', current_setting('unix_socket_directories'),
  'in_recovery', pg_is_in_recovery(),
  'timeline', case when pg_is_in_recovery() then (select timeline_id from pg_control_checkpoint())
                   else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end,
  'bytes', (select sum(pg_database_size(oid))::float8 from pg_database));
"""


def facts_command(archive_dir: str, base_dir: str, pg: PgTarget, credentials_file: str = "") -> str:
    """The archive's files (name, size, mtime), its history files, the backup folders (their tar,
    its size, the end of their manifest), and the server's settings (SQL on stdin)."""
    q = shlex.quote
    return script(
        f"arch={q(archive_dir)}; base={q(base_dir)}",
        'if [ -d "$arch" ]; then echo "@@files"; find "$arch" -maxdepth 1 -type f -printf "%f\\t%s\\t%T@\\n"',
        '  for f in "$arch"/*.backup "$arch"/*.history; do [ -f "$f" ] || continue; '
        'echo "@@history $(basename -- "$f")"; head -c 8192 -- "$f"; echo; done',
        'else echo "@@noarchive"; fi',
        'if [ -d "$base" ]; then for d in "$base"/*/; do [ -d "$d" ] || continue; '
        'echo "@@base $(basename -- "$d")"; find "$d" -maxdepth 1 -name "base.tar*" -printf "%f\\t%s\\n"; '
        'echo "@@manifest"; tail -c 2048 -- "$d/backup_manifest" 2>/dev/null; echo; done; '
        'else echo "@@nobase"; fi',
        *(
            [f'echo "@@credentials $(stat -c "%a %U" -- {q(credentials_file)} 2>/dev/null)"']
            if credentials_file
            else []
        ),
        f'out=$({pg.psql()} 2>&1); rc=$?; echo "@@pg $rc"; printf "%s\\n" "$out"',
    )


def free_command(folder: str) -> str:
    """Bytes free in `folder`'s file system (POSIX df)."""
    return f"df -P -B1 -- {shlex.quote(folder)} | tail -1"


def parse_free(output: str) -> int | None:
    fields = output.split()
    return int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None


@dataclass
class PgServer:
    error: str = ""
    data_directory: str = ""
    config_file: str = ""
    hba_file: str = ""
    version: int = 0
    socket_dir: str = ""
    in_recovery: bool = False
    timeline: int = 0
    bytes: float = 0.0


@dataclass
class PitrFacts:
    archive_missing: bool = False
    base_missing: bool = False
    segments: dict[str, Segment] = field(default_factory=dict)
    histories: list[BackupHistory] = field(default_factory=list)
    timelines: dict[int, str] = field(default_factory=dict)  # timeline → its history file's text
    folders: list[BaseBackup] = field(default_factory=list)
    server: PgServer = field(default_factory=PgServer)
    credentials: str = ""  # "MODE OWNER" of the S3 credentials file; "" when it is missing


def parse_server(exit_code: str, body: str) -> PgServer:
    if exit_code != "0":
        lines = [line for line in body.strip().splitlines() if line.strip()]
        return PgServer(error=" ".join(lines[-2:]) or f"psql exited {exit_code}")
    try:
        data = json.loads(body.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return PgServer(error="psql printed something that is not JSON")
    sockets = [s.strip() for s in str(data.get("socket_dirs") or "").split(",") if s.strip()]
    return PgServer(
        data_directory=str(data.get("data_directory") or ""),
        config_file=str(data.get("config_file") or ""),
        hba_file=str(data.get("hba_file") or ""),
        version=int(data.get("version") or 0),
        socket_dir=sockets[0] if sockets else "/tmp",
        in_recovery=bool(data.get("in_recovery")),
        timeline=int(data.get("timeline") or 0),
        bytes=float(data.get("bytes") or 0),
    )


def parse_facts(sections: Sequence[Section]) -> PitrFacts:
    facts = PitrFacts()
    mtimes: dict[str, float] = {}
    current: BaseBackup | None = None
    for section in sections:
        if section.name == "files":
            for line in section.body.splitlines():
                parts = line.split("\t")
                if len(parts) == 3 and parts[1].isdigit():
                    mtimes[parts[0]] = float(parts[2])
                    if SEGMENT_RE.match(parts[0]):
                        facts.segments[parts[0]] = Segment(int(parts[1]), float(parts[2]))
        elif section.name == "history":
            name = section.arg.strip()
            tl = TL_HISTORY_RE.match(name)
            if tl:
                facts.timelines[int(tl.group(1), 16)] = section.body
            else:
                backup = parse_backup_history(name, section.body, mtimes.get(name, 0.0))
                if backup is not None:
                    facts.histories.append(backup)
        elif section.name == "base":
            tars = [line.split("\t") for line in section.body.splitlines() if "\t" in line]
            tar, size = (tars[0][0], int(tars[0][1])) if tars else ("", 0)
            current = BaseBackup(section.arg.strip(), tar, size, None)
        elif section.name == "manifest" and current is not None:
            facts.folders.append(
                BaseBackup(current.folder, current.tar, current.size, manifest_start(section.body))
            )
            current = None
        elif section.name in ("noarchive", "nobase"):
            setattr(facts, "archive_missing" if section.name == "noarchive" else "base_missing", True)
        elif section.name == "credentials":
            facts.credentials = section.arg.strip()
        elif section.name == "pg":
            facts.server = parse_server(section.arg.strip(), section.body)
    return facts
