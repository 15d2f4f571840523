"""base-backup: take a base backup where restore-pitr looks for them, and put it in S3.

facts   the server answers (its version) and `basebackup_local_dir` exists on the host; with
        `pitr_s3_credentials_file` and `backup_s3_bucket`, that file (owner, mode);
decide  one backup into `basebackup_local_dir/STAMP` (UTC, to the second), then its upload to
        `basebackup_s3_prefix/STAMP/` (when S3 is configured);
apply   `pg_basebackup -Ft -X none -c fast -l STAMP` as the database's OS user into
        `DIR/.STAMP.partial`, renamed to `DIR/STAMP` once it finished (restore-pitr never sees half a
        backup; a failed one is removed); `--gzip` compresses the tar. The upload: the host itself
        PUTs the tar in parts (actions.pitr_s3host: one part staged at a time, each part's ETag
        checked against its MD5), the manifest, then the marker `backup.json` last: a folder
        without it is never restored. Nothing is ever deleted, here or in S3;
verify  the folder holds the tar and `backup_manifest`, and (with `wal_archive_dir`) the backup's
        history file reached the WAL archive: without it restore-pitr cannot tell when it ended.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from dataclasses import dataclass
from typing import ClassVar

from remediations.actions import pitr_s3host
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts import pitr
from remediations.facts.postgres import PgTarget, human_bytes, must_ok, script
from remediations.facts.wal import parse_lsn
from remediations.postgres import pitr_s3
from remediations.postgres.pitr_settings import BaseS3, base_s3

VERSION_SQL = "select json_build_object('version', current_setting('server_version'));\n"


@dataclass(frozen=True)
class Found:
    pg: PgTarget
    base_dir: str
    archive_dir: str
    stamp: str
    s3: BaseS3 | None = None


@dataclass(frozen=True)
class Made:
    """The backup the first change took, for the upload."""

    tar: str
    start: int
    timeline: int


class BaseBackup(Remediation):
    """Take a base backup for restore-pitr: pg_basebackup -Ft -X none into basebackup_local_dir/STAMP.

    Written to a hidden .STAMP.partial folder and renamed when complete (a failed one is removed).
    Verified: the tar and backup_manifest are there and, with wal_archive_dir, the backup's history
    file reached the archive. --gzip compresses the tar (base.tar.gz). With pitr_s3_credentials_file
    and backup_s3_bucket the host also uploads it to basebackup_s3_prefix/STAMP/ (in parts of
    basebackup_s3_part_size, then backup.json last), where restore-pitr (and --onto a restore host)
    finds it. Cron-safe: each run adds one backup; it never deletes one, locally or in S3.
    """

    task: ClassVar[str] = "base-backup"
    cron_safe: ClassVar[bool] = True
    params = args(Arg("gzip", kind="flag", help="compress the tar (pg_basebackup -z): base.tar.gz"))
    required_vars: ClassVar[tuple[str, ...]] = ("basebackup_local_dir",)

    def __init__(self, gzip: bool = False) -> None:
        self.gzip = gzip
        self._made: dict[str, Made] = {}  # host → the backup it took

    def validate(self, host: Host) -> None:
        super().validate(host)
        base_s3(host)
        for name in ("basebackup_local_dir", "wal_archive_dir"):
            path = str(host.get(name) or "/")
            if not path.startswith("/"):
                raise UsageError(f"{host.source}: host {host.name}: {name} must be an absolute path")

    def gather(self, ctx: HostContext) -> Found:
        pg = PgTarget.from_host(ctx.host)
        base_dir = str(ctx.var("basebackup_local_dir")).rstrip("/")
        s3 = base_s3(ctx.host)
        with ctx.step("facts") as step:
            command = script(
                f"test -d {shlex.quote(base_dir)} || {{ echo '@@nodir'; exit 0; }}",
                *([pitr_s3.stat_command(s3.source.credentials_file)] if s3 else []),
                pg.psql(),
            )
            result = must_ok(
                ctx.remote.run(command, stdin=VERSION_SQL.encode(), timeout=60), "asking PostgreSQL"
            )
            if "@@nodir" in result.stdout:
                raise HostError(f"basebackup_local_dir {base_dir} does not exist on the host")
            if s3:
                stat = result.stdout.partition("@@credentials")[2].splitlines()[0].strip()
                pitr_s3.check_credentials(s3.source.credentials_file, stat, pg.os_user)
            version = json.loads(result.stdout.strip().splitlines()[-1])["version"]
            where = f"; then to s3://{s3.bucket}/{s3.prefix}" if s3 else ""
            step.done(Status.OK, f"PostgreSQL {version} answers; backups go to {base_dir}{where}")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return Found(pg, base_dir, str(ctx.var("wal_archive_dir") or "").rstrip("/"), stamp, s3)

    def decide(self, ctx: HostContext, facts: Found) -> Plan:
        target = f"{facts.base_dir}/{facts.stamp}"
        backup = Change(
            "backup",
            f"pg_basebackup into {target}",
            lambda ctx: self._backup(ctx, facts),
            commands=(self._command(facts),),
        )
        if facts.s3 is None:
            return Plan.of(backup)
        s3 = facts.s3
        upload = Change(
            "upload",
            f"upload it to s3://{s3.bucket}/{s3.prefix}{facts.stamp}/ (parts of "
            f"{human_bytes(s3.part_size)}, then {pitr_s3host.MARKER} last)",
            lambda ctx: self._upload(ctx, facts),
        )
        return Plan.of(backup, upload)

    def _command(self, facts: Found) -> str:
        partial, final = f"{facts.base_dir}/.{facts.stamp}.partial", f"{facts.base_dir}/{facts.stamp}"
        backup = facts.pg.shell(
            "pg_basebackup",
            "-D",
            partial,
            "-Ft",
            "-X",
            "none",
            "-c",
            "fast",
            "-l",
            facts.stamp,
            *(["-z"] if self.gzip else []),
        )
        user = shlex.quote(facts.pg.os_user)
        return script(
            f"{backup} || {{ status=$?; as_user {user} rm -rf -- {shlex.quote(partial)}; exit $status; }}",
            f"as_user {user} mv -- {shlex.quote(partial)} {shlex.quote(final)}",
            f'find {shlex.quote(final)} -maxdepth 1 -type f -printf "%f\\t%s\\n"',
            f'echo "@@manifest"; tail -c 2048 -- {shlex.quote(final + "/backup_manifest")}',
        )

    def _backup(self, ctx: HostContext, facts: Found) -> str:
        result = must_ok(ctx.remote.run(self._command(facts), timeout=6 * 3600), "pg_basebackup")
        files, _, manifest = result.stdout.partition("@@manifest")
        sizes = dict(line.split("\t") for line in files.strip().splitlines() if "\t" in line)
        tar = "base.tar.gz" if self.gzip else "base.tar"
        start = pitr.manifest_start(manifest)
        if tar not in sizes or "backup_manifest" not in sizes or start is None:
            raise HostError(f"{facts.base_dir}/{facts.stamp} lacks {tar} or backup_manifest: {sorted(sizes)}")
        timelines = pitr.MANIFEST_TL_RE.findall(manifest)
        self._made[ctx.host.name] = Made(tar, start, int(timelines[0]) if timelines else 1)
        return f"base backup {facts.base_dir}/{facts.stamp}: {tar} {human_bytes(int(sizes[tar]))}"

    def _upload(self, ctx: HostContext, facts: Found) -> str:
        """The host PUTs the parts and the manifest; then the marker, only when every part arrived
        as sent. A failure leaves the local backup complete and the S3 folder without its marker."""
        assert facts.s3 is not None
        s3, made, user = facts.s3, self._made[ctx.host.name], facts.pg.os_user
        folder = f"{facts.base_dir}/{facts.stamp}"
        kept = (
            f"the local backup {folder} is complete; the S3 copy has no {pitr_s3host.MARKER}, "
            "so it is never used"
        )
        command = script(
            pitr_s3host.upload_script(user, folder, made.tar, s3.source, facts.stamp, s3.part_size)
        )
        result = ctx.remote.run(command, timeout=12 * 3600)
        if not result.ok:
            raise HostError(
                f"uploading {folder} failed (exit {result.exit_code}): {result.tail(3)}; {kept}", result
            )
        try:
            parts = pitr_s3host.parse_parts(result.stdout)
        except ValueError as exc:
            raise HostError(f"uploading {folder}: {exc}; {kept}") from None
        tars = [p for p in parts if p.name != pitr_s3host.MANIFEST]
        if not tars or len(tars) == len(parts):
            raise HostError(f"uploading {folder}: the host reported no tar part or no manifest; {kept}")
        marker = pitr_s3host.marker_text(
            facts.stamp, made.tar, parts, pitr.format_lsn(made.start), made.timeline, ctx.host.name
        )
        marked = ctx.remote.run(
            script(pitr_s3host.marker_script(user, facts.base_dir, s3.source, facts.stamp)),
            stdin=marker.encode(),
            timeout=600,
        )
        if "@@marked" not in marked.stdout:
            raise HostError(f"writing {pitr_s3host.MARKER} failed: {marked.tail(3)}; {kept}", marked)
        total = sum(p.size for p in tars)
        return (
            f"uploaded to s3://{s3.bucket}/{s3.prefix}{facts.stamp}/: {made.tar} in {len(tars)} part(s), "
            f"{human_bytes(total)}, each checked against its MD5; {pitr_s3host.MARKER} written last"
        )

    def verify(self, ctx: HostContext, facts: Found, plan: Plan) -> None:
        """Its history file (START WAL LOCATION = the manifest's start) is in the WAL archive."""
        if not facts.archive_dir:
            return
        with ctx.step("verify") as step:
            command = (
                f'for f in {shlex.quote(facts.archive_dir)}/*.backup; do [ -f "$f" ] && '
                'head -n 1 -- "$f"; done'
            )
            deadline = time.monotonic() + 60
            while True:
                result = ctx.remote.run(command, timeout=60)
                starts = {
                    parse_lsn(line.split()[3])
                    for line in result.stdout.splitlines()
                    if line.startswith("START WAL LOCATION: ")
                }
                made = self._made.get(ctx.host.name)
                if made is not None and made.start in starts:
                    break
                if time.monotonic() > deadline:
                    raise HostError(
                        f"the backup's history file did not reach {facts.archive_dir} within 60 s: "
                        "is the archiver failing? restore-pitr cannot use the backup without it"
                    )
                time.sleep(1)
            step.done(Status.OK, f"its history file is in {facts.archive_dir}: restore-pitr can use it")
