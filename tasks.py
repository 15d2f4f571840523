"""Invoke front end: `inv --list`, `inv --help restart-api`, `inv restart-api --host prod`.

A thin layer: every task builds a remediation from `remediations` and hands it to
`remediations.cli.execute` with the common flags (--host, --inventory, --check, --diff, --json,
--parallel, --serial, --max-fail, --lock-wait). Exit code: 0 when no host failed, 1 when one did,
2 for bad input (nothing run), 3 when none failed but a step warned (e.g. wal-cleanup: a failing
WAL archiver).
"""

from __future__ import annotations

from typing import Any

from invoke.context import Context

from remediations.cli import Flags, collection, execute, remediation_task

# Firewall (issue 6): block-ip, unblock-ip, unblock-expired, list-blocks.

FIREWALL_TARGET_HELP = {
    "ip": "source to block: an IPv4/IPv6 address or CIDR range (host bits set in a range are refused)",
    "port": "only traffic to this port (1-65535); default: every port",
    "proto": "tcp or udp; default: both (with --port) or every protocol",
}


@remediation_task(
    help={
        **FIREWALL_TARGET_HELP,
        "ttl": "lift the block after this long (90s, 30m, 24h, 7d, 1h30m) with unblock-expired; "
        "default: no expiry",
        "comment": "why, recorded on the host and shown by list-blocks (no quotes or backslashes)",
        "enable": "if ufw is inactive, allow the SSH port the controller is connected on, then enable "
        "ufw (without it an inactive ufw fails the host)",
        "kill-established": "once the block holds, drop the connections the source already has open "
        "(conntrack -D; ufw accepts their traffic before its rules, so they survive a block). Default: "
        "leave them, and say how many there are",
    }
)
def block_ip(
    c: Context,
    flags: Flags,
    ip: str | None = None,
    port: str | None = None,
    proto: str | None = None,
    ttl: str | None = None,
    comment: str | None = None,
    enable: bool = False,
    kill_established: bool = False,
) -> int:
    """Block a source address or range: a ufw deny above the allow rules, and a DROP in DOCKER-USER.

    Docker-published ports bypass ufw, so where the host runs Docker the block is mirrored into the
    DOCKER-USER chain (IPv4, and IPv6 when Docker has that chain). Already blocked: ok. Refused with
    nothing changed: a range containing the controller's address (as the host sees it) or
    overlapping the firewall_allowlist inventory var; an inactive ufw unless --enable. The deny must
    come before every allow rule that matches the source (app profiles such as OpenSSH and
    `allow in on IFACE` rules included): one below such a rule is moved to the top, and the result
    is checked against the order of ufw's loaded chain. The block, its comment and expiry are
    recorded on the host (firewall_state_dir, default /var/lib/remediations). Connections the source
    already has open survive the block unless --kill-established. Runs under the host lock.
    """
    from remediations.firewall.ufw import BlockIp

    code, _ = execute(
        lambda: BlockIp(ip, port, proto, ttl, comment, enable, kill_established),
        flags,
        task="block-ip",
        arguments={
            "ip": ip,
            "port": port,
            "proto": proto,
            "ttl": ttl,
            "comment": comment,
            "enable": enable,
            "kill_established": kill_established,
        },
    )
    return code


@remediation_task(help=FIREWALL_TARGET_HELP)
def unblock_ip(
    c: Context, flags: Flags, ip: str | None = None, port: str | None = None, proto: str | None = None
) -> int:
    """Lift a block in every layer (ufw, DOCKER-USER) and remove its record; not blocked: ok.

    Without --port/--proto every block of that exact address or range is lifted, whatever port or
    protocol it was narrowed to.
    """
    from remediations.firewall.ufw import UnblockIp

    code, _ = execute(
        lambda: UnblockIp(ip, port, proto),
        flags,
        task="unblock-ip",
        arguments={"ip": ip, "port": port, "proto": proto},
    )
    return code


