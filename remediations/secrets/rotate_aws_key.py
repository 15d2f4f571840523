"""rotate-aws-key: a new IAM access key for a user, written to the app's env file; the old one retired.

IAM allows two access keys per user, which is what makes a rotation without downtime possible. The
run's target is the controller (`iam:USER`); IAM is called with boto3 (`actions.iam`). The env
host(s) are opened from the run through the engine, and locked.

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
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions import rotation
from remediations.actions.iam import Iam
from remediations.actions.rotation import EnvSide
from remediations.core import validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age, parse_duration
from remediations.facts import rotation as records
from remediations.facts.rotation import Record

KIND = "aws"
DEFAULT_GRACE = "7d"


def parse_env_keys(value: str | None) -> tuple[str, str]:
    text = value or "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
    names = [n.strip() for n in text.split(",")]
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(
            f"--env-keys {text[:60]!r}: give two names, the key id's and the secret's, "
            "e.g. AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
        )
    for name in names:
        records.check_key(name, "--env-keys")
    return names[0], names[1]


def check_user(user: str | None) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=,.@_-")
    if not user or len(user) > 64 or not set(user) <= allowed:
        raise UsageError(f"--user {str(user or '')[:70]!r}: give an IAM user name (letters, digits, +=,.@_-)")
    return user


def when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else str(value)


def orphans(keys: Sequence[dict[str, Any]], old_id: str, started: str) -> list[str]:
    """Pure: the keys created since a rotation started, other than the old one: their secret was
    never stored (the env files still hold the old key)."""
    since = dt.datetime.fromisoformat(started)
    return [k["AccessKeyId"] for k in keys if k["AccessKeyId"] != old_id
            and isinstance(k.get("CreateDate"), dt.datetime) and k["CreateDate"] >= since]  # fmt: skip


def reenabled(records_: Sequence[Record | None], keys: Sequence[dict[str, Any]], key_id: str) -> str:
    """Pure: why the run stops at once ("" if it does not): the old key a finished rotation retired
    is active again. Unfinished rotations and keys the run refuses for other reasons are decide's."""
    if any(r is not None and r.unfinished for r in records_):
        return ""
    if key_id not in {k["AccessKeyId"] for k in keys}:
        return ""
    retired = {str(r.detail.get("old_key")): r for r in records_ if r is not None and r.status == "done"}
    for key in keys:
        ours = retired.get(key["AccessKeyId"]) if key["AccessKeyId"] != key_id else None
        if ours is not None and key["Status"] != "Inactive":
            return (f"{key['AccessKeyId']}, retired by rotation {ours.id}, is ACTIVE again: someone "
                    "re-enabled it; left alone. Delete it by hand when nothing uses it")  # fmt: skip
    return ""


def _user(value: Any, flag: str) -> str:
    return check_user(value)


def _env_keys(value: Any, flag: str) -> tuple[str, str]:
    return parse_env_keys(value)


def _grace(value: Any, flag: str) -> int:
    return parse_duration(str(value or DEFAULT_GRACE), flag)


@dataclass(frozen=True)
class Facts:
    sides: list[EnvSide]
    records: list[Record | None]  # the newest record of the user on each env host
    key_id: str  # the key the env files hold
    secret: str
    keys: list[dict[str, Any]]  # the user's access keys in IAM

    def all(self, record: Record) -> list[Record]:
        """A record per env host: the host's own, or `record` where it has none."""
        return [r or record for r in self.records]


