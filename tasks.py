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
    rotate_secret,
    rotate_db_password,
    rotate_aws_key,
    rotation_status,
)
