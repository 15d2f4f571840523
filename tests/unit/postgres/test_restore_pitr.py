"""restore-pitr's pure parts: backup choice by when a backup *ended*, the WAL a recovery reads along
a timeline's history, the refusals, the strict --to grammar and the recovery settings.

The PostgreSQL texts below are real: captured from PostgreSQL 15.18 on the lab (pitr_data/: a backup
history file, the end of a backup_manifest, two timeline history files made by two restores, a
recovery log), by tests/lab/postgres/test_restore_pitr.py with RMLAB_PITR_CAPTURE set.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from remediations.actions import pitr_host, pitr_s3host
from remediations.core.errors import UsageError
from remediations.core.units import parse_timestamp
from remediations.facts import pitr
from remediations.facts.postgres import PgTarget

DATA = Path(__file__).parent / "pitr_data"
BACKUP_HISTORY = (DATA / "000000010000000000000002.00000028.backup").read_text()
MANIFEST_TAIL = (DATA / "backup_manifest.tail").read_text()  # its last 600 bytes
TL2_HISTORY = (DATA / "00000002.history").read_text()
TL3_HISTORY = (DATA / "00000003.history").read_text()
RECOVERY_LOG = (DATA / "recovery.log").read_text()  # of the second restore (timeline 2 to 3)
NAME = "000000010000000000000002.00000028.backup"


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def history(start_segment: int, stop: str, timeline: int = 1) -> pitr.BackupHistory:
    lsn = start_segment * pitr.SEGMENT_SIZE + 0x28
    return pitr.BackupHistory(
        f"{pitr.name_of(timeline, start_segment)}.00000028.backup", lsn, lsn + 0xD8, timeline, utc(stop)
    )


def backup(folder: str, start_segment: int, stop: str) -> pitr.BaseBackup:
    found = history(start_segment, stop)
    return pitr.BaseBackup(folder, "base.tar", 1 << 20, found.start_lsn, found)


# ------------------------------------------------------------------------------ parsing real files


def test_a_real_backup_history_file_and_manifest() -> None:
    found = pitr.parse_backup_history(NAME, BACKUP_HISTORY, archived_at=5.0)
    assert found is not None
    assert (found.start_lsn, found.stop_lsn, found.timeline) == (0x2000028, 0x2000100, 1)
    assert found.stop_time == utc("2026-12-01 19:08:53")
    assert found.ended == utc("2026-12-01 19:08:54"), (
        "STOP TIME has whole seconds: the end is within the next"
    )
    assert found.label == "20261201T190853184389Z"
    assert pitr.manifest_start(MANIFEST_TAIL) == found.start_lsn
    matched = pitr.match_backups([pitr.BaseBackup("b1", "base.tar", 10, 0x2000028)], [found])
    assert matched[0].history == found


def test_backup_history_time_zones() -> None:
    plus3 = BACKUP_HISTORY.replace("STOP TIME: 2026-12-01 19:08:53 UTC", "STOP TIME: 2026-12-01 22:08:53 +03")
    parsed = pitr.parse_backup_history(NAME, plus3)
    assert parsed is not None and parsed.stop_time == utc("2026-12-01 19:08:53")
    # An abbreviation we cannot place (CET, EST, …): the time the file was archived stands in, which
    # is never before the backup ended.
    cet = pitr.parse_backup_history(
        NAME, BACKUP_HISTORY.replace("53 UTC\nSTOP TIMELINE", "53 CET\nSTOP TIMELINE"), archived_at=1234.5
    )
    assert cet is not None and cet.stop_time is None and cet.ended == 1234.5
    assert pitr.parse_backup_history(NAME, "START WAL LOCATION: 0/2000028\n") is None, "no stop: incomplete"
    assert pitr.parse_backup_history("000000010000000000000002", BACKUP_HISTORY) is None


def test_real_timeline_history_files() -> None:
    assert pitr.parse_timeline_history(TL2_HISTORY) == [(1, 0x4018418)]
    assert pitr.parse_timeline_history(TL3_HISTORY) == [(1, 0x4018418), (2, 0x6008CB8)]
    path = pitr.timeline_path(3, {2: TL2_HISTORY, 3: TL3_HISTORY})
    assert path == [pitr.TimelineStep(1, 0), pitr.TimelineStep(2, 0x4018418), pitr.TimelineStep(3, 0x6008CB8)]
    assert isinstance(path, list)
    # Segment 4 holds timeline 2's start: recovery reads it from timeline 2, as segment 6 from 3.
    assert [pitr.timeline_at(path, n) for n in (2, 3, 4, 5, 6, 7)] == [1, 1, 2, 2, 3, 3]
    assert (
        pitr.timeline_path(3, {2: TL2_HISTORY})
        == "timeline 3's history file 00000003.history is not in the archive"
    )
    assert pitr.expected_timeline(2, {2: TL2_HISTORY}) == 3
    assert pitr.expected_timeline(2, {2: TL2_HISTORY, 3: TL3_HISTORY}) == 4, (
        "PostgreSQL probes past the target"
    )
    assert pitr.expected_timeline(1, {}) == 2


def test_the_recovery_log_says_where_it_stopped() -> None:
    assert pitr_host.stopped_at(RECOVERY_LOG) == ("before", utc("2026-12-01 19:09:17.349633"))
    assert pitr_host.stopped_at("LOG:  redo done at 0/6008CB8\n") == ("", None)


# ------------------------------------------------------------------------------ which base backup


def test_the_newest_backup_that_ended_before_the_target() -> None:
    older = backup("monday", 2, "2026-12-01 10:00:00")
    newer = backup("tuesday", 8, "2026-12-02 10:00:00")
    assert pitr.choose_backup([newer, older], utc("2026-12-02 12:00:00")).backup == newer
    assert pitr.choose_backup([newer, older], utc("2026-12-01 12:00:00")).backup == older
    assert pitr.choose_backup([newer, older], None).backup == newer
    # Started before the target but ended after it: a recovery from it cannot stop there (pgBackRest
    # #817 picks by start, or silently ignores the target).
    ended_late = pitr.choose_backup([older, newer], utc("2026-12-02 10:00:00.5"))
    assert ended_late.backup == older


def test_a_target_before_every_backup_is_refused_naming_the_oldest() -> None:
    older = backup("monday", 2, "2026-12-01 10:00:00")
    newer = backup("tuesday", 8, "2026-12-02 10:00:00")
    refused = pitr.choose_backup([newer, older], utc("2026-12-01 09:00:00"))
    assert refused.backup is None
    assert refused.refused == (
        "no base backup ended before the target 2026-12-01 09:00:00+00: the oldest, "
        "monday, ended at 2026-12-01 10:00:01+00"
    )
    unmatched = pitr.choose_backup([pitr.BaseBackup("lost", "base.tar", 1, 0x9000028)], None)
    assert unmatched.backup is None and "history file" in unmatched.refused and "lost" in unmatched.refused


# ------------------------------------------------------------------------------ the WAL range


def segments(timeline: int, numbers: range, archived: float) -> dict[str, pitr.Segment]:
    return {pitr.name_of(timeline, n): pitr.Segment(16 << 20, archived + n) for n in numbers}


PATH1 = [pitr.TimelineStep(1, 0)]


def test_the_wal_range_ends_at_the_first_segment_archived_after_the_target() -> None:
    archive = segments(1, range(2, 10), 1000.0)  # segment n archived at 1000 + n
    found = pitr.wal_range(0x2000028, PATH1, archive, 1005.5)
    assert (found.first, found.last, found.count, found.refused) == (
        "000000010000000000000002",
        "000000010000000000000006",
        5,
        "",
    )
    to_end = pitr.wal_range(0x2000028, PATH1, archive, None)
    assert (to_end.last, to_end.count, to_end.refused) == ("000000010000000000000009", 8, "")


def test_a_hole_in_the_archive_and_a_target_past_its_end_are_refused() -> None:
    archive = segments(1, range(2, 10), 1000.0)
    del archive["000000010000000000000004"]
    hole = pitr.wal_range(0x2000028, PATH1, archive, 1008.5)
    assert hole.refused.startswith("WAL segment 000000010000000000000004 is missing from the archive")
    archive = segments(1, range(2, 10), 1000.0)
    past = pitr.wal_range(0x2000028, PATH1, archive, 2000.0)
    assert past.refused == (
        "the target is past the archive's end: the archive ends at 000000010000000000000009 "
        "archived at 1970-01-01 00:16:49+00"
    )


def test_the_range_follows_the_timeline_history_not_the_abandoned_segments() -> None:
    """After a restore, timeline 1 went on (the damage) and timeline 2 branched in segment 4: the
    range must read 2-3 from timeline 1 and 4- from timeline 2, and timeline 1's later segments do
    not count as "the archive goes on"."""
    path = pitr.timeline_path(2, {2: TL2_HISTORY})
    assert isinstance(path, list)
    archive = {**segments(1, range(2, 9), 1000.0), **segments(2, range(4, 6), 2000.0)}
    found = pitr.wal_range(0x2000028, path, archive, 2004.5)
    assert (found.last, found.count, found.refused) == ("000000020000000000000005", 4, "")
    past = pitr.wal_range(0x2000028, path, archive, 3000.0)
    assert "past the archive's end" in past.refused and "000000020000000000000005" in past.refused
    del archive["000000020000000000000004"]
    hole = pitr.wal_range(0x2000028, path, archive, 2005.5)
    assert "000000020000000000000004 is missing" in hole.refused, "timeline 1's segment 4 is not a stand-in"


# ------------------------------------------------------------------------------ input and settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15 14:30:00+03", "2024-01-15 11:30:00"),
        ("2024-01-15T11:30:00Z", "2024-01-15 11:30:00"),
        ("2024-01-15 11:30 UTC", "2024-01-15 11:30:00"),
        ("2024-01-15 09:00:00.25-0230", "2024-01-15 11:30:00.25"),
        ("2024-01-15 14:30:00+03:00", "2024-01-15 11:30:00"),
    ],
)
def test_to_accepts_a_time_with_an_explicit_offset(text: str, expected: str) -> None:
    assert parse_timestamp(text, "--to") == utc(expected)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2024-01-15 14:30:00", "no UTC offset"),
        ("2024-01-15", "explicit UTC offset"),
        ("yesterday 14:30+03", "explicit UTC offset"),
        ("1 h ago", "explicit UTC offset"),
        ("2024-02-30 10:00:00Z", "day is out of range"),
        ("2024-01-15 14:30:00+19", "out of range"),
        ("2024-01-15 14:30:00 CET", "explicit UTC offset"),
    ],
)
def test_to_refuses_anything_else_in_one_line(text: str, why: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_timestamp(text, "--to")
    assert why in str(raised.value) and "\n" not in str(raised.value)


def test_recovery_settings_quote_the_archive_and_hold_archiving() -> None:
    drill = pitr_host.overrides("/srv/wal it's", "2024-01-15 11:30:00+00", 2, 5433, drill=True)
    assert "restore_command = 'cp ''/srv/wal it''\"''\"''s''/%f \"%p\"'" in drill
    assert "recovery_target_time = '2024-01-15 11:30:00+00'" in drill
    assert "recovery_target_action = 'promote'" in drill and "recovery_target_timeline = '2'" in drill
    assert "archive_mode = off" in drill and "listen_addresses = ''" in drill and "port = 5433" in drill
    switch = pitr_host.overrides("/a", "", 1, 5433, drill=False)
    assert "archive_command = ''" in switch and "archive_mode = on" in switch
    assert "recovery_target_time =" not in switch


def test_host_scripts_quote_every_path() -> None:
    lay = pitr_host.layout(
        PgTarget(bin_dir="/usr/lib/postgresql/15/bin"),
        "/var/lib/pg data/15",
        "/run/pg",
        5433,
        dt.datetime(2026, 12, 1, 19, 0, tzinfo=dt.UTC),
    )
    assert lay.new_dir == "/var/lib/pg data/15.pitr-20261201T190000Z"
    assert lay.kept_dir == "/var/lib/pg data/15.pre-pitr-20261201T190000Z"
    text = pitr_host.switch_script(lay, "start", "stop") + pitr_host.restore_script(lay, "/b k/base.tar")
    assert "'/var/lib/pg data/15.pitr-20261201T190000Z'" in text and "'/b k/base.tar'" in text
    assert " /var/lib/pg data" not in text


def test_only_a_drill_runs_from_cron_and_a_switch_needs_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from remediations.postgres.restore_pitr import RestorePitr
    from remediations.reporting.cronlog import RUN_ID_ENV

    with pytest.raises(UsageError, match="--to is required"):
        RestorePitr()
    monkeypatch.setenv(RUN_ID_ENV, "20261201T000000Z-1")
    with pytest.raises(UsageError, match="from cron, give --drill"):
        RestorePitr(to=1.0, yes=True)
    assert RestorePitr(drill=True).drill


def test_judge_the_promoted_server() -> None:
    """What the verification accepts: out of recovery, the expected timeline, the last replayed
    commit at or before the target and the next one (where the log says it stopped) after it."""
    target = utc("2026-12-01 19:09:16.229397")
    good = {"in_recovery": False, "timeline": 3, "replayed_at": utc("2026-12-01 19:09:15.124094")}
    problems, message = pitr_host.judge(good, RECOVERY_LOG, target, expected=3)
    assert problems == []
    assert message == (
        "promoted on timeline 3; last replayed commit 2026-12-01 19:09:15.124094+00, stopped "
        "before the commit at 2026-12-01 19:09:17.349633+00 (target 2026-12-01 19:09:16.229397+00)"
    )
    assert pitr_host.judge({**good, "timeline": 2}, RECOVERY_LOG, target, 3)[0] == [
        "it is on timeline 2, expected 3"
    ]
    assert (
        pitr_host.judge({**good, "in_recovery": True}, RECOVERY_LOG, target, 3)[0][0]
        == "it is still in recovery"
    )
    # Replayed everything and promoted without reaching the target (WAL-G #978's silent no-op):
    no_stop = "LOG:  redo done at 0/6008CB8\nLOG:  selected new timeline ID: 3\n"
    assert pitr_host.judge(good, no_stop, target, 3)[0] == ["its log says no recovery target was reached"]
    late = {**good, "replayed_at": target + 1}
    assert "is after the target" in pitr_host.judge(late, RECOVERY_LOG, target, 3)[0][0]
    assert "not after the target" in pitr_host.judge(good, RECOVERY_LOG, utc("2026-12-01 19:09:18"), 3)[0][0]
    assert pitr_host.judge(good, no_stop, None, 3)[0] == [], "to the archive's end: no stop line expected"


def test_history_files_only_or_different_in_s3_are_a_disagreement() -> None:
    local = {2: TL2_HISTORY}
    assert pitr.disagreement(local, {}, "/arch", "s3://b/wal/") == ""
    assert pitr.disagreement(local, {2: TL2_HISTORY + "\n"}, "/arch", "s3://b/wal/") == "", "same lines"
    stray = pitr.disagreement(local, {2: TL2_HISTORY, 3: TL3_HISTORY}, "/arch", "s3://b/wal/")
    assert "00000003.history only in s3://b/wal/" in stray, stray
    other = pitr.disagreement(local, {2: "1\t0/3000000\tno recovery target specified\n"}, "/arch", "s3://b/")
    assert "00000002.history different in /arch and s3://b/" in other, other


# ------------------------------------------------------------------------ base backups in S3, --onto


def s3_source() -> pitr_host.S3Source:
    return pitr_host.S3Source("http://198.18.0.1:9000/b/base it's/", "/etc/pg s3.conf", "us-east-1")


def test_upload_and_fetch_scripts_quote_every_value_and_carry_no_secret() -> None:
    upload = pitr_s3host.upload_script(
        "postgres", "/b k/20261201T190000Z", "base.tar", s3_source(), "20261201T190000Z", 8 << 20
    )
    fetch = pitr_s3host.fetch_command(
        "postgres",
        s3_source(),
        "20261201T190000Z",
        (pitr.Part("base.tar.00000", 5, "0" * 32),),
        "/d n/x",
        gz=False,
    )
    for text in (upload, fetch):
        assert text.startswith("as_user postgres sh -c ") and "-K " in text and "--aws-sigv4" in text
        assert "rmlab" not in text and "user =" not in text, "the key stays in the credentials file"
    assert "n=8" in upload and "backup_manifest" in upload
    assert "0" * 32 in fetch and "tar -xf - -C" in fetch


def test_parts_are_read_back_and_a_wrong_etag_refuses() -> None:
    md5 = "9e107d9d372bb6826bd81d3542a419d6"
    out = f"noise\n@@part base.tar.00000 10 {md5} {md5}\n@@part backup_manifest 3 {md5} -\n"
    parts = pitr_s3host.parse_parts(out)
    assert [p.name for p in parts] == ["base.tar.00000", "backup_manifest"]
    assert pitr_s3host.parse_parts(f"@@part base.tar.00000 10 {md5} {'a' * 32}-2\n"), (
        "a multipart ETag is not an MD5"
    )
    with pytest.raises(ValueError, match="is not the MD5"):
        pitr_s3host.parse_parts(f"@@part base.tar.00000 10 {md5} {'a' * 32}\n")


def test_a_marker_makes_a_backup_only_with_every_part_whole() -> None:
    import datetime as dt

    from remediations.actions.s3client import S3Object
    from remediations.postgres import pitr_s3

    parts = [pitr.Part("base.tar.00000", 8, "a" * 32), pitr.Part("base.tar.00001", 3, "b" * 32)]
    marker = pitr_s3host.marker_text(
        "S", "base.tar", [*parts, pitr.Part("backup_manifest", 1, "c" * 32)], "0/2000028", 1, "db1"
    )
    now = dt.datetime.now(dt.UTC)
    objects = {p.name: S3Object(f"x/S/{p.name}", p.size, now) for p in parts}
    found = pitr_s3.as_backup("S", marker, objects)
    assert found is not None and found.in_s3 and found.size == 11 and found.start_lsn == 0x2000028
    assert [p.name for p in found.parts] == ["base.tar.00000", "base.tar.00001"], "the manifest is not a part"
    assert found.label == "S (S3)"
    short = {**objects, "base.tar.00001": S3Object("x/S/base.tar.00001", 2, now)}
    assert pitr_s3.as_backup("S", marker, short) is None, "a part cut short"
    assert pitr_s3.as_backup("S", marker, {"base.tar.00000": objects["base.tar.00000"]}) is None
    assert pitr_s3.as_backup("S", "{not json", objects) is None


def test_a_restore_host_reads_wal_from_s3_only_on_its_own_socket() -> None:
    onto = pitr_host.overrides("", "", 1, 5433, True, s3_source(), "/r/db1.pitr-X")
    assert "restore_command = 'curl " in onto and "cp " not in onto
    assert "unix_socket_directories = '/r/db1.pitr-X'" in onto and "archive_mode = off" in onto


def test_onto_is_a_drill_onto_another_inventory_host(tmp_path: Path) -> None:
    from remediations.core.inventory import load
    from remediations.postgres.restore_pitr import RestorePitr

    with pytest.raises(UsageError, match="only a --drill restores onto another host"):
        RestorePitr(to=1.0, yes=True, onto="dbrestore")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    db1: {wal_archive_dir: /a, basebackup_local_dir: /b}\n"
        "    dbrestore: {postgres_port: 5432}\n"
    )
    loaded = load(str(inventory))
    with pytest.raises(UsageError, match="no host nohost"):
        RestorePitr(drill=True, onto="nohost").prepare(loaded)
    with pytest.raises(UsageError, match="needs pitr_s3_credentials_file on it"):
        RestorePitr(drill=True, onto="dbrestore").prepare(loaded)


def test_writers_stop_only_for_a_switch() -> None:
    from remediations.actions.writers import Writer
    from remediations.postgres.restore_pitr import RestorePitr

    with pytest.raises(UsageError, match="a drill stops no writer"):
        RestorePitr(drill=True, stop=[Writer("api1", "worker")])
    assert RestorePitr(to=1.0, yes=True, stop=[Writer("api1", "worker")]).arguments()["stop"] == [
        "api1:worker"
    ]