@remediation_task()
def unblock_expired(c: Context, flags: Flags) -> int:
    """Lift every block whose --ttl has passed (by the host's clock); nothing expired: ok. Cron-safe."""
    from remediations.firewall.ufw import UnblockExpired

    code, _ = execute(UnblockExpired, flags, task="unblock-expired")
    return code


@remediation_task()
def list_blocks(c: Context, flags: Flags) -> int:
    """Show each recorded block: the layers that hold it (ufw, DOCKER-USER), its expiry and comment.

    Also shows the ufw denies (and block-ip's DOCKER-USER rules) no record accounts for, hand-made
    ones marked as such. Exit 1 when a recorded block is missing a layer (no ufw deny, a deny that
    an allow rule comes before, ufw inactive, no DOCKER-USER rule): re-run block-ip to repair it.
    """
    from remediations.firewall.ufw import ListBlocks, listing

    code, run = execute(ListBlocks, flags, task="list-blocks")
    if run is not None and not flags.json:
        print(listing(run.hosts))
    return code




# S3 version restore (issue 4): restore-s3-object, restore-s3-prefix, s3-bucket-check.
# They run on the controller: without --host the target is `s3:BUCKET` (local, the inventory's shared
# vars); --check implies --diff, so the plan lists every key.

S3_HELP = {
    "bucket": "the bucket (required)",
    "tier": "retrieval tier for archived (GLACIER, DEEP_ARCHIVE) versions: Expedited, Standard, Bulk "
    "(default Standard)",
    "restore-days": "days a retrieved archived version stays readable (default 7)",
    "workers": "copies in flight at once, 1 to 64 (default 16); the HTTP connection pool is at least as "
    "large",
    "host": "optional: an inventory host with ansible_connection: local whose vars (s3_endpoint_url, "
    "s3_region, aws_profile) to use; default: the inventory's shared vars",
}


def _s3_tuning(workers: str | None, tier: str, restore_days: str | None) -> Any:
    """The S3 knobs from their flags' text (None or "": the default), checked."""
    from remediations.core.validate import check_count, check_workers
    from remediations.s3.restore import Tuning

    given: dict[str, Any] = {"tier": tier}
    if workers not in (None, ""):
        given["workers"] = check_workers(workers)
    if restore_days not in (None, ""):
        given["restore_days"] = check_count(restore_days, "--restore-days", 1, 36500)
    return Tuning(**given)


def _s3_flags(flags: Flags) -> Flags:
    import dataclasses

    return dataclasses.replace(flags, diff=flags.diff or flags.check)


@remediation_task(
    help={
        **S3_HELP,
        "key": "the object's key (required)",
        "version-id": "make this version the current one",
        "at": "make current the version that was current at this time: ISO 8601 with a timezone "
        "(2024-05-01T09:30:00Z) or relative ('2h ago', '1d ago')",
        "undelete": "if the current version is a delete marker, remove it (and any stacked on it) so the "
        "previous version shows again",
    }
)
def restore_s3_object(
    c: Context,
    flags: Flags,
    bucket: str | None = None,
    key: str | None = None,
    version_id: str | None = None,
    at: str | None = None,
    undelete: bool = False,
    tier: str = "Standard",
    restore_days: str | None = None,
    workers: str | None = None,
) -> int:
    """Restore one S3 object to an earlier version: give exactly one of --version-id, --at, --undelete.

    The chosen version is copied over the key as a new current version (history is kept; no data
    version is deleted), with its content type, metadata and tags; parts are copied along the
    source's own part boundaries for multipart objects and objects over 5 GiB. Already holding that
    content: ok, no new version. An archived version gets a retrieval started (pending); run again to
    copy it once readable. Refused when bucket versioning is not Enabled. Endpoint: AWS_ENDPOINT_URL,
    else the s3_endpoint_url inventory var; credentials: the standard AWS chain. Requests are bounded
    as for restore-s3-prefix (108 s at most each with the default s3_* timeouts).
    """
    from remediations.s3.restore import RestoreObject, controller_targets

    code, _ = execute(
        lambda: RestoreObject(
            bucket, key, version_id=version_id, at=at, undelete=undelete,
            tuning=_s3_tuning(workers, tier, restore_days),
        ),
        _s3_flags(flags),
        task="restore-s3-object",
        arguments={"bucket": bucket, "key": key, "version_id": version_id, "at": at, "undelete": undelete},
        targets=controller_targets(bucket),
    )
    return code