class RotateAwsKey(Remediation):
    """Rotate an IAM user's access key: create the second key, write it, test it, deactivate the old one.

    Example: inv rotate-aws-key --user shop-app --env-host api1 --service api
    Runs on the controller (boto3, standard credentials). The new key is tested with STS (and S3 with
    the aws_verify_bucket var) before the services are recreated with it; the old key is deactivated,
    and deleted with --delete-old or by a later run after --grace. A user with two keys already is
    refused, naming the key to remove.
    """

    task: ClassVar[str] = "rotate-aws-key"
    params = args(
        Arg("user", "the IAM user whose access key to rotate", parse=_user),
        Arg("env_host", "host(s) whose compose env file holds the key (host, group or comma list)"),
        Arg("env_keys", "the env file variables of the key id and the secret (default "
            "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY)", parse=_env_keys,
            default=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        records.READERS,
        Arg("delete_old", "delete the old key at once instead of deactivating it", kind="flag"),
        Arg("grace", "a later run deletes the deactivated old key once this long has passed (default 7d)",
            parse=_grace, default=_grace(DEFAULT_GRACE, "--grace")),
        records.MAX_AGE,
    )  # fmt: skip
    runs_on_controller: ClassVar[bool] = True

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

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RotateAwsKey:
        user = check_user(values["user"])  # not given: the same one line as a bad name
        return cls(user, values["env_host"], values["env_keys"], values["service"], values["delete_old"],
                   values["grace"], values["max_age"])  # fmt: skip

    @classmethod
    def controller_name(cls, values: dict[str, Any]) -> str:
        return f"iam:{values.get('user') or ''}"

    def prepare(self, inventory: Inventory) -> None:
        self._env_hosts = rotation.env_hosts(inventory, self.env_host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        self._clients[host.name] = Iam(host.vars)  # bad credentials or profile: bad input, nothing run

    @property
    def _iam(self) -> Iam:
        return next(iter(self._clients.values()))

    def run(self, ctx: HostContext) -> None:
        """The env hosts stay open from the facts to the end of the plan."""
        id_key, secret_key = self.env_keys
        with ExitStack() as stack:
            contexts = rotation.open_env_contexts(ctx, self._env_hosts, stack)
            sides = rotation.gather_sides(contexts, [id_key, secret_key], self.services, public=[id_key])
            current = rotation.agreed_values(sides)
            found = rotation.latest_of(sides, KIND, self.user)
            with ctx.step("facts iam") as step:
                keys = self._iam.keys(self.user)
                listed = ", ".join(f"{k['AccessKeyId']} ({k['Status'].lower()})" for k in keys) or "none"
                step.done(Status.OK, f"IAM user {self.user} has {len(keys)} access key(s): {listed}")
            facts = Facts(sides, found, current[id_key], current[secret_key], keys)
            refused = reenabled(found, keys, facts.key_id)
            if refused:
                ctx.record("retire", Status.FAILED, refused)
                return
            ctx.carry_out(self.decide(ctx, facts))

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        user, key_id = self.user, facts.key_id
        unfinished = [r for r in facts.records if r is not None and r.unfinished]
        if unfinished:
            return self.resume(facts, unfinished[0])
        ids = {k["AccessKeyId"]: k for k in facts.keys}
        if key_id not in ids:
            raise HostError(f"the key in {self.env_keys[0]} ({key_id or 'empty'}) is not one of {user}'s "
                            f"keys ({', '.join(ids) or 'none'}); nothing changed")  # fmt: skip
        others = [k for k in facts.keys if k["AccessKeyId"] != key_id]
        done = [r for r in facts.records if r is not None and r.status == "done"]
        retired: tuple[Record, dict[str, Any]] | None = None
        if others:
            retired = self.retired_by(done, others[0], key_id), others[0]
            if not self.delete_old:  # a run that retires the old key after the grace period does only that
                return self.waiting(*retired) if retired[0].age() < self.grace else \
                    Plan.of(self.retire(facts, *retired))  # fmt: skip
        recent = [r for r in done if records.recent_enough(r, self.max_age)]
        if len(recent) == len(facts.sides) and recent[0].detail.get("new_key") == key_id:
            reason = (f"{user}'s key was rotated {human_age(recent[0].age())} ago (--max-age "
                      f"{human_age(self.max_age)}); {key_id} is in use; nothing to do")  # fmt: skip
            return Plan.of(self.retire(facts, *retired, then=reason)) if retired else Plan.nothing(reason)
        summary = (f"create a second access key for {user}, write it to "
                   f"{rotation.describe_sides(facts.sides)}, test it, then deactivate {key_id}"
                   + (" and delete it" if self.delete_old else ""))  # fmt: skip
        rotate = Change("rotate", summary, lambda c: self.rotate(c, facts), own_steps=True,
                        diff=rotation.masked_diff(facts.sides, self.env_keys))  # fmt: skip
        if retired:
            return Plan.of(self.retire(facts, *retired), rotate)
        return Plan.of(rotate, check_step="decide")

    def retired_by(self, done: Sequence[Record], key: dict[str, Any], key_id: str) -> Record:
        """The finished rotation that retired `key`; a HostError when none did (nothing changed)."""
        ours = {str(r.detail.get("old_key")): r for r in done}.get(key["AccessKeyId"])
        if ours is None:
            user, other = self.user, key["AccessKeyId"]
            raise HostError(
                f"{user} already has two access keys: {key_id} (in the env file) and "
                f"{other} ({key['Status'].lower()}, created {when(key.get('CreateDate'))}, "
                f"last used {self._iam.last_used(other)}). Remove {other} first "
                f"(aws iam delete-access-key --user-name {user} --access-key-id {other}); nothing changed"
            )
        return ours

    def waiting(self, record: Record, key: dict[str, Any]) -> Plan:
        age = record.age()
        reason = (f"rotated {human_age(age)} ago; the old key {key['AccessKeyId']} is inactive and is "
                  f"deleted after the grace period ({human_age(self.grace)}, "
                  f"{human_age(self.grace - age)} left) or with --delete-old")  # fmt: skip
        return Plan.nothing(reason, step="retire")

    def retire(self, facts: Facts, record: Record, key: dict[str, Any], then: str = "") -> Change:
        """Delete the old key of a finished rotation (after the grace period or with --delete-old).
        `then`: the reason nothing more is done, recorded after it."""
        age, key_id, found = record.age(), key["AccessKeyId"], facts.all(record)

        def apply(ctx: HostContext) -> None:
            with ctx.step("retire") as step:
                self._iam.client.delete_access_key(UserName=self.user, AccessKeyId=key_id)
                rotation.save_all(facts.sides, found, detail={"old_key_state": "deleted"})
                why = "--delete-old" if self.delete_old and age < self.grace else "the grace period is over"
                step.done(Status.CHANGED, f"deleted the old key {key_id}, inactive since {record.updated} "
                          f"({why})")  # fmt: skip
            if then:
                ctx.record("decide", Status.OK, then)

        return Change("retire", f"delete the old key {key_id} (inactive since {record.updated})", apply,
                      own_steps=True)  # fmt: skip

    def resume(self, facts: Facts, record: Record) -> Plan:
        """An interrupted rotation: the env files still hold the old key (close it, delete orphans)
        or the new one (finish it)."""
        old_id, key_id, found = str(record.detail.get("old_key", "")), facts.key_id, facts.all(record)
        if key_id == old_id:
            lost = orphans(facts.keys, old_id, record.started)
            summary = f"close the unfinished rotation {record.id}" + (
                f" and delete the orphaned key(s) {', '.join(lost)}" if lost else "")  # fmt: skip
            return Plan.of(Change("resume", summary, lambda c: self.abandon(c, facts, found, record, lost),
                                  own_steps=True), check_step="decide")  # fmt: skip

        def finish(ctx: HostContext) -> None:
            old = rotation.backup_value(facts.sides[0], record) or {}
            ctx.record("resume", Status.OK, f"rotation {record.id} was interrupted after writing {key_id} to "
                       "the env file: finishing it")  # fmt: skip
            self.test_and_finish(ctx, facts.sides, found, (key_id, facts.secret),
                                 (old_id, old.get(self.env_keys[1], "")))  # fmt: skip

        summary = f"finish the interrupted rotation {record.id}: test {key_id}, recreate, deactivate {old_id}"
        return Plan.of(Change("resume", summary, finish, own_steps=True), check_step="decide")

    def abandon(self, ctx: HostContext, facts: Facts, found: list[Record], record: Record,
                lost: list[str]) -> None:  # fmt: skip
        """Delete the keys whose secret was never stored and close the record; the next run rotates."""
        with ctx.step("resume") as step:
            for orphan in lost:
                self._iam.client.delete_access_key(UserName=self.user, AccessKeyId=orphan)
            rotation.save_all(facts.sides, found, status="abandoned",
                              message="interrupted before the env file was written")  # fmt: skip
            step.done(Status.CHANGED, f"closed the unfinished rotation {record.id} (the env file still has "
                      f"{record.detail.get('old_key', '')})"
                      + (f"; deleted the orphaned key(s) {', '.join(lost)}, whose secret was never stored"
                         if lost else "") + "; run again to rotate")  # fmt: skip

    def rotate(self, ctx: HostContext, facts: Facts) -> None:
        """create → set → test → finish."""
        user, key_id = self.user, facts.key_id
        fresh = [rotation.new_record(KIND, user, self.task, s, {"user": user, "old_key": key_id})
                 for s in facts.sides]  # fmt: skip
        saved = rotation.save_all(facts.sides, fresh)
        with ctx.step("create") as step:
            created = self._iam.client.create_access_key(UserName=user)["AccessKey"]
            new_id, new_secret = str(created["AccessKeyId"]), str(created["SecretAccessKey"])
            ctx.redactor.add_value(new_secret)
            step.done(Status.CHANGED, f"created access key {new_id} for {user}")
        rotation.write_all(facts.sides, saved, dict(zip(self.env_keys, (new_id, new_secret), strict=True)))
        saved = rotation.save_all(facts.sides, saved, status="set", detail={"new_key": new_id})
        self.test_and_finish(ctx, facts.sides, saved, (new_id, new_secret), (key_id, facts.secret))

    def test_and_finish(self, ctx: HostContext, sides: list[EnvSide], found: list[Record],
                        new: tuple[str, str], old: tuple[str, str]) -> None:  # fmt: skip
        """STS (and S3) with the new key, then the apps recreated with it: finish, or roll back."""
        iam, new_id = self._iam, new[0]
        with ctx.step("test") as step:
            problem = iam.test_key(self.user, new_id, new[1])
            bucket = iam.vars.get("aws_verify_bucket")
            passed = f"STS names {self.user} for {new_id}" + (
                f"; S3 bucket {bucket} answers through it" if bucket else "")  # fmt: skip
            step.done(Status.FAILED if problem else Status.OK, problem or passed)
        if not problem:
            problem = rotation.recreate_all(sides, dict(zip(self.env_keys, new, strict=True)))
        if problem:
            self.roll_back(ctx, sides, found, new_id, old, problem)
        else:
            self.finish(ctx, sides, found, new_id, old[0])

    def roll_back(self, ctx: HostContext, sides: list[EnvSide], found: list[Record], new_id: str,
                  old: tuple[str, str], problem: str) -> None:  # fmt: skip
        """The env files back to their backups, the new key deleted: the old key never stopped working."""
        with ctx.step("rollback") as step:
            still = rotation.restore_all(sides, found, dict(zip(self.env_keys, old, strict=True)))
            self._iam.client.delete_access_key(UserName=self.user, AccessKeyId=new_id)
            rotation.save_all(sides, found, status="failed" if still else "rolled-back", message=problem)
            step.done(Status.FAILED, f"{problem}; rolled back: env files restored, the new key {new_id} "
                      f"deleted, {old[0]} still active; "
                      + (f"STILL unhealthy: {'; '.join(still)}" if still
                         else "the apps are healthy"))  # fmt: skip

    def finish(self, ctx: HostContext, sides: list[EnvSide], found: list[Record], new_id: str,
               old_id: str) -> None:  # fmt: skip
        """The old key deactivated (and deleted with --delete-old); the record says done."""
        client = self._iam.client
        with ctx.step("finish") as step:
            client.update_access_key(UserName=self.user, AccessKeyId=old_id, Status="Inactive")
            state = "inactive"
            if self.delete_old:
                client.delete_access_key(UserName=self.user, AccessKeyId=old_id)
                state = "deleted"
            rotation.save_all(sides, found, status="done", message="rotated",
                              detail={"new_key": new_id, "old_key_state": state})  # fmt: skip
            later = "" if self.delete_old else (
                f" (deleted after {human_age(self.grace)} by a later run, or with --delete-old)")  # fmt: skip
            step.done(Status.CHANGED, f"rotated {self.user}'s access key to {new_id}; {rotation.apps(sides)} "
                      f"recreated, healthy, running with it; old key {old_id} {state}{later}")  # fmt: skip
