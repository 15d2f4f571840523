"""restore-pitr's view of S3, read from the controller: the archive's WAL segments and history files
(what the restore_command can fetch besides the local archive) and the base backups base-backup
uploaded (a folder counts only with its marker, written last, and every part it lists).

The credentials file the host signs its requests with is checked first (it exists, belongs to the
database's OS user, mode 0600 or 0400): a restore_command that cannot read it would fail mid-way.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from remediations.actions import pitr_s3host
from remediations.actions.s3client import S3Object, S3Store
from remediations.core.context import HostContext
from remediations.facts import pitr
from remediations.facts.wal import parse_lsn
from remediations.postgres.pitr_settings import BaseS3, Settings, refuse

HISTORY_MAX = 64 * 1024  # a timeline history file is a few lines per timeline


@dataclass
class S3Archive:
    segments: dict[str, pitr.Segment] = field(default_factory=dict)
    timelines: dict[int, str] = field(default_factory=dict)  # timeline → its history file's text
    where: str = ""
    backup_files: dict[str, S3Object] = field(default_factory=dict)  # its `.backup` history files


def check_credentials(credentials_file: str, stat: str, user: str, host: str = "") -> None:
    """`stat` is "MODE OWNER" of pitr_s3_credentials_file on the host ("" when it is missing)."""
    mode, _, owner = stat.partition(" ")
    name = f"pitr_s3_credentials_file {credentials_file}" + (f" on {host}" if host else "")
    if not mode:
        raise refuse(f"{name} does not exist on the host")
    if owner != user:
        raise refuse(f"{name} belongs to {owner}, not {user}")
    if mode not in ("600", "400"):
        raise refuse(f"{name} has mode {mode}: make it 0600")


def stat_command(credentials_file: str) -> str:
    """Prints `@@credentials MODE OWNER` (empty when the file is missing)."""
    return f'echo "@@credentials $(stat -c "%a %U" -- {shlex.quote(credentials_file)} 2>/dev/null)"'


def store(ctx: HostContext) -> S3Store:
    made = S3Store(ctx.host.vars)
    for secret in made.secrets:
        ctx.redactor.add_value(secret)
    return made


def read_archive(ctx: HostContext, conf: Settings) -> S3Archive:
    """One listing of wal_s3_prefix, and the text of each timeline history file in it."""
    s3 = store(ctx)
    found = S3Archive(where=s3.where(conf.s3_bucket, conf.s3_prefix))
    for item in s3.list(conf.s3_bucket, conf.s3_prefix):
        name = item.key[len(conf.s3_prefix) :]
        if pitr.SEGMENT_RE.match(name):
            found.segments[name] = pitr.Segment(item.size, item.modified.timestamp())
        history = pitr.TL_HISTORY_RE.match(name)
        if history and item.size <= HISTORY_MAX:
            found.timelines[int(history.group(1), 16)] = read_text(s3, conf.s3_bucket, item.key)
        if pitr.BACKUP_NAME_RE.match(name):
            found.backup_files[name] = item
    return found


def histories_for(
    ctx: HostContext, conf: Settings, archive: S3Archive, backups: list[pitr.BaseBackup]
) -> list[pitr.BackupHistory]:
    """The history files of S3 base backups that the local archive does not hold, from S3."""
    s3 = store(ctx)
    found = []
    for backup in backups:
        if backup.start_lsn is None:
            continue
        item = archive.backup_files.get(pitr.history_name(backup.timeline or 1, backup.start_lsn))
        if item is not None and item.size <= HISTORY_MAX:
            name = item.key[len(conf.s3_prefix) :]
            text = read_text(s3, conf.s3_bucket, item.key)
            parsed = pitr.parse_backup_history(name, text, item.modified.timestamp())
            if parsed is not None:
                found.append(parsed)
    return found


def read_backups(ctx: HostContext, base: BaseS3) -> list[pitr.BaseBackup]:
    """The complete base backups under basebackup_s3_prefix: a folder with its marker, whose every
    part is there at the size the marker says."""
    s3 = store(ctx)
    folders: dict[str, dict[str, S3Object]] = {}
    for item in s3.list(base.bucket, base.prefix):
        folder, sep, name = item.key[len(base.prefix) :].partition("/")
        if sep and name and "/" not in name:
            folders.setdefault(folder, {})[name] = item
    found = []
    for folder, objects in sorted(folders.items()):
        marker = objects.get(pitr_s3host.MARKER)
        if marker is None or marker.size > HISTORY_MAX:
            continue
        backup = as_backup(folder, read_text(s3, base.bucket, marker.key), objects)
        if backup is not None:
            found.append(backup)
    return found


def as_backup(folder: str, marker: str, objects: dict[str, S3Object]) -> pitr.BaseBackup | None:
    """Pure: the backup a marker describes, when every part it lists is there whole."""
    data = pitr_s3host.parse_marker(marker)
    if data is None:
        return None
    try:
        parts = tuple(pitr.Part(str(p["name"]), int(p["size"]), str(p["md5"])) for p in data["parts"])  # type: ignore[attr-defined]
        start = parse_lsn(str(data["start_lsn"]))
        timeline = int(str(data.get("timeline") or 1))
    except (KeyError, TypeError, ValueError):
        return None
    if any(p.name not in objects or objects[p.name].size != p.size for p in parts):
        return None
    tar = str(data["tar"])
    return pitr.BaseBackup(folder, tar, sum(p.size for p in parts), start, None, parts, timeline)


def read_text(s3: S3Store, bucket: str, key: str) -> str:
    with s3.failing(f"reading s3://{bucket}/{key}"):
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read(HISTORY_MAX)).decode("utf-8", "replace")
        finally:
            body.close()
