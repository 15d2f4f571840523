"""restore-pitr's view of the S3 copy of the archive, read from the controller: its WAL segments
and timeline history files (what the restore_command can fetch besides the local archive).

The credentials file the host signs its requests with is checked first (it exists, belongs to the
database's OS user, mode 0600 or 0400): a restore_command that cannot read it would fail mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remediations.actions.s3client import S3Store
from remediations.core.context import HostContext
from remediations.facts import pitr
from remediations.postgres.pitr_settings import Settings, refuse

HISTORY_MAX = 64 * 1024  # a timeline history file is a few lines per timeline


@dataclass
class S3Archive:
    segments: dict[str, pitr.Segment] = field(default_factory=dict)
    timelines: dict[int, str] = field(default_factory=dict)  # timeline → its history file's text
    where: str = ""


def check_credentials(conf: Settings, stat: str, user: str, host: str = "") -> None:
    """`stat` is "MODE OWNER" of pitr_s3_credentials_file on the host ("" when it is missing)."""
    assert conf.s3 is not None
    mode, _, owner = stat.partition(" ")
    name = f"pitr_s3_credentials_file {conf.s3.credentials_file}" + (f" on {host}" if host else "")
    if not mode:
        raise refuse(f"{name} does not exist on the host")
    if owner != user:
        raise refuse(f"{name} belongs to {owner}, not {user}")
    if mode not in ("600", "400"):
        raise refuse(f"{name} has mode {mode}: make it 0600")


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
    return found


def read_text(s3: S3Store, bucket: str, key: str) -> str:
    with s3.failing(f"reading s3://{bucket}/{key}"):
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read(HISTORY_MAX)).decode("utf-8", "replace")
        finally:
            body.close()
