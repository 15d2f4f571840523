"""backup-check: are the newest backups fresh, big enough and readable? Read-only.

facts   S3 on the controller: the objects under `dump_s3_prefix` (logical dumps, pg_dump -Fc) and
        `basebackup_s3_prefix` (physical base backups; the objects of one backup share a folder);
        with `backup_local_dir`, the newest dump file there, on the target host;
decide  pure: each newest backup against the RPO (`backup_rpo_hours`) and a minimum size
        (`dump_min_bytes`, `basebackup_min_bytes`); a dump must also read back with
        `pg_restore --list` and a full read (`pg_restore -f /dev/null`, which catches a truncated
        file whose table of contents is intact);
apply   nothing: a red check fails the host (exit code 1).

Without --host the target is the controller (a synthetic local host with the `all` vars).
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions.s3client import S3Object, S3Store
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.postgres import PgTarget, human_age, human_bytes, positive_number, script

DEFAULT_RPO_HOURS = 26.0
DEFAULT_DUMP_MIN_BYTES = 1024
DEFAULT_BASEBACKUP_MIN_BYTES = 1024 * 1024
DEFAULT_DUMP_GLOB = "*.dump"
READ_TIMEOUT = 1800


@dataclass(frozen=True)
class Backup:
    """One backup: a dump file, or the objects of one base backup."""

    name: str
    size: int
    modified: dt.datetime


def newest_dump(objects: Sequence[S3Object]) -> Backup | None:
    files = [o for o in objects if not o.key.endswith("/")]
    if not files:
        return None
    best = max(files, key=lambda o: (o.modified, o.key))
    return Backup(best.key, best.size, best.modified)


def newest_base_backup(objects: Sequence[S3Object], prefix: str) -> Backup | None:
    """Objects are grouped by their first folder under the prefix (a base backup's files); an object
    directly under the prefix is a backup of its own (e.g. one tar)."""
    groups: dict[str, list[S3Object]] = {}
    for o in objects:
        rest = o.key[len(prefix) :]
        if not rest or rest.endswith("/"):
            continue
        head, sep, _ = rest.partition("/")
        groups.setdefault(prefix + head + (sep and "/"), []).append(o)
    if not groups:
        return None
    name, members = max(groups.items(), key=lambda g: (max(o.modified for o in g[1]), g[0]))
    return Backup(name, sum(o.size for o in members), max(o.modified for o in members))


def verdict(
    what: str, backup: Backup | None, now: dt.datetime, rpo_hours: float, min_bytes: int
) -> tuple[bool, str]:
    """(fresh and big enough, why) for the newest backup of a kind."""
    if backup is None:
        return False, f"no {what} found"
    age = (now - backup.modified).total_seconds()
    words = f"{what} {backup.name}: {human_bytes(backup.size)}, {human_age(age)} old"
    problems = []
    if age > rpo_hours * 3600:
        problems.append(f"older than the RPO of {rpo_hours:g}h")
    if backup.size < min_bytes:
        problems.append(f"smaller than {human_bytes(min_bytes)}")
    if problems:
        return False, f"{words}: " + " and ".join(problems)
    return True, words


def read_dump_command(pg: PgTarget, path: str) -> str:
    """Shell text: the dump's table of contents, then a full read of its data, on the host."""
    listing = shlex.join([pg.tool("pg_restore"), "--list", path])
    full = shlex.join([pg.tool("pg_restore"), "--file", "/dev/null", path])
    return f"{listing} >/dev/null && {full}"


class BackupCheck(Remediation):
    """Check the newest dump and base backup in S3 (and backup_local_dir): age, size, readability.

    Read-only. Age against backup_rpo_hours (default 26), size against dump_min_bytes /
    basebackup_min_bytes; the dump must read back with pg_restore --list and a full read. Without
    --host it runs on the controller with the inventory's all vars. Exit code 1 when a check is red.
    """

    task: ClassVar[str] = "backup-check"
    cron_safe: ClassVar[bool] = True
    runs_on_controller: ClassVar[bool] = True
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    @classmethod
    def controller_name(cls, values: dict[str, Any]) -> str:
        """The controller target is named as the inventory's local host is: `localhost`."""
        return "localhost"

    def validate(self, host: Host) -> None:
        super().validate(host)
        check_settings(host)

    def run(self, ctx: HostContext) -> None:
        bucket, dump_prefix, base_prefix, local_dir = check_settings(ctx.host)
        rpo = positive_number(ctx.host, "backup_rpo_hours", DEFAULT_RPO_HOURS)
        dump_min = int(positive_number(ctx.host, "dump_min_bytes", DEFAULT_DUMP_MIN_BYTES))
        base_min = int(positive_number(ctx.host, "basebackup_min_bytes", DEFAULT_BASEBACKUP_MIN_BYTES))
        now = dt.datetime.now(dt.UTC)
        pg = PgTarget.from_host(ctx.host)
        if bucket:
            store = S3Store(ctx.host.vars)
            for secret in store.secrets:
                ctx.redactor.add_value(secret)
            with ctx.step("s3-dump") as step:
                dump = newest_dump(store.list(bucket, dump_prefix))
                ok, why = verdict("dump", dump, now, rpo, dump_min)
                if ok and dump is not None:
                    ok, read = self._read_s3_dump(store, bucket, dump.name, pg)
                    why = f"{why}; {read}"
                step.done(Status.OK if ok else Status.FAILED, f"{store.where(bucket, dump_prefix)}: {why}")
            if base_prefix:
                with ctx.step("s3-basebackup") as step:
                    base = newest_base_backup(store.list(bucket, base_prefix), base_prefix)
                    ok, why = verdict("base backup", base, now, rpo, base_min)
                    step.done(
                        Status.OK if ok else Status.FAILED, f"{store.where(bucket, base_prefix)}: {why}"
                    )
        if local_dir:
            self._check_local(ctx, pg, local_dir, now, rpo, dump_min)
        checked = [s.step for s in ctx.result.steps]
        if all(s.status == Status.OK for s in ctx.result.steps):
            ctx.record("verdict", Status.OK, f"all green: {', '.join(checked)}")

    @staticmethod
    def _read_s3_dump(store: S3Store, bucket: str, key: str, pg: PgTarget) -> tuple[bool, str]:
        """Download to a temporary file on the controller and read it back with pg_restore there."""
        with tempfile.TemporaryDirectory(prefix="backup-check-") as folder:
            path = os.path.join(folder, "dump")
            store.download(bucket, key, path)
            argv = ["sh", "-c", read_dump_command(pg, path)]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=READ_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                return False, f"pg_restore did not finish reading it within {READ_TIMEOUT}s"
            except FileNotFoundError:
                return False, "pg_restore is not installed on the controller"
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            return False, f"NOT readable by pg_restore: {tail}"
        return True, "readable (pg_restore --list and a full read)"

    @staticmethod
    def _check_local(
        ctx: HostContext, pg: PgTarget, local_dir: str, now: dt.datetime, rpo: float, dump_min: int
    ) -> None:
        pattern = str(ctx.var("backup_local_dump_glob") or DEFAULT_DUMP_GLOB)
        q = shlex.quote
        tool = q(pg.tool("pg_restore"))
        command = script(
            f"cd {q(local_dir)} 2>/dev/null || {{ echo '@@missing'; exit 0; }}",
            f"newest=$(find . -maxdepth 1 -type f -name {q(pattern)} -printf '%T@ %s %f\\n' "
            "| sort -n | tail -n 1)",
            'echo "@@newest $newest"',
            '[ -n "$newest" ] || exit 0',
            "file=${newest#* }; file=${file#* }",
            f'out=$( {{ {tool} --list "./$file" >/dev/null && {tool} --file /dev/null "./$file"; }} 2>&1 )',
            "rc=$?",
            'echo "@@read $rc"; printf "%s\\n" "$out" | tail -n 2',
        )
        with ctx.step("local-dump") as step:
            result = ctx.remote.run(command, timeout=READ_TIMEOUT + 30)
            if "@@missing" in result.stdout:
                raise HostError(f"backup_local_dir {local_dir} does not exist on the host")
            if "@@newest" not in result.stdout:
                raise HostError(
                    f"listing {local_dir} failed (exit {result.exit_code}): {result.tail()}", result
                )
            head, _, rest = result.stdout.partition("@@read ")
            fields = head.split("@@newest", 1)[1].split(maxsplit=2)
            if len(fields) < 3:
                step.done(Status.FAILED, f"{local_dir}: no dump matching {pattern}")
                return
            stamp, size, name = float(fields[0]), int(fields[1]), fields[2].strip()
            backup = Backup(name, size, dt.datetime.fromtimestamp(stamp, dt.UTC))
            ok, why = verdict("dump", backup, now, rpo, dump_min)
            code, _, output = rest.partition("\n")
            if code.strip() == "0":
                why += "; readable (pg_restore --list and a full read)"
            else:
                ok = False
                why += f"; NOT readable by pg_restore: {' '.join(output.strip().splitlines())}"
            step.done(Status.OK if ok else Status.FAILED, f"{local_dir}: {why}")


def check_settings(host: Host) -> tuple[str, str, str, str]:
    """(bucket, dump prefix, base backup prefix, local dir); at least one place to look."""
    bucket = str(host.get("backup_s3_bucket") or "")
    dump_prefix = str(host.get("dump_s3_prefix", "dumps/") or "")
    base_prefix = str(host.get("basebackup_s3_prefix") or "")
    local_dir = str(host.get("backup_local_dir") or "")
    if not bucket and not local_dir:
        raise UsageError(
            f"{host.source}: host {host.name}: backup-check needs backup_s3_bucket and/or "
            "backup_local_dir (set them in the inventory's all vars)"
        )
    return bucket, dump_prefix, base_prefix, local_dir
