"""base-backup: take a base backup where restore-pitr looks for them.

facts   the server answers (its version) and `basebackup_local_dir` exists on the host;
decide  one backup into `basebackup_local_dir/STAMP` (UTC, to the second);
apply   `pg_basebackup -Ft -X none -c fast -l STAMP` as the database's OS user into
        `DIR/.STAMP.partial`, renamed to `DIR/STAMP` once it finished (restore-pitr never sees half a
        backup; a failed one is removed); `--gzip` compresses the tar;
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

VERSION_SQL = "select json_build_object('version', current_setting('server_version'));\n"


@dataclass(frozen=True)
class Found:
    pg: PgTarget
    base_dir: str
    archive_dir: str
    stamp: str


class BaseBackup(Remediation):
    """Take a base backup for restore-pitr: pg_basebackup -Ft -X none into basebackup_local_dir/STAMP.

    Written to a hidden .STAMP.partial folder and renamed when complete (a failed one is removed).
    Verified: the tar and backup_manifest are there and, with wal_archive_dir, the backup's history
    file reached the archive. --gzip compresses the tar (base.tar.gz). Cron-safe: each run adds one
    backup; removing old ones is not this task's (wal-cleanup keeps the WAL of the newest ones).
    """

    task: ClassVar[str] = "base-backup"
    cron_safe: ClassVar[bool] = True
    params = args(Arg("gzip", kind="flag", help="compress the tar (pg_basebackup -z): base.tar.gz"))
    required_vars: ClassVar[tuple[str, ...]] = ("basebackup_local_dir",)

    def __init__(self, gzip: bool = False) -> None:
        self.gzip = gzip
        self._starts: dict[str, int] = {}  # host → the start LSN of the backup it took

    def validate(self, host: Host) -> None:
        super().validate(host)
        for name in ("basebackup_local_dir", "wal_archive_dir"):
            path = str(host.get(name) or "/")
            if not path.startswith("/"):
                raise UsageError(f"{host.source}: host {host.name}: {name} must be an absolute path")

    def gather(self, ctx: HostContext) -> Found:
        pg = PgTarget.from_host(ctx.host)
        base_dir = str(ctx.var("basebackup_local_dir")).rstrip("/")
        with ctx.step("facts") as step:
            command = script(f"test -d {shlex.quote(base_dir)} || {{ echo '@@nodir'; exit 0; }}", pg.psql())
            result = must_ok(
                ctx.remote.run(command, stdin=VERSION_SQL.encode(), timeout=60), "asking PostgreSQL"
            )
            if "@@nodir" in result.stdout:
                raise HostError(f"basebackup_local_dir {base_dir} does not exist on the host")
            version = json.loads(result.stdout.strip().splitlines()[-1])["version"]
            step.done(Status.OK, f"PostgreSQL {version} answers; backups go to {base_dir}")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return Found(pg, base_dir, str(ctx.var("wal_archive_dir") or "").rstrip("/"), stamp)

    def decide(self, ctx: HostContext, facts: Found) -> Plan:
        target = f"{facts.base_dir}/{facts.stamp}"
        return Plan.of(
            Change(
                "backup",
                f"pg_basebackup into {target}",
                lambda ctx: self._backup(ctx, facts),
                commands=(self._command(facts),),
            )
        )

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
        self._starts[ctx.host.name] = start
        return f"base backup {facts.base_dir}/{facts.stamp}: {tar} {human_bytes(int(sizes[tar]))}"

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
                if self._starts.get(ctx.host.name) in starts:
                    break
                if time.monotonic() > deadline:
                    raise HostError(
                        f"the backup's history file did not reach {facts.archive_dir} within 60 s: "
                        "is the archiver failing? restore-pitr cannot use the backup without it"
                    )
                time.sleep(1)
            step.done(Status.OK, f"its history file is in {facts.archive_dir}: restore-pitr can use it")