@remediation_task(
    help={
        **S3_HELP,
        "prefix": "restore every key under this prefix (required; '' for the whole bucket)",
        "at": "the time to restore to: ISO 8601 with a timezone or relative ('2h ago') (required)",
        "to-bucket": "write the restored keys into this bucket instead (versioning must be Enabled)",
        "to-prefix": "write the restored keys under this prefix instead of --prefix",
        "delete-new": "hide keys created after --at behind a delete marker (reversible with "
        "restore-s3-object --undelete); default: leave them and list them",
    }
)
def restore_s3_prefix(
    c: Context,
    flags: Flags,
    bucket: str | None = None,
    prefix: str | None = None,
    at: str | None = None,
    to_bucket: str | None = None,
    to_prefix: str | None = None,
    delete_new: bool = False,
    tier: str = "Standard",
    restore_days: str | None = None,
    workers: str | None = None,
) -> int:
    """Restore every key under a prefix to its state at a time.

    Overwritten keys get their version of that time back and deleted keys come back (copies: history
    is kept); keys created later are left alone and listed (--delete-new hides them). Copies run in a
    bounded pool, throttling, 5xx and timeouts are retried with backoff, and a progress line shows on
    a terminal. Every S3 request is bounded (s3_connect_timeout 5 s, s3_read_timeout 30 s,
    s3_max_attempts 3: 108 s at most); a request waiting longer than s3_progress_interval (10 s) is
    reported on stderr, and an endpoint that stops answering stops the run with the keys restored so
    far. --check lists every key and what would happen to it. A second run finds nothing to do.
    """
    from remediations.s3.restore import RestorePrefix, controller_targets

    code, _ = execute(
        lambda: RestorePrefix(
            bucket, prefix, at, to_bucket=to_bucket, to_prefix=to_prefix, delete_new=delete_new,
            tuning=_s3_tuning(workers, tier, restore_days),
        ),
        _s3_flags(flags),
        task="restore-s3-prefix",
        arguments={"bucket": bucket, "prefix": prefix, "at": at, "to_bucket": to_bucket,
                   "to_prefix": to_prefix, "delete_new": delete_new},
        targets=controller_targets(bucket),
    )
    return code


@remediation_task(
    help={
        "bucket": S3_HELP["bucket"],
        "host": S3_HELP["host"],
        "retention-days": "noncurrent versions must be kept at least this long (default: the "
        "s3_noncurrent_retention_days inventory var, else 30)",
    }
)
def s3_bucket_check(c: Context, flags: Flags, bucket: str | None = None, retention_days: str | None = None
                    ) -> int:
    """Report whether a bucket keeps what a restore needs; changes nothing.

    Checks that versioning is Enabled and that no enabled lifecycle rule expires noncurrent versions
    sooner than the retention. Each finding fails its step (exit code 1), so cron can alert on it.
    """
    from remediations.core.validate import check_count
    from remediations.s3.restore import BucketCheck, controller_targets

    code, _ = execute(
        lambda: BucketCheck(bucket, None if retention_days in (None, "")
                            else check_count(retention_days, "--retention-days", 1, 36500)),
        flags,
        task="s3-bucket-check",
        arguments={"bucket": bucket, "retention_days": retention_days},
        targets=controller_targets(bucket),
    )
    return code




# ---------------------------------------------------------------- compose services (ensure, env, rollback)


@remediation_task(
    help={"service": "only this service (repeatable; default: every service of the project)"},
    iterable=["service"],
)
def ensure_healthy(c: Context, flags: Flags, service: list[str] | None = None) -> int:
    """Start missing or exited services, restart (then recreate) unhealthy ones; leave healthy ones alone.

    Cron-safe: a healthy service is never touched.
    """
    from remediations.docker.ensure_healthy import EnsureHealthy

    services = list(service or [])
    code, _ = execute(lambda: EnsureHealthy(services), flags, task="ensure-healthy",
                      arguments={"service": services})  # fmt: skip
    return code


