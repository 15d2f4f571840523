"""Invoke front end: `inv --list`, `inv --help restart-api`, `inv restart-api --host prod`.

A thin layer: every task builds a remediation from `remediations` and hands it to
`remediations.cli.execute` with the common flags (--host, --inventory, --check, --diff, --json,
--parallel, --serial, --max-fail, --lock-wait). Exit code: 0 when no host failed, 1 when one did,
2 for bad input (nothing run), 3 when none failed but a step warned (e.g. wal-cleanup: a failing
WAL archiver).
"""

from __future__ import annotations

from invoke.context import Context

from remediations.cli import Flags, collection, execute, remediation_task

# --- Docker space, disk-full runbook, daily health check -----------------------------------------

PRUNE_HELP = {
    "older-than": "only objects created before this long ago: 168h (default), 30m, 7d, 0s",
    "all": "remove every unused image, not only dangling ones (and all unused build cache)",
    "volumes": "also remove volumes no container uses (their data is gone for good; listed in the result)",
}


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


# ---------------------------------------------------------------- secret rotation

ROTATION_HELP = {
    "length": "characters in a generated value (16-4096, default 32)",
    "alphabet": "alnum (default), urlsafe, hex or symbols (no quotes, $, # or spaces)",
    "max-age": "leave a secret rotated less than this long ago alone (default 1h; 0 rotates now)",
}


@remediation_task(
    help={
        "name": "the env file variable to rotate, e.g. STRIPE_API_KEY",
        "service": "recreate only this service (repeatable; default: every service that reads the file)",
        "value-from-stdin": "take the new value from stdin (one line) instead of generating one",
        "create": "add the variable when the env file does not set it yet",
        **ROTATION_HELP,
    },
    iterable=["service"],
)
def rotate_secret(
    c: Context, flags: Flags, name: str | None = None, service: list[str] | None = None,
    length: str | None = None, alphabet: str | None = None, value_from_stdin: bool = False,
    create: bool = False, max_age: str | None = None,
) -> int:  # fmt: skip
    """Rotate a secret in a compose env file: backup (0600), atomic write, recreate, wait until healthy.

    Example: inv rotate-secret --host prod --name STRIPE_API_KEY
    The value is generated with the secrets module (or read from stdin) and goes to the host on
    stdin: never on a command line, in output, the audit log or a notification. Unhealthy after the
    change: the backup is restored and the services recreated. An interrupted rotation is finished
    (or rolled back) by the next run. `inv rotation-status` shows what was rotated when.
    """
    from remediations.core.errors import UsageError
    from remediations.secrets import rotation

    services = list(service or [])

    def make() -> rotation.RotateSecret:
        key = rotation.check_key(name)
        if value_from_stdin and (length or alphabet):
            raise UsageError("--value-from-stdin takes the value as given: leave out --length/--alphabet")
        return rotation.RotateSecret(
            key, services, rotation.parse_length(length), rotation.parse_alphabet(alphabet),
            rotation.value_from_stdin() if value_from_stdin else None, create,
            rotation.parse_max_age(max_age),
        )  # fmt: skip

    code, _ = execute(make, flags, task="rotate-secret",
                      arguments={"name": name, "service": services, "length": length, "alphabet": alphabet,
                                 "value_from_stdin": value_from_stdin, "create": create,
                                 "max_age": max_age})  # fmt: skip
    return code


@remediation_task()
def rotation_status(c: Context, flags: Flags) -> int:
    """Show the rotations recorded on each host: what, when, how far it got, which backup rolls it back.

    Never a value. An unfinished or rolled-back rotation fails the host (cron and monitoring notice).
    """
    from remediations.secrets.rotation import RotationStatus

    code, _ = execute(RotationStatus, flags, task="rotation-status")
    return code


