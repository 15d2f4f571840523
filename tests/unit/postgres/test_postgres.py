"""Pure parts of the PostgreSQL remediations: WAL names, cut points, keep sets, cron, metrics."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from remediations.actions import drill_report
from remediations.actions.s3client import S3Object
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts import crontab as ctab
from remediations.facts import wal as walfacts
from remediations.facts.postgres import sql_identifier, sql_literal
from remediations.facts.wal import RemoteCopy
from remediations.host import cron_entry
from remediations.host import install_cron as cron
from remediations.postgres import backup_check as backups
from remediations.postgres import restore_drill as restore_test
from remediations.postgres import wal_cleanup as wal

SEG = "00000001000000000000000{}"


def seg(n: int, tli: int = 1) -> str:
    return f"{tli:08X}{n // 256:08X}{n % 256:08X}"


def history(n: int, offset: str = "00000028", time: str = "2026-01-01 00:00:00 UTC") -> tuple[str, str]:
    name = f"{seg(n)}.{offset}.backup"
    text = (
        f"START WAL LOCATION: 0/{n:X}000028 (file {seg(n)})\nSTOP WAL LOCATION: 0/{n:X}000100 (file "
        f"{seg(n)})\nCHECKPOINT LOCATION: 0/{n:X}000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n"
        f"START TIME: {time}\nLABEL: nightly\nSTART TIMELINE: 1\n"
    )
    return name, text


@pytest.mark.parametrize(
    ("timeline", "lsn", "name"),
    [
        (1, 0x0, "000000010000000000000000"),
        (1, 0x2000028, "000000010000000000000002"),
        (1, 0xFFFFFFFF, "0000000100000000000000FF"),
        (1, 0x100000000, "000000010000000100000000"),
        (2, 0x16B374D848, "0000000200000016000000B3"),
    ],
)
def test_segment_name(timeline: int, lsn: int, name: str) -> None:
    assert walfacts.segment_name(timeline, lsn) == name


@pytest.mark.parametrize(("text", "value"), [("0/0", 0), ("16/B374D848", 0x16B374D848), ("1/0", 1 << 32)])
def test_parse_lsn(text: str, value: int) -> None:
    assert walfacts.parse_lsn(text) == value


@pytest.mark.parametrize(
    ("name", "suffix", "expected"),
    [
        ("000000010000000000000001", "", True),
        ("000000010000000000000001.partial", "", True),
        ("000000010000000000000001.00000028.backup", "", False),
        ("00000002.history", "", False),
        ("000000010000000000000001.gz", ".gz", True),
        ("000000010000000000000001.gz", "", False),
        ("00000001000000000000000g", "", False),
        ("000000010000000000000001.tmp.123", "", False),
    ],
)
def test_is_segment(name: str, suffix: str, expected: bool) -> None:
    assert walfacts.is_segment(name, suffix) is expected


def test_parse_history_reads_start_segment_time_and_label() -> None:
    name, text = history(8)
    backup = walfacts.parse_history(name, text)
    assert backup == walfacts.BaseBackup(name, seg(8), "2026-01-01 00:00:00 UTC", "nightly")
    assert walfacts.parse_history("notes.txt", text) is None
    # unreadable content: the file name still names the start segment
    assert walfacts.parse_history(name, "garbage") == walfacts.BaseBackup(name, seg(8))


def backups_at(*numbers: int) -> list[walfacts.BaseBackup]:
    found = [walfacts.parse_history(*history(n)) for n in numbers]
    return [b for b in found if b is not None]


@pytest.mark.parametrize(
    ("starts", "keep", "kept"),
    [
        ([5, 8, 11], 2, [8, 11]),
        ([11, 5, 8], 2, [8, 11]),  # order of discovery does not matter
        ([5, 8, 11], 1, [11]),
        ([5, 8, 11], 5, [5, 8, 11]),
        ([5], 2, [5]),
    ],
)
def test_keep_set(starts: list[int], keep: int, kept: list[int]) -> None:
    assert [b.start_segment for b in walfacts.keep_set(backups_at(*starts), keep)] == [seg(n) for n in kept]


FILES = [walfacts.ArchiveFile(seg(n), 16) for n in range(1, 12)] + [
    walfacts.ArchiveFile(f"{seg(5)}.00000028.backup", 300),
    walfacts.ArchiveFile("00000002.history", 40),
    walfacts.ArchiveFile(f"{seg(3)}.partial", 16),
    walfacts.ArchiveFile(f"00000002{seg(4)[8:]}", 16),  # another timeline: ordered by its segment alone
]


def md5_of(name: str) -> str:
    """A stand-in MD5 per file name (any 32 hex digits do: decide compares, never computes)."""
    import hashlib

    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


EVERYTHING = {f.name: RemoteCopy(f.size, md5_of(f.name), "ETag") for f in FILES}
HERE = {f.name: md5_of(f.name) for f in FILES}
ALL_OLD = [seg(n) for n in (1, 2, 3)] + [f"{seg(3)}.partial", seg(4), f"00000002{seg(4)[8:]}"]  # oldest first


@pytest.mark.parametrize(
    ("uploaded", "local", "limit", "deleted", "held", "deferred"),
    [
        (EVERYTHING, HERE, 256, ALL_OLD, "", ""),
        ({}, HERE, 256, [], f"{seg(1)} is missing", ""),
        ({k: v for k, v in EVERYTHING.items() if k != seg(3)}, HERE, 256, [seg(1), seg(2)],
         f"{seg(3)} is missing", ""),
        ({**EVERYTHING, seg(3): RemoteCopy(15, md5_of(seg(3)), "ETag")}, HERE, 256, [seg(1), seg(2)],
         f"{seg(3)} has 15 bytes", ""),
        # Same size, other content: every segment is 16 MiB, so only the MD5 tells.
        ({**EVERYTHING, seg(3): RemoteCopy(16, "0" * 32, "ETag")}, HERE, 256, [seg(1), seg(2)],
         f"{seg(3)} in s3://b/wal/ has MD5 {'0' * 32} (ETag) but {md5_of(seg(3))} here", ""),
        ({**EVERYTHING, seg(2): RemoteCopy(16, "1" * 32, "read back")}, HERE, 256, [seg(1)],
         f"has MD5 {'1' * 32} (read back)", ""),
        ({**EVERYTHING, seg(2): RemoteCopy(16, unknown_why="encrypted with a customer key")}, HERE, 256,
         [seg(1)], f"{seg(2)} in s3://b/wal/: encrypted with a customer key", ""),
        ({k: RemoteCopy(v.size) for k, v in EVERYTHING.items()}, HERE, 256, [], "its MD5 is not known",
         ""),
        (EVERYTHING, {k: v for k, v in HERE.items() if k != seg(2)}, 256, [seg(1)],
         f"{seg(2)}: no MD5 of the archived file here", ""),
        # The per-run limits keep the rest for the next run, which is no fault.
        (EVERYTHING, HERE, 2, [seg(1), seg(2)], "", f"{seg(3)} not compared: this run checksums at most 2"),
        ({**EVERYTHING, seg(3): RemoteCopy(16, deferred="read back 64 already")}, HERE, 256,
         [seg(1), seg(2)], "", f"{seg(3)} in s3://b/wal/ not compared: read back 64 already"),
    ],
)  # fmt: skip
def test_decide_stops_at_the_first_segment_not_proven_in_s3(
    uploaded: dict[str, RemoteCopy],
    local: dict[str, str],
    limit: int,
    deleted: list[str],
    held: str,
    deferred: str,
) -> None:
    plan = wal.decide(FILES, backups_at(5, 8, 11), 3, uploaded, local, "s3://b/wal/", verify_max=limit)
    assert plan.cut is not None and plan.cut.start_segment == seg(5)
    assert [f.name for f in plan.delete] == [n for n in ALL_OLD if n in deleted]
    assert held in plan.held and bool(plan.held) is bool(held)
    assert deferred in plan.deferred and bool(plan.deferred) is bool(deferred)
    kept = len(ALL_OLD) - len(deleted) - 1
    if held or deferred:
        assert f"kept it and every newer one ({kept} more segment(s)" in plan.held + plan.deferred


def s3obj(name: str, size: int = 16, etag: str = "") -> S3Object:
    return S3Object(f"wal/{name}", size, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), etag)


@pytest.mark.parametrize(
    ("uploaded", "limit", "checked"),
    [
        ({n: s3obj(n) for n in ALL_OLD}, 256, ALL_OLD),
        ({n: s3obj(n) for n in ALL_OLD}, 2, ALL_OLD[:2]),
        ({n: s3obj(n) for n in ALL_OLD if n != seg(2)}, 256, ALL_OLD[:1]),
        ({**{n: s3obj(n) for n in ALL_OLD}, seg(1): s3obj(seg(1), 15)}, 256, []),
    ],
)
def test_to_checksum_only_what_decide_can_use(
    uploaded: dict[str, S3Object], limit: int, checked: list[str]
) -> None:
    deletable = walfacts.candidates(FILES, backups_at(5, 8, 11), 3)
    assert [f.name for f in deletable] == ALL_OLD
    assert [f.name for f in wal.to_checksum(deletable, uploaded, limit)] == checked


@pytest.mark.parametrize(
    ("etag", "md5"),
    [
        ("9e107d9d372bb6826bd81d3542a419d6", "9e107d9d372bb6826bd81d3542a419d6"),
        ('"9E107D9D372BB6826BD81D3542A419D6"', "9e107d9d372bb6826bd81d3542a419d6"),
        ("9e107d9d372bb6826bd81d3542a419d6-2", ""),  # multipart: an MD5 of the parts' MD5s
        ("", ""),
        ("not-an-md5", ""),
    ],
)
def test_etag_md5(etag: str, md5: str) -> None:
    assert walfacts.etag_md5(etag) == md5


@pytest.mark.parametrize(
    ("head", "why"),
    [
        ({}, ""),
        ({"ServerSideEncryption": "AES256"}, ""),  # SSE-S3 keeps the ETag an MD5
        ({"ServerSideEncryption": "aws:kms"}, "SSE-KMS"),
        ({"ServerSideEncryption": "aws:kms:dsse"}, "SSE-KMS"),
        ({"SSECustomerAlgorithm": "AES256"}, "SSE-C"),
    ],
)
def test_etag_not_md5(head: dict[str, str], why: str) -> None:
    assert walfacts.etag_not_md5(head) == why


def test_parse_md5sum() -> None:
    text = (
        f"d41d8cd98f00b204e9800998ecf8427e  {seg(1)}\n"
        f"\\0cc175b9c0f1b6a831c399e269772661  we\\nird\n"  # an escaped name: left out
        "md5sum: gone: No such file or directory\n"
        f"0CC175B9C0F1B6A831C399E269772661  {seg(2)}\n"  # not md5sum's case: left out
    )
    assert walfacts.parse_md5sum(text) == {seg(1): "d41d8cd98f00b204e9800998ecf8427e"}


def test_checksum_command_quotes_the_directory() -> None:
    assert walfacts.checksum_command("/srv/wal archive") == "cd '/srv/wal archive' && xargs -0 -r md5sum --"


@pytest.mark.parametrize(
    ("readback", "ok"),
    [(0, True), (64, True), (-1, False), ("many", False), (True, False), (1.5, False)],
)
def test_wal_readback_max_setting(readback: object, ok: bool) -> None:
    host = Host("db1", {"wal_archive_dir": "/a", "backup_s3_bucket": "b", "wal_s3_readback_max": readback},
                (), "inv.yml")  # fmt: skip
    if ok:
        assert wal.settings(host).readback_max == readback
    else:
        with pytest.raises(UsageError, match="wal_s3_readback_max must be a whole number"):
            wal.settings(host)


@pytest.mark.parametrize(
    ("starts", "reason"),
    [([], "no base backup history file"), ([1], "no archived segment older than")],
)
def test_decide_nothing(starts: list[int], reason: str) -> None:
    plan = wal.decide(FILES, backups_at(*starts), 2, None)
    assert not plan.delete and reason in plan.nothing_because


@pytest.mark.skipif(
    not Path("/usr/lib/postgresql/15/bin/pg_archivecleanup").exists(),
    reason="pg_archivecleanup (Debian postgresql) not installed",
)
@pytest.mark.parametrize("cut", [seg(5), seg(8), f"{seg(8)}.00000028.backup", "000000020000000000000006"])
def test_older_than_cut_matches_pg_archivecleanup(tmp_path: Path, cut: str) -> None:
    """The same files pg_archivecleanup -n would remove, on a real directory."""
    for f in FILES:
        (tmp_path / f.name).write_bytes(b"x")
    done = subprocess.run(
        ["/usr/lib/postgresql/15/bin/pg_archivecleanup", "-n", str(tmp_path), cut],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = sorted(Path(line).name for line in done.stdout.split())
    cut_segment = cut[:24]
    ours = sorted(f.name for f in walfacts.older_than_cut(FILES, cut_segment))
    assert ours == theirs
    assert shutil.which("true")


@pytest.mark.parametrize(
    ("realpath", "data_directory", "inside"),
    [
        ("/var/lib/postgresql/wal-archive", "/var/lib/postgresql/15/main", False),
        ("/var/lib/postgresql/15/main/pg_wal", "/var/lib/postgresql/15/main", True),
        ("/var/lib/postgresql/15/main/pg_wal/archive_status", "/var/lib/postgresql/15/main", True),
        ("/srv/pg/pg_wal", "", True),
        ("/srv/pg_wal_archive", "/srv/data", False),
    ],
)
def test_inside_pg_wal(realpath: str, data_directory: str, inside: bool) -> None:
    assert walfacts.inside_pg_wal(realpath, data_directory) is inside


SLOTS = [
    walfacts.Slot("idle", "physical", False, "reserved", 48 * 1024**2),
    walfacts.Slot("busy", "logical", True, "", 0),
]


@pytest.mark.parametrize(
    ("name", "action", "words"),
    [("idle", "drop", "48.0 MiB"), ("busy", "refuse", "is active"), ("gone", "none", "no replication slot")],
)
def test_decide_slot(name: str, action: str, words: str) -> None:
    got, why = walfacts.decide_slot(SLOTS, name)
    assert got == action and words in why


FAILING = {
    "failed_count": 3,
    "last_failed_wal": seg(9),
    "last_failed_time": "2026-01-02 10:00:00+00",
    "last_archived_time": "2026-01-01 09:00:00+00",
    "last_archived_wal": seg(8),
    "last_archived_age": 7200.0,
    "failing": True,
}


def test_pg_wal_report_names_inactive_slots_and_failures() -> None:
    pg = walfacts.PgFacts(wal_files=6, wal_bytes=96 * 1024**2, slots=SLOTS, archiver=FAILING)
    text = walfacts.pg_wal_report(pg)
    assert "inactive physical slot 'idle' retains 48.0 MiB" in text
    assert f"archiver is FAILING: 3 failure(s), last on {seg(9)}" in text
    assert f"nothing archived since {seg(8)}" in text
    assert "last archived 000000010000000000000008 2.0h ago" in text


@pytest.mark.parametrize(
    ("pg", "warnings"),
    [
        (walfacts.PgFacts(slots=SLOTS, archiver=FAILING), ["archiver", "slot idle"]),
        (walfacts.PgFacts(slots=SLOTS, archiver={**FAILING, "failing": False}), ["slot idle"]),
        (walfacts.PgFacts(archiver=FAILING), ["archiver"]),
        (walfacts.PgFacts(archiver={"failed_count": 0}), []),
        # An inactive slot that reserves nothing, or whose WAL is already lost, holds nothing back.
        (walfacts.PgFacts(slots=[walfacts.Slot("new", "logical", False, "", None)]), []),
        (walfacts.PgFacts(slots=[walfacts.Slot("gone", "physical", False, "lost", 10.0)]), []),
        (walfacts.PgFacts(slots=[walfacts.Slot("busy", "physical", True, "reserved", 1e9)]), []),
        (walfacts.PgFacts(error="psql: no", archiver=FAILING, slots=SLOTS), []),
    ],
)
def test_pg_warnings(pg: walfacts.PgFacts, warnings: list[str]) -> None:
    found = walfacts.pg_warnings(pg)
    assert [step for step, _ in found] == warnings
    messages = dict(found)
    if "archiver" in messages:
        assert messages["archiver"].startswith("archiver is FAILING: 3 failure(s)")
    if "slot idle" in messages:
        assert "replication slot 'idle' retains 48.0 MiB of WAL" in messages["slot idle"]


@pytest.mark.parametrize(
    ("archiver", "words"),
    [
        ({}, "archiver: no failures"),
        ({"failed_count": 0, "last_archived_wal": seg(2)}, "archiver: no failures"),
        ({**FAILING, "failing": False}, f"archiver failed before: 3 failure(s), last on {seg(9)}"),
        (FAILING, f"nothing archived since {seg(8)} at 2026-01-01 09:00:00+00"),
        ({**FAILING, "last_archived_wal": None}, "archiver is FAILING: 3 failure(s), last on"),
    ],
)
def test_describe_archiver(archiver: dict[str, object], words: str) -> None:
    from remediations.facts.postgres import describe_archiver

    assert words in describe_archiver(archiver)


@pytest.mark.parametrize(
    "schedule",
    [
        "0 4 * * 0",
        "*/5 * * * *",
        "0 0 1 jan,jul *",
        "30 2 * * mon-fri",
        "0 3 1-15/2 * 7",
        "@daily",
        " 0  4 * * 0 ",
    ],
)
def test_valid_schedules(schedule: str) -> None:
    assert cron.validate_schedule(schedule) == " ".join(schedule.split())


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("every sunday", "5 fields"),
        ("0 4 * *", "5 fields"),
        ("60 4 * * 0", "minute 60 is outside 0-59"),
        ("0 24 * * 0", "hour 24"),
        ("0 4 0 * *", "day of month 0"),
        ("0 4 * 13 *", "month 13"),
        ("0 4 * * 8", "day of week 8"),
        ("0 4 * * funday", "not a number"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("0 4 * * 0;rm", "characters"),
        ("@sometimes", "5 fields"),
        ("5/15 * * * *", "a step needs '*' or a range before it (5-59/15)"),  # Debian's crontab refuses it
    ],
)
def test_invalid_schedules(schedule: str, words: str) -> None:
    with pytest.raises(UsageError, match="not a cron expression") as caught:
        cron.validate_schedule(schedule)
    assert words in str(caught.value)


JOB = ctab.Job("restore-test", "0 4 * * 0", "cd /p && flock -n /run/lock/x.lock inv restore-test >> /l 2>&1")
M = ctab.marker("restore-test")


@pytest.mark.parametrize(
    ("current", "job", "action", "expected"),
    [
        ("", JOB, "add", f"{M}\n{JOB.line}\n"),
        ("MAILTO=x\n", JOB, "add", f"MAILTO=x\n{M}\n{JOB.line}\n"),
        (f"{M}\n{JOB.line}\n", JOB, "none", None),
        (
            f"a\n{M}\n0 5 * * * old\nb\n",
            JOB,
            "replace",
            f"a\n{M}\n{JOB.line}\nb\n",
        ),
        (f"a\n{M}\n{JOB.line}\nb\n", None, "remove", "a\nb\n"),
        ("a\n", None, "none", None),
        (
            f"{ctab.marker('other')}\nx\n",
            JOB,
            "add",
            f"{ctab.marker('other')}\nx\n{M}\n{JOB.line}\n",
        ),
        # Other lines are kept byte for byte, whatever str.splitlines would split them on.
        ("a\u2028b\x0bc\x85d\r\n", JOB, "add", f"a\u2028b\x0bc\x85d\r\n{M}\n{JOB.line}\n"),
        ("a\n\n\n", JOB, "add", f"a\n\n\n{M}\n{JOB.line}\n"),
        ("MAILTO=x", JOB, "add", f"MAILTO=x\n{M}\n{JOB.line}\n"),
        # The entry is there exactly once: copies of it go, the first one's place is kept.
        (
            f"a\n{M}\n{JOB.line}\nb\n{M}\n{JOB.line}\n",
            JOB,
            "replace",
            f"a\n{M}\n{JOB.line}\nb\n",
        ),
        (
            f"{M}\n0 5 * * * old\n{M}\nx\nb\n",
            None,
            "remove",
            "b\n",
        ),
        (f"a\n{M}\n", JOB, "replace", f"a\n{M}\n{JOB.line}\n"),
        (f"{M}\n{JOB.line}", JOB, "replace", f"{M}\n{JOB.line}\n"),
    ],
)
def test_edit_crontab(current: str, job: ctab.Job | None, action: str, expected: str | None) -> None:
    text, got = ctab.edit(current, "restore-test", job)
    assert got == action
    assert text == (current if expected is None else expected)


def test_job_line_quotes_arguments() -> None:
    command = cron_entry.job_command(
        "w",
        "wal-cleanup",
        ["--host", "db 1", "--x=it's"],
        project="/srv/my project",
        python="/v/python",
        inv="/v/inv",
        inventory="/i.yml",
        lock="/run/lock/l",
        log="/var/log/r.log",
    )
    line = ctab.Job("w", "@daily", command).line
    assert line == (
        "@daily cd '/srv/my project' && /v/python -m remediations.reporting.cronlog --name w "
        "--lock /run/lock/l -- /v/inv wal-cleanup --inventory /i.yml "
        "--host 'db 1' '--x=it'\"'\"'s' >> /var/log/r.log 2>&1"
    )


@pytest.mark.parametrize("command", ["true\n* * * * * touch /var/tmp/p", "date +%F", "a\rb"])
def test_job_line_is_one_plain_line(command: str) -> None:
    with pytest.raises(ValueError, match="not one plain line"):
        ctab.Job("w", "@daily", command).line  # noqa: B018 - the property is the check


# Line breaks of every kind a crontab (or str.splitlines) knows, other controls, and cron's `%`.
PLANT = "\n* * * * * touch /var/tmp/p #"
DAILY = {"task": "restore-test", "schedule": "@daily"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"task": "restart-api", "schedule": "@daily"}, "cron-safe"),
        ({"task": "restore-test", "schedule": "nightly"}, "not a cron expression"),
        ({**DAILY, "args": "--inventory x"}, "--inventory"),
        ({**DAILY, "args": "--inventory=x"}, "--inventory"),
        ({**DAILY, "name": "Bad Name"}, "--name"),
        ({**DAILY, "name": "x\n"}, "--name"),
        ({**DAILY, "user": "root\n"}, "--user"),
        ({**DAILY, "log": "rel.log"}, "absolute"),
        ({**DAILY, "log": f"/var/log/x.log{PLANT}"}, "control character"),
        ({**DAILY, "log": "/var/log/x.log\r"}, "control character '\\r'"),
        ({**DAILY, "log": "/var/log/x\t.log"}, "control character '\\t'"),
        ({**DAILY, "log": "/var/log/x\x7f.log"}, "control character"),
        ({**DAILY, "log": "/var/log/x\x85.log"}, "control character"),
        ({**DAILY, "log": "/var/log/x\u2028.log"}, "control character"),
        ({**DAILY, "log": "/var/log/x\x00.log"}, "control character"),
        ({**DAILY, "log": "/var/log/%d.log"}, "'%'"),
        ({**DAILY, "log": "/var/log/../tmp/x.log"}, "normalised"),
        ({**DAILY, "log": "/var/log//x.log"}, "give '/var/log/x.log'"),
        ({**DAILY, "log": "/var/log/./x.log"}, "normalised"),
        ({**DAILY, "log": "/var/log/x/"}, "normalised"),
        ({**DAILY, "args": f"--dump 'a{PLANT}'"}, "control character"),
        ({**DAILY, "args": "--dump 'a\tb'"}, "control character '\\t'"),
        # unquoted, a newline or a tab is only a separator to shlex: refused before the split
        ({**DAILY, "args": "--host api2\n* * * * * root touch /var/tmp/p"}, "--args '--host api2\\n"),
        ({**DAILY, "args": "--host\tapi2"}, "control character '\\t'"),
        ({**DAILY, "args": "--dump a%b"}, "'%'"),
        ({**DAILY, "args": "--dump 'a"}, "--args"),
        ({"task": "restore-test", "schedule": f"0 4 * * 0{PLANT}"}, "control character"),
        ({"task": "restore-test", "schedule": "0\t4 * * 0"}, "control character"),
        ({"task": "restore-test", "schedule": "0 4 * * 0\r"}, "control character"),
    ],
)
def test_install_cron_bad_input(kwargs: dict[str, str], words: str) -> None:
    task, schedule = kwargs.pop("task"), kwargs.pop("schedule")
    with pytest.raises(UsageError) as caught:
        cron.InstallCron(task, schedule, inventory="/i.yml", **kwargs)  # type: ignore[arg-type]
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_args_are_split_checked_and_quoted_again() -> None:
    # the slot name must be one wal-cleanup accepts: install-cron refuses values every run would refuse
    args = "--host 'db1 db2' --drop-inactive-slot \"old_slot\""
    remediation = cron.InstallCron("wal-cleanup", "@hourly", args=args, inventory="/i.yml")
    job = remediation.job(Host("h", {"cron_project_dir": "/srv/p"}))
    assert job.line.endswith(
        "/srv/p/.venv/bin/inv wal-cleanup --inventory /i.yml --host 'db1 db2' --drop-inactive-slot "
        "old_slot >> /var/log/remediations/cron.log 2>&1"
    )


@pytest.mark.parametrize(
    ("host_vars", "words"),
    [
        ({"cron_project_dir": "/srv/p\n* * * * * touch /var/tmp/p"}, "host h: cron_project_dir"),
        ({"cron_project_dir": "srv/p"}, "absolute"),
        ({"cron_inv": "/srv/../bin/inv"}, "host h: cron_inv"),
        ({"cron_inventory": "/etc/%s.yml"}, "host h: cron_inventory"),
        ({"lock_dir": "/run/lo\nck"}, "host h: lock_dir"),
        ({"lock_dir": "run/lock"}, "host h: lock_dir"),
    ],
)
def test_install_cron_bad_host_vars_before_connecting(host_vars: dict[str, str], words: str) -> None:
    remediation = cron.InstallCron("health", "@daily", args="--host h", inventory="/i.yml")
    with pytest.raises(UsageError) as caught:
        remediation.validate(Host("h", host_vars))
    assert words in str(caught.value)


def test_bad_inventory_path_is_bad_input() -> None:
    with pytest.raises(UsageError, match="--inventory"):
        remediation = cron.InstallCron("health", "@daily", args="--host h", inventory="/tmp/x\n.yml")
        remediation.validate(Host("h", {}))
    # Removing builds no entry: the paths it would run do not matter.
    cron.InstallCron("health", None, remove=True, inventory="/tmp/x\n.yml").validate(Host("h", {}))



def test_cron_safe_tasks_come_from_the_registry() -> None:
    """install-cron schedules the classes that say `cron_safe = True`; the refusal lists them."""
    wanted = {"restore-test", "backup-check", "wal-cleanup", "ensure-healthy", "health", "unblock-expired",
              "restore-pitr", "base-backup"}
    assert set(cron.cron_safe_tasks()) == wanted
    with pytest.raises(UsageError) as caught:
        cron.InstallCron("restart-api", "@daily", inventory="/i.yml")
    listed = str(caught.value).split("cron-safe tasks: ", 1)[1]
    assert set(listed.split(", ")) == wanted


def test_default_project_dir_is_the_project_folder() -> None:
    """The entry cds into the folder that holds tasks.py (not the remediations package)."""
    assert (Path(cron.PROJECT_DIR) / "tasks.py").is_file()


TEXT = f"MAILTO=x\n{ctab.marker('health')}\n@daily old\n"


@pytest.mark.parametrize(
    ("current", "remove", "summary", "diff"),
    [
        ("", False, None, None),  # the entry as wanted: see below
        ("MAILTO=x\n", False, "add crontab entry 'health'", "+ "),
        (TEXT, False, "replace crontab entry 'health'", "- @daily old"),
        (TEXT, True, "remove crontab entry 'health'", "- @daily old"),
        ("MAILTO=x\n", True, None, None),
    ],
)
def test_install_cron_decide(current: str, remove: bool, summary: str | None, diff: str | None) -> None:
    remediation = cron.InstallCron("health", "@daily", args="--host h", remove=remove, inventory="/i.yml")
    job = None if remove else remediation.job(Host("h", {"cron_project_dir": "/srv/p"}))
    if current == "" and job is not None:
        current = f"{ctab.marker('health')}\n{job.line}\n"
    facts = cron.CronFacts("crontab", ctab.Crontab(current, True), job)
    plan = remediation.decide(None, facts)  # type: ignore[arg-type]  # decide reads no context
    if summary is None:
        assert plan.empty and plan.reason in ("entry 'health' is up to date", "entry 'health' is absent")
        return
    (change,) = plan.changes
    assert (change.step, change.summary, plan.check_step) == ("apply", summary, "decide")
    assert diff in change.diff


EMPTY = ctab.sha256("")


@pytest.mark.parametrize(
    ("stdout", "missing", "crontab", "error"),
    [
        (f"@@crontab 0 {ctab.sha256('a' + chr(10) * 2)}\na\n\n", [], ctab.Crontab("a\n\n", True), ""),
        (f"@@crontab 0 {EMPTY}\n", [], ctab.Crontab("", True), ""),
        (f"@@crontab 1 {EMPTY}\nno crontab for root\n", [], ctab.Crontab("", False), ""),
        (f"@@crontab 1 {EMPTY}\nPermission denied\n", [], None, "Permission denied"),
        # Not UTF-8 on the host: decoded with replacement characters, so the sha256 differs.
        (f"@@crontab 0 {ctab.sha256('x')}\n\ufffd\n", [], None, "not UTF-8"),
        (f"@@missing flock\n@@crontab 0 {EMPTY}\n", ["flock"], ctab.Crontab("", True), ""),
    ],
)
def test_parse_facts(stdout: str, missing: list[str], crontab: ctab.Crontab | None, error: str) -> None:
    got_missing, got, got_error = ctab.parse_facts(stdout)
    assert (got_missing, got) == (missing, crontab)
    assert error in got_error


@pytest.mark.parametrize(
    ("stdout", "words"),
    [
        ("@@moved\n", "changed since this run read it"),
        ("@@restored\nerr text\n", "the previous crontab is restored (err text)"),
        ("@@not-restored\n", "restoring the previous crontab failed too"),
        ('@@unchanged\n"-":1: bad minute\n', 'refused the new crontab; nothing changed ("-":1: bad minute)'),
        ("@@mkdir\n", "cannot make the log folder /var/log/x"),
        ("something else\n", ""),
    ],
)
def test_install_failures(stdout: str, words: str) -> None:
    got = cron._install_failure(stdout, "/var/log/x")
    assert words in got and (got != "") == (words != "")


NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


def obj(key: str, size: int, hours_ago: float) -> S3Object:
    return S3Object(key, size, NOW - dt.timedelta(hours=hours_ago))


def test_newest_dump_and_base_backup() -> None:
    dumps = [obj("dumps/a.dump", 10, 30), obj("dumps/b.dump", 20, 2), obj("dumps/", 0, 1)]
    assert backups.newest_dump(dumps) == backups.Backup("dumps/b.dump", 20, NOW - dt.timedelta(hours=2))
    bases = [
        obj("bb/1/base.tar.gz", 100, 50),
        obj("bb/2/base.tar.gz", 300, 3),
        obj("bb/2/pg_wal.tar.gz", 5, 2.9),
        obj("bb/single.tar", 7, 40),
    ]
    newest = backups.newest_base_backup(bases, "bb/")
    assert newest is not None and (newest.name, newest.size) == ("bb/2/", 305)
    assert backups.newest_dump([]) is None


@pytest.mark.parametrize(
    ("backup", "ok", "words"),
    [
        (backups.Backup("d", 5000, NOW - dt.timedelta(hours=2)), True, "2.0h old"),
        (backups.Backup("d", 5000, NOW - dt.timedelta(hours=30)), False, "older than the RPO of 26h"),
        (backups.Backup("d", 10, NOW - dt.timedelta(hours=2)), False, "smaller than 1.0 KiB"),
        (None, False, "no dump found"),
    ],
)
def test_backup_verdict(backup: backups.Backup | None, ok: bool, words: str) -> None:
    got, why = backups.verdict("dump", backup, NOW, 26, 1024)
    assert got is ok and words in why


def host(**variables: object) -> Host:
    return Host("r1", {"backup_s3_bucket": "b", **variables}, (), "inv.yml")


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"restore_database": "shop", "restore_protected_databases": ["shop"]}, "production database"),
        ({"restore_database": "postgres"}, "production database"),
        ({"restore_database": "Bad-Name"}, "plain lower-case name"),
        ({"restore_check_tables": {"orders; drop": 1}}, "[schema.]table"),
        ({"restore_freshness_column": "orders"}, "[schema.]table.column"),
        ({"backup_rpo_hours": 0}, "positive number"),
    ],
)
def test_restore_settings_refused(variables: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError) as caught:
        restore_test.settings(host(**variables))
    assert words in str(caught.value)


SETTINGS = restore_test.settings(
    host(
        restore_check_tables={"orders": 100, "public.customers": 10},
        restore_freshness_column="orders.created_at",
        backup_rpo_hours=24,
    )
)


@pytest.mark.parametrize(
    ("exists", "measured", "problems"),
    [
        (
            {"t:orders": True, "t:public.customers": True, "c:orders.created_at": True},
            {"t:orders": 150, "t:public.customers": 10, "newest_age": 60.0},
            [],
        ),
        (
            {"t:orders": True, "t:public.customers": False, "c:orders.created_at": True},
            {"t:orders": 150, "newest_age": 60.0},
            ["table public.customers is missing"],
        ),
        (
            {"t:orders": True, "t:public.customers": True, "c:orders.created_at": True},
            {"t:orders": 99, "t:public.customers": 10, "newest_age": 90000.0},
            ["orders has 99 rows, fewer than the minimum 100", "older than the RPO of 24h"],
        ),
        (
            {"t:orders": True, "t:public.customers": True, "c:orders.created_at": False},
            {"t:orders": 100, "t:public.customers": 10},
            ["column orders.created_at is missing"],
        ),
        (
            {"t:orders": True, "t:public.customers": True, "c:orders.created_at": True},
            {"t:orders": 100, "t:public.customers": 10, "newest_age": None},
            ["has no values"],
        ),
    ],
)
def test_restore_checks(exists: dict[str, bool], measured: dict[str, object], problems: list[str]) -> None:
    outcome = restore_test.evaluate(SETTINGS, exists, measured)
    assert outcome.ok is (not problems)
    for words in problems:
        assert any(words in p for p in outcome.problems), outcome.problems
    assert len(outcome.problems) == len(problems)


def test_metrics_text() -> None:
    text = drill_report.metrics_text(
        'db"1',
        {
            "success": True,
            "duration_seconds": 12.5,
            "phases": {"restore": 3.0},
            "last_success_timestamp": 1700000000.4,
            "rows": {"orders": 150},
        },
    )
    assert 'restore_test_success{restore_host="db\\"1"} 1\n' in text
    assert 'restore_test_duration_seconds{restore_host="db\\"1"} 12.500\n' in text
    assert 'restore_test_phase_duration_seconds{restore_host="db\\"1",phase="restore"} 3.000\n' in text
    assert 'restore_test_last_success_timestamp_seconds{restore_host="db\\"1"} 1700000000\n' in text
    assert 'restore_test_rows{restore_host="db\\"1",table="orders"} 150\n' in text
    failed = drill_report.metrics_text("h", {"success": False, "last_success_timestamp": None})
    assert 'restore_test_success{restore_host="h"} 0' in failed
    assert 'restore_test_last_success_timestamp_seconds{restore_host="h"} 0' in failed


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.prom"
    drill_report.write_atomically(str(target), "one\n")
    drill_report.write_atomically(str(target), "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["m.prom"]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("orders", '"orders"'), ("public.orders", '"public"."orders"'), ('we"ird', '"we""ird"')],
)
def test_sql_identifier(name: str, quoted: str) -> None:
    assert sql_identifier(name) == quoted


def test_sql_literal() -> None:
    assert sql_literal("it's") == "'it''s'"