@remediation_task(
    help={
        "service": "the compose service whose env file is edited and which is recreated",
        "set": "NAME=VALUE to set (repeatable; visible in ps: use --values-from-stdin for secrets)",
        "unset": "NAME to remove (repeatable)",
        "values-from-stdin": "also set the NAME=VALUE lines read from stdin (values taken literally, "
        "never shown)",
    },
    iterable=["set", "unset"],
)
def set_env(
    c: Context, flags: Flags, service: str | None = None, set: list[str] | None = None,
    unset: list[str] | None = None, values_from_stdin: bool = False,
) -> int:  # fmt: skip
    """Set or unset variables in the service's env file (backup kept), recreate it, wait until healthy.

    Example: inv set-env --host prod --service api --set MAINTENANCE_MODE=1
    Secrets: printf 'API_TOKEN=%s\\n' "$TOKEN" | inv set-env --host prod --service api --values-from-stdin
    Already set: ok, nothing recreated. Unhealthy afterwards: the backup is restored. The newest
    env_backups_keep (default 10) backups of the file are kept, older ones deleted.
    """
    from remediations.actions.env_files import values_from_stdin as read_values
    from remediations.core.errors import UsageError
    from remediations.docker import set_env as env_task

    def make() -> env_task.SetEnv:
        if not service:
            raise UsageError("--service is required: the compose service whose env to change")
        hidden = read_values() if values_from_stdin else None
        return env_task.SetEnv(service, list(set or []), list(unset or []), hidden)

    names = [item.split("=", 1)[0] + "=…" for item in (set or [])]
    code, _ = execute(make, flags, task="set-env",
                      arguments={"service": service, "set": names, "unset": list(unset or []),
                                 "values_from_stdin": values_from_stdin})  # fmt: skip
    return code


@remediation_task(help={"service": "the compose service to put back on its previous image"})
def rollback(c: Context, flags: Flags, service: str | None = None) -> int:
    """Put a service back on the image it ran before the last change a remediation made."""
    from remediations.core.errors import UsageError
    from remediations.docker.rollback import Rollback

    def make() -> Rollback:
        if not service:
            raise UsageError("--service is required: the compose service to roll back")
        return Rollback(service)

    code, _ = execute(make, flags, task="rollback", arguments={"service": service})
    return code




# --- Docker space, disk-full runbook, daily health check -----------------------------------------

PRUNE_HELP = {
    "older-than": "only objects created before this long ago: 168h (default), 30m, 7d, 0s",
    "all": "remove every unused image, not only dangling ones (and all unused build cache)",
    "volumes": "also remove volumes no container uses (their data is gone for good; listed in the result)",
}


@remediation_task(
    help={
        **PRUNE_HELP,
        "if-disk-above": "do nothing unless the filesystem holding Docker's data is fuller than PCT (0-100)",
    }
)
def prune(
    c: Context, flags: Flags, older_than: str = "168h", all: bool = False, volumes: bool = False,
    if_disk_above: str | None = None,
) -> int:  # fmt: skip
    """Reclaim Docker space: stopped containers, dangling (--all: unused) images, networks, build cache.

    Only objects older than --older-than; volumes never, unless --volumes, and then only volumes no
    container uses, named in the result. --check lists what would go and the bytes it would reclaim.
    A second run finds nothing to reclaim and reports ok.
    """
    from remediations.docker.prune import Prune, options_from_flags

    code, _ = execute(
        lambda: Prune(options_from_flags(older_than, all, volumes, if_disk_above)),
        flags,
        task="prune",
        arguments={"older_than": older_than, "all": all, "volumes": volumes, "if_disk_above": if_disk_above},
    )
    return code