@remediation_task(
    help={
        "role": "the PostgreSQL login role whose password to rotate",
        "env-host": "host(s) whose compose env file holds the password (host, group or comma list)",
        "env-key": "the env file variable that holds it (default DATABASE_PASSWORD)",
        "service": "recreate only this service (repeatable; default: every service that reads the file)",
        **ROTATION_HELP,
    },
    iterable=["service"],
)
def rotate_db_password(
    c: Context, flags: Flags, role: str | None = None, env_host: str | None = None,
    env_key: str = "DATABASE_PASSWORD", service: list[str] | None = None, length: str | None = None,
    alphabet: str | None = None, max_age: str | None = None,
) -> int:  # fmt: skip
    """Rotate a PostgreSQL role's password and the app's env file; roll both back if the app fails.

    Example: inv rotate-db-password --host db1 --role shop_app --env-host api1 --service api
    --host is the database host, reached with psycopg through the SSH connection. The password is set
    as a SCRAM verifier computed here (the server never sees it), tested with a login, written to
    the env file(s) (backup 0600), the services recreated; afterwards the old password is refused.
    """
    from remediations.secrets import rotation
    from remediations.secrets.rotate_db import RotateDbPassword, check_role

    services = list(service or [])
    code, _ = execute(
        lambda: RotateDbPassword(check_role(role), env_host, rotation.check_key(env_key, "--env-key"),
                                 services, rotation.parse_length(length), rotation.parse_alphabet(alphabet),
                                 rotation.parse_max_age(max_age)),
        flags, task="rotate-db-password",
        arguments={"role": role, "env_host": env_host, "env_key": env_key, "service": services,
                   "length": length, "alphabet": alphabet, "max_age": max_age},
    )  # fmt: skip
    return code


@remediation_task(
    help={
        "user": "the IAM user whose access key to rotate",
        "env-host": "host(s) whose compose env file holds the key (host, group or comma list)",
        "env-keys": "the env file variables of the key id and the secret (default "
        "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY)",
        "service": "recreate only this service (repeatable; default: every service that reads the file)",
        "delete-old": "delete the old key at once instead of deactivating it",
        "grace": "a later run deletes the deactivated old key once this long has passed (default 7d)",
        "max-age": ROTATION_HELP["max-age"],
    },
    iterable=["service"],
)
def rotate_aws_key(
    c: Context, flags: Flags, user: str | None = None, env_host: str | None = None,
    env_keys: str | None = None, service: list[str] | None = None, delete_old: bool = False,
    grace: str | None = None, max_age: str | None = None,
) -> int:  # fmt: skip
    """Rotate an IAM user's access key: create the second key, write it, test it, deactivate the old one.

    Example: inv rotate-aws-key --user shop-app --env-host api1 --service api
    Runs on the controller (boto3, standard credentials). The new key is tested with STS (and S3 with
    the aws_verify_bucket var) before the services are recreated with it; the old key is deactivated,
    and deleted with --delete-old or by a later run after --grace. A user with two keys already is
    refused, naming the key to remove.
    """
    from remediations.core.units import parse_duration
    from remediations.secrets import rotation
    from remediations.secrets.rotate_aws import (
        DEFAULT_GRACE,
        RotateAwsKey,
        check_user,
        parse_env_keys,
        targets,
    )

    services = list(service or [])
    code, _ = execute(
        lambda: RotateAwsKey(check_user(user), env_host, parse_env_keys(env_keys), services, delete_old,
                             parse_duration(grace or DEFAULT_GRACE, "--grace"),
                             rotation.parse_max_age(max_age)),
        flags, task="rotate-aws-key",
        arguments={"user": user, "env_host": env_host, "env_keys": env_keys, "service": services,
                   "delete_old": delete_old, "grace": grace, "max_age": max_age},
        targets=targets(user or ""),
    )  # fmt: skip
    return code


# Tasks not yet declared on their remediation class; the others come from the registry.
ns = collection(
    disk_cleanup,
    health,
    install_cron,
    rotate_secret,
    rotate_db_password,
    rotate_aws_key,
    rotation_status,
)
