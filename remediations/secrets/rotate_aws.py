"""rotate-aws-key: a new IAM access key for a user, written to the app's env file; the old one retired.

IAM allows two access keys per user, which is what makes a rotation without downtime possible. The
run's target is the controller (`iam:USER`); IAM is called with boto3 and the standard credential
chain (`aws_profile`), at `iam_endpoint_url` / `aws_endpoint_url` when set (or botocore's own
AWS_ENDPOINT_URL_IAM). The env host(s) are opened from the run and locked.

create  the second access key (its secret is written to the env file(s) at once: IAM shows it only
        once, and a key whose secret was lost is deleted by the next run);
set     the env file(s): dated backup (0600), atomic write of both variables;
test    STS GetCallerIdentity with the new key names the user (retried while IAM propagates), and
        S3 through it when `aws_verify_bucket` is set; then every service that reads the env file
        recreated, healthy and running with it;
finish  the old key deactivated, never deleted at once: `--delete-old`, or a later run after the grace
        period (`--grace`, default 7d), deletes it. A key that was made active again is left alone.

A failure before the finish deletes the new key (no app ever used it successfully), restores the env
file(s) and recreates the services: the old key never stopped working.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any, ClassVar

from remediations.actions import s3client
from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory, controller_host
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age
from remediations.secrets import rotation
from remediations.secrets.rotation import EnvSide, Record

KIND = "aws"
DEFAULT_GRACE = "7d"
PROPAGATION_TIMEOUT = 60.0


def parse_env_keys(value: str | None) -> tuple[str, str]:
    text = value or "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
    names = [n.strip() for n in text.split(",")]
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(
            f"--env-keys {text[:60]!r}: give two names, the key id's and the secret's, "
            "e.g. AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
        )
    for name in names:
        rotation.check_key(name, "--env-keys")
    return names[0], names[1]


def check_user(user: str | None) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=,.@_-")
    if not user or len(user) > 64 or not set(user) <= allowed:
        raise UsageError(f"--user {str(user or '')[:70]!r}: give an IAM user name (letters, digits, +=,.@_-)")
    return user


def targets(user: str) -> Any:
    def build(inventory: Inventory) -> list[Host]:
        return [controller_host(inventory, f"iam:{user}")]

    return build


class Iam:
    """boto3 clients for IAM and STS with the run's credentials; STS also with a given key."""

    def __init__(self, host_vars: Mapping[str, Any]) -> None:
        import boto3
        from botocore.exceptions import ProfileNotFound

        self.vars = host_vars
        try:
            self.session = boto3.session.Session(
                profile_name=str(host_vars["aws_profile"]) if host_vars.get("aws_profile") else None,
            )
        except ProfileNotFound as exc:
            raise UsageError(f"AWS profile: {exc}") from None
        if self.session.get_credentials() is None:
            raise UsageError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE (or the inventory var aws_profile)"
            )
        self.region = str(host_vars.get("aws_region") or self.session.region_name or "us-east-1")
        self.client = self.session.client("iam", endpoint_url=self._endpoint("iam"), region_name=self.region)

    def _endpoint(self, service: str) -> str | None:
        value = self.vars.get(f"{service}_endpoint_url") or self.vars.get("aws_endpoint_url")
        return str(value) if value else None

    def keys(self, user: str) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        try:
            return list(self.client.list_access_keys(UserName=user)["AccessKeyMetadata"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
                raise HostError(f"IAM user {user!r} does not exist; nothing changed") from None
            raise HostError(f"listing {user}'s access keys failed: {exc}") from None

    def last_used(self, key_id: str) -> str:
        try:
            used = self.client.get_access_key_last_used(AccessKeyId=key_id)["AccessKeyLastUsed"]
        except Exception:  # the answer is only shown to the user
            return "unknown"
        when = used.get("LastUsedDate")
        return when.isoformat(timespec="seconds") if when else "never"

    def test_key(self, user: str, key_id: str, secret: str) -> str:
        """ "" when STS names `user` for the key (and S3 answers through it, with aws_verify_bucket)."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
        from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
        sts = session.client("sts", endpoint_url=self._endpoint("sts"), region_name=self.region)

        def once() -> str:
            try:
                arn = str(sts.get_caller_identity()["Arn"])
            except (ClientError, BotoCoreError) as exc:
                return f"STS refused the new key: {exc}"
            return "" if arn.endswith(f"/{user}") else f"STS says the new key is {arn}, not {user}"

        # A new key takes a few seconds to work everywhere in IAM: retry while the answer is a refusal.
        timeout = float(self.vars.get("aws_key_propagation_timeout") or PROPAGATION_TIMEOUT)
        retrying = Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(2),
            retry=retry_if_result(bool),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else "no answer",
        )
        problem = str(retrying(once))
        if problem:
            return problem
        bucket = self.vars.get("aws_verify_bucket")
        if bucket:
            endpoint = self.vars.get("s3_endpoint_url")
            s3 = session.client(
                "s3", endpoint_url=str(endpoint) if endpoint else None, region_name=self.region,
                config=s3client.Bounds.from_vars(self.vars).config(),
            )
            try:
                s3.list_objects_v2(Bucket=str(bucket), MaxKeys=1)
            except (ClientError, BotoCoreError) as exc:
                return f"S3 refused the new key on bucket {bucket}: {exc}"
        return ""


def when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else str(value)


class RotateAwsKey(Remediation):
    task: ClassVar[str] = "rotate-aws-key"

    def __init__(
        self,
        user: str,
        env_host: str | None,
        env_keys: tuple[str, str],
        services: Sequence[str] = (),
        delete_old: bool = False,
        grace: int = 7 * 86400,
        max_age: int = 3600,
    ) -> None:
        self.user = user
        self.env_host = env_host
        self.env_keys = env_keys
        self.services = validate.check_services(services)
        self.delete_old = delete_old
        self.grace = grace
        self.max_age = max_age
        self._env_hosts: list[Host] = []
        self._clients: dict[str, Iam] = {}

    def prepare(self, inventory: Inventory) -> None:
        self._env_hosts = rotation.env_hosts(inventory, self.env_host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        self._clients[host.name] = Iam(host.vars)  # bad credentials or profile: bad input, nothing run

    @property
    def _iam(self) -> Iam:
        return next(iter(self._clients.values()))

    def run(self, ctx: HostContext) -> None:
        id_key, secret_key = self.env_keys
        with ExitStack() as stack:
            contexts = rotation.open_env_contexts(ctx, self._env_hosts, stack)
            sides = rotation.gather_sides(contexts, [id_key, secret_key], self.services, public=[id_key])
            current = rotation.agreed_values(sides)
            records = rotation.latest_of(sides, KIND, self.user)
            self.rotate(ctx, sides, records, current[id_key], current[secret_key])

    def rotate(
        self, ctx: HostContext, sides: list[EnvSide], records: list[Record | None], key_id: str, secret: str
    ) -> None:
        user, iam = self.user, self._iam
        with ctx.step("facts iam") as step:
            keys = iam.keys(user)
            listed = ", ".join(f"{k['AccessKeyId']} ({k['Status'].lower()})" for k in keys) or "none"
            step.done(Status.OK, f"IAM user {user} has {len(keys)} access key(s): {listed}")
        unfinished = [r for r in records if r is not None and r.unfinished]
        if unfinished:
            self.resume(
                ctx, sides, [r or unfinished[0] for r in records], unfinished[0], keys, key_id, secret
            )
            return
        ids = {k["AccessKeyId"]: k for k in keys}
        if key_id not in ids:
            raise HostError(
                f"the key in {self.env_keys[0]} ({key_id or 'empty'}) is not one of {user}'s keys "
                f"({', '.join(ids) or 'none'}); nothing changed"
            )
        others = [k for k in keys if k["AccessKeyId"] != key_id]
        done = [r for r in records if r is not None and r.status == "done"]
        retired = {str(r.detail.get("old_key")): r for r in done}
        if others:
            other = others[0]
            ours = retired.get(other["AccessKeyId"])
            if ours is None:
                raise HostError(
                    f"{user} already has two access keys: {key_id} (in the env file) and "
                    f"{other['AccessKeyId']} ({other['Status'].lower()}, "
                    f"created {when(other.get('CreateDate'))}, "
                    f"last used {iam.last_used(other['AccessKeyId'])}). Remove {other['AccessKeyId']} first "
                    f"(aws iam delete-access-key --user-name {user} --access-key-id {other['AccessKeyId']}); "
                    "nothing changed"
                )
            if not self.retire(ctx, sides, [r or ours for r in records], ours, other):
                return
        recent = [r for r in done if rotation.recent_enough(r, self.max_age)]
        if len(recent) == len(sides) and recent[0].detail.get("new_key") == key_id:
            ctx.record(
                "decide",
                Status.OK,
                f"{user}'s key was rotated {human_age(recent[0].age())} "
                f"ago (--max-age {human_age(self.max_age)}); {key_id} is in use; nothing to "
                "do",
            )
            return
        where = "; ".join(f"{s.label()} (recreate {rotation.describe_services(s)})" for s in sides)
        if ctx.check:
            ctx.record(
                "decide",
                Status.CHANGED,
                f"would create a second access key for {user}, write it to "
                f"{where}, test it, then deactivate {key_id}" + (" and delete it" if self.delete_old else ""),
                diff="\n".join(f"{s.file.path}: {rotation.masked_change(self.env_keys)}" for s in sides),
            )
            return
        detail = {"user": user, "old_key": key_id}
        saved = rotation.save_all(
            sides, [rotation.new_record(KIND, user, self.task, s, detail) for s in sides]
        )
        with ctx.step("create") as step:
            created = iam.client.create_access_key(UserName=user)["AccessKey"]
            new_id, new_secret = str(created["AccessKeyId"]), str(created["SecretAccessKey"])
            ctx.redactor.add_value(new_secret)
            step.done(Status.CHANGED, f"created access key {new_id} for {user}")
        values = {self.env_keys[0]: new_id, self.env_keys[1]: new_secret}
        for side, record in zip(sides, saved, strict=True):
            rotation.write_env(side, values, record.backup, step=f"set {side.host.name}")
        saved = rotation.save_all(sides, saved, status="set", detail={"new_key": new_id})
        self.test_and_finish(ctx, sides, saved, new_id, new_secret, key_id, secret)

    def retire(
        self,
        ctx: HostContext,
        sides: list[EnvSide],
        records: list[Record],
        record: Record,
        key: dict[str, Any],
    ) -> bool:
        """The old key of a finished rotation: deleted after the grace period or with --delete-old.
        True when the run goes on to rotate (only with --delete-old: a later run that deletes the old
        key after the grace period does only that)."""
        key_id, user = key["AccessKeyId"], self.user
        age = record.age()
        if key["Status"] != "Inactive":
            ctx.record(
                "retire",
                Status.FAILED,
                f"{key_id}, retired by rotation {record.id}, is ACTIVE again: "
                "someone re-enabled it; left alone. Delete it by hand when nothing uses it",
            )
            return False
        if not self.delete_old and age < self.grace:
            ctx.record(
                "retire",
                Status.OK,
                f"rotated {human_age(age)} ago; the old key {key_id} is "
                f"inactive and is deleted after the grace period ({human_age(self.grace)}, "
                f"{human_age(self.grace - age)} left) or with --delete-old",
            )
            return False
        if ctx.check:
            ctx.record(
                "retire",
                Status.CHANGED,
                f"would delete the old key {key_id} (inactive since {record.updated})",
            )
            return False
        with ctx.step("retire") as step:
            self._iam.client.delete_access_key(UserName=user, AccessKeyId=key_id)
            rotation.save_all(sides, records, detail={"old_key_state": "deleted"})
            why = "--delete-old" if self.delete_old and age < self.grace else "the grace period is over"
            step.done(
                Status.CHANGED, f"deleted the old key {key_id}, inactive since {record.updated} ({why})"
            )
        return self.delete_old

    def resume(
        self,
        ctx: HostContext,
        sides: list[EnvSide],
        records: list[Record],
        record: Record,
        keys: list[dict[str, Any]],
        key_id: str,
        secret: str,
    ) -> None:
        user, iam = self.user, self._iam
        old_id = str(record.detail.get("old_key", ""))
        if key_id == old_id:
            # The env files still hold the old key: a key created after the record is an orphan whose
            # secret was never stored. Delete it (nothing can use it) and start again on the next run.
            started = dt.datetime.fromisoformat(record.started)
            orphans = [
                k["AccessKeyId"]
                for k in keys
                if k["AccessKeyId"] != old_id
                and isinstance(k.get("CreateDate"), dt.datetime)
                and k["CreateDate"] >= started
            ]
            if ctx.check:
                ctx.record(
                    "decide",
                    Status.CHANGED,
                    f"would close the unfinished rotation {record.id}"
                    + (f" and delete the orphaned key(s) {', '.join(orphans)}" if orphans else ""),
                )
                return
            with ctx.step("resume") as step:
                for orphan in orphans:
                    iam.client.delete_access_key(UserName=user, AccessKeyId=orphan)
                rotation.save_all(
                    sides, records, status="abandoned", message="interrupted before the env file was written"
                )
                step.done(
                    Status.CHANGED,
                    f"closed the unfinished rotation {record.id} (the env file still "
                    f"has {old_id})"
                    + (
                        f"; deleted the orphaned key(s) {', '.join(orphans)}, whose secret was never stored"
                        if orphans
                        else ""
                    )
                    + "; run again to rotate",
                )
            return
        if ctx.check:
            ctx.record(
                "decide",
                Status.CHANGED,
                f"would finish the interrupted rotation {record.id}: test "
                f"{key_id}, recreate, deactivate {old_id}",
            )
            return
        old = rotation.backup_value(sides[0], record) or {}
        ctx.record(
            "resume",
            Status.OK,
            f"rotation {record.id} was interrupted after writing {key_id} to the env file: finishing it",
        )
        self.test_and_finish(ctx, sides, records, key_id, secret, old_id, old.get(self.env_keys[1], ""))

    def test_and_finish(
        self,
        ctx: HostContext,
        sides: list[EnvSide],
        records: list[Record],
        new_id: str,
        new_secret: str,
        old_id: str,
        old_secret: str,
    ) -> None:
        user, iam = self.user, self._iam
        values = {self.env_keys[0]: new_id, self.env_keys[1]: new_secret}
        with ctx.step("test") as step:
            problem = iam.test_key(user, new_id, new_secret)
            step.done(
                Status.FAILED if problem else Status.OK,
                problem
                or f"STS names {user} for {new_id}"
                + (
                    f"; S3 bucket {iam.vars['aws_verify_bucket']} answers through it"
                    if iam.vars.get("aws_verify_bucket")
                    else ""
                ),
            )
        if not problem:
            for side in sides:
                problem = rotation.recreate(side, values, prefix=f"{side.host.name} ")
                if problem:
                    break
        if problem:
            with ctx.step("rollback") as step:
                old_values = {self.env_keys[0]: old_id, self.env_keys[1]: old_secret}
                still = [
                    again
                    for side, record in zip(sides, records, strict=True)
                    if (
                        again := rotation.restore_env(
                            side, record.backup, old_values, prefix=f"{side.host.name} "
                        )
                    )
                ]
                iam.client.delete_access_key(UserName=user, AccessKeyId=new_id)
                rotation.save_all(
                    sides, records, status="failed" if still else "rolled-back", message=problem
                )
                step.done(
                    Status.FAILED,
                    f"{problem}; rolled back: env files restored, the new key {new_id} "
                    f"deleted, {old_id} still active; "
                    + (f"STILL unhealthy: {'; '.join(still)}" if still else "the apps are healthy"),
                )
            return
        with ctx.step("finish") as step:
            iam.client.update_access_key(UserName=user, AccessKeyId=old_id, Status="Inactive")
            state = "inactive"
            if self.delete_old:
                iam.client.delete_access_key(UserName=user, AccessKeyId=old_id)
                state = "deleted"
            rotation.save_all(
                sides,
                records,
                status="done",
                message="rotated",
                detail={"new_key": new_id, "old_key_state": state},
            )
            apps = "; ".join(f"{', '.join(s.services)} on {s.host.name}" for s in sides)
            step.done(
                Status.CHANGED,
                f"rotated {user}'s access key to {new_id}; {apps} recreated, healthy, "
                f"running with it; old key {old_id} {state}"
                + (
                    ""
                    if self.delete_old
                    else f" (deleted after {human_age(self.grace)} by a later run, or with --delete-old)"
                ),
            )