@remediation_task(
    help={
        "max-age-days": "delete backup files older than N days (default: var backup_max_age_days, else 7)",
        "keep-newest": "never delete the newest K backup files (default: backup_keep_newest, else 3)",
        "journal-days": "journalctl --vacuum-time in days, where journald keeps a journal (default 7)",
        **PRUNE_HELP,
    }
)
def disk_cleanup(
    c: Context, flags: Flags, max_age_days: str | None = None, keep_newest: str | None = None,
    journal_days: str | None = None, older_than: str = "168h", all: bool = False, volumes: bool = False,
) -> int:  # fmt: skip
    """The disk-full runbook: biggest users, old local backups, the journal, then a Docker prune.

    Reports the sizes of Docker's data, the backup directory, /var/log and the WAL archive; deletes
    backup files in backup_dir older than --max-age-days (never the newest --keep-newest, never outside
    that directory, never through a symlink); vacuums journald; prunes Docker as `inv prune` does.
    Disk use before and after is in the result.
    """
    from remediations.core.validate import check_count
    from remediations.docker.prune import options_from_flags
    from remediations.host.disk_cleanup import CleanupOptions, DiskCleanup, nonnegative_option

    def make() -> DiskCleanup:
        return DiskCleanup(
            CleanupOptions(
                max_age_days=nonnegative_option(max_age_days, "--max-age-days"),
                keep_newest=_optional_int(nonnegative_option(keep_newest, "--keep-newest")),
                journal_days=check_count(7 if journal_days in (None, "") else journal_days, "--journal-days",
                                         0, 36500),
                prune=options_from_flags(older_than, all, volumes, None),
            )
        )

    code, _ = execute(make, flags, task="disk-cleanup",
                      arguments={"max_age_days": max_age_days, "keep_newest": keep_newest,
                                 "journal_days": journal_days, "older_than": older_than, "all": all,
                                 "volumes": volumes})  # fmt: skip
    return code


def _optional_int(value: float | None) -> int | None:
    return None if value is None else int(value)


@remediation_task(help={"service": "check only these compose services (comma list; default: all of them)"})
def health(c: Context, flags: Flags, service: str | None = None) -> int:
    """The daily health check, read-only: services, HTTP health, disks, backup age, log errors, probes,
    and the WAL archiver of a PostgreSQL host that archives (wal_archive_dir).

    Per host in one round trip. Thresholds and probes come from inventory vars (health_*). Prints a
    table of every check (green / yellow / red); --json carries each with its value and threshold.
    Exit code 1 when any check is red.
    """
    from remediations.host.health import Health, render_table
    from remediations.reporting.output import use_colour

    services = [s.strip() for s in (service or "").split(",") if s.strip()]
    code, run = execute(lambda: Health(services), flags, task="health", arguments={"service": service})
    if run is not None and not flags.json:
        import sys

        table = render_table(run, colour=use_colour(sys.stdout))
        if table:
            print("\n" + table)
    return code




# -------------------------------------------------------- PostgreSQL: WAL archive, backups, drill, cron


@remediation_task(
    help={"drop-inactive-slot": "also drop this replication slot, only if it exists and is inactive"}
)
def wal_cleanup(c: Context, flags: Flags, drop_inactive_slot: str | None = None) -> int:
    """Delete archived WAL segments (wal_archive_dir) that no retained base backup needs.

    The cut point is the start segment of the oldest of the wal_keep_base_backups (default 2) newest
    base backups, from their .backup history files, as pg_archivecleanup computes it. A segment is
    deleted only when it is in S3 (wal_s3_bucket, wal_s3_prefix) with the same size and MD5 (the
    ETag of a single-part upload, else the object read back); the first one that is not keeps
    itself and every newer one, and fails the host. pg_wal/ is never touched. The result also says
    what holds pg_wal/: replication slots (and the WAL each retains), archiver failures, the age of
    the last archived segment; a failing archiver and an inactive slot retaining WAL are warnings
    (exit code 3). --check lists what it would delete (--diff: the files).
    """
    from remediations.postgres.wal_cleanup import WalCleanup

    code, _ = execute(lambda: WalCleanup(drop_inactive_slot), flags, task="wal-cleanup",
                      arguments={"drop_inactive_slot": drop_inactive_slot})  # fmt: skip
    return code


@remediation_task()
def backup_check(c: Context, flags: Flags) -> int:
    """Check the newest dump and base backup in S3 (and backup_local_dir): age, size, readability.

    Read-only. Age against backup_rpo_hours (default 26), size against dump_min_bytes /
    basebackup_min_bytes; the dump must read back with pg_restore --list and a full read. Without
    --host it runs on the controller with the inventory's all vars. Exit code 1 when a check is red.
    """
    from remediations.facts.postgres import controller_targets
    from remediations.postgres.backup_check import BackupCheck

    code, _ = execute(BackupCheck, flags, task="backup-check", targets=controller_targets)
    return code


@remediation_task(help={"dump": "restore this dump (key, or name under dump_s3_prefix), not the newest"})
def restore_test(c: Context, flags: Flags, dump: str | None = None) -> int:
    """The weekly restore drill: the newest dump from S3 into a scratch database, then checks.

    On the restore host (--host, default the group 'restore'): restore into restore_database
    (default restore_test_scratch; never one of restore_protected_databases), check
    restore_check_tables (table: minimum rows) and restore_freshness_column against the RPO, then
    always drop the scratch database. Writes JSON (restore_test_json) and Prometheus textfile metrics
    (restore_test_metrics) atomically. Exit code 1 on failure; --check says what it would do.
    """
    from remediations.postgres.restore_drill import run_task

    return run_task(execute, flags, dump)


@remediation_task(
    help={
        "task": "the cron-safe task to schedule: restore-test, backup-check, wal-cleanup, "
        "ensure-healthy, health, unblock-expired",
        "schedule": "cron expression, e.g. '0 4 * * 0' (or @daily, @hourly, …)",
        "args": "extra arguments for the task, e.g. '--host db1' (split like a shell; each token checked "
        "and quoted into the entry)",
        "name": "the entry's name in its marker comment (default: the task); one entry per name",
        "remove": "remove the entry instead",
        "user": "whose crontab (crontab -u; default: the connection's user)",
        "log": "file the runs' output is appended to, an absolute normalised path (default "
        "/var/log/remediations/cron-NAME.log)",
    }
)
def install_cron(c: Context, flags: Flags, task: str | None = None, schedule: str | None = None,
                 args: str = "", name: str | None = None, remove: bool = False, user: str | None = None,
                 log: str | None = None) -> int:  # fmt: skip
    """Install (or --remove) a crontab entry that runs a cron-safe task under flock; idempotent.

    Without --host the crontab is the controller's. The entry is found by its marker comment, runs
    `inv TASK --inventory THIS-INVENTORY ARGS` from the project folder under `flock -n` (runs never
    overlap) and appends its output to --log. Installing it again: ok. A value with a control
    character or '%', or a path that is not absolute and normalised, is bad input (exit code 2).
    The whole crontab is read back after writing; if it is not exactly what was written, the
    previous one is put back and the host fails.
    """
    import os

    from remediations.core.inventory import inventory_path
    from remediations.facts.postgres import controller_targets
    from remediations.host.install_cron import InstallCron

    inventory = os.path.abspath(inventory_path(flags.inventory))
    code, _ = execute(
        lambda: InstallCron(task, schedule, args=args, name=name, remove=remove, user=user, log=log,
                            inventory=inventory),
        flags,
        task="install-cron",
        arguments={"task": task, "schedule": schedule, "args": args, "name": name, "remove": remove},
        targets=controller_targets,
    )  # fmt: skip
    return code


# Tasks not yet declared on their remediation class; the others come from the registry.
ns = collection(
    block_ip,
    unblock_ip,
    unblock_expired,
    list_blocks,
    restore_s3_object,
    restore_s3_prefix,
    s3_bucket_check,
    ensure_healthy,
    set_env,
    rollback,
    prune,
    disk_cleanup,
    health,
    wal_cleanup,
    backup_check,
    restore_test,
    install_cron,
)
