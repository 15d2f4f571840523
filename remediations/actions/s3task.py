"""What the S3 restore tasks share: the controller target `s3:BUCKET`, their S3 arguments, and the
base class that makes one client per target in validate (the bucket exists and may be read).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from remediations.actions.s3client import S3Unanswered
from remediations.actions.s3versions import S3, Tuning
from remediations.core import validate
from remediations.core.args import Arg
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory, controller_host
from remediations.core.remediation import Remediation
from remediations.core.results import Status

HOST_HELP = ("optional: an inventory host with ansible_connection: local whose vars (s3_endpoint_url, "
             "s3_region, aws_profile) to use; default: the inventory's shared vars")  # fmt: skip


def _given(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """A parser for which an empty text is the default (None), as the flags always took it."""
    return lambda value, flag: None if value == "" else parse(value, flag)


def _workers(value: Any, flag: str) -> int:
    return validate.check_workers(value, flag)


def _days(value: Any, flag: str) -> int:
    return validate.check_count(value, flag, 1, 36500)


BUCKET = Arg("bucket", "the bucket (required)")
TIER = Arg("tier", "retrieval tier for archived (GLACIER, DEEP_ARCHIVE) versions: Expedited, Standard, Bulk "
           "(default Standard)", default="Standard")  # fmt: skip
WORKERS = Arg("workers", "copies in flight at once, 1 to 64 (default 64, halved while S3 answers SlowDown); "
              "the HTTP connection pool is at least as large", parse=_given(_workers))  # fmt: skip
RESTORE_DAYS = Arg("restore_days", "days a retrieved archived version stays readable (default 7)",
                   parse=_given(_days))  # fmt: skip
RETENTION_DAYS = Arg("retention_days", "noncurrent versions must be kept at least this long (default: the "
                     "s3_noncurrent_retention_days inventory var, else 30)", parse=_given(_days))  # fmt: skip
TUNING = (TIER, WORKERS, RESTORE_DAYS)  # checked in this order before: workers, restore days, tier


def tuning(values: dict[str, Any]) -> Tuning:
    """The Tuning of the parsed --tier/--workers/--restore-days (removed from `values`)."""
    given = {name: values.pop(name) for name in ("workers", "restore_days", "tier")}
    return Tuning(**{k: v for k, v in given.items() if v is not None})


def controller_targets(bucket: str | None) -> Callable[[Inventory], list[Host]]:
    """The synthetic target when no --host is given: `s3:BUCKET`, local, with the shared vars.

    The shared vars are those every inventory host has (in practice `all` vars): where
    `s3_endpoint_url`, `aws_profile`, `audit_log` and the notification settings live.
    """

    def targets(inventory: Inventory) -> list[Host]:
        return [controller_host(inventory, f"s3:{bucket}")]

    return targets


class S3Task(Remediation):
    """Shared by the S3 tasks: the target must be local; one client per target, built in validate."""

    changes_hosts: ClassVar[bool] = False  # only S3 changes: no lock on the controller
    runs_on_controller: ClassVar[bool] = True
    check_shows_diff: ClassVar[bool] = True  # --check lists every key: it implies --diff
    host_help: ClassVar[str] = HOST_HELP

    def __init__(self, bucket: str | None, tuning: Tuning,
                 connect: Callable[[Mapping[str, Any], Tuning], S3] = S3) -> None:
        if not bucket:
            raise UsageError("--bucket is required")
        self.bucket = validate.check_bucket(bucket)
        self._tuning = tuning
        self._connect = connect
        self._clients: dict[str, S3] = {}
        self._unanswered: dict[str, S3Unanswered] = {}  # by host: the endpoint was silent in validate
        self._versioning: dict[tuple[str, str], str] = {}  # (host, bucket): the status validate read

    @classmethod
    def controller_name(cls, values: dict[str, Any]) -> str:
        return f"s3:{values.get('bucket')}"

    def validate(self, host: Host) -> None:
        if not host.is_local:
            raise UsageError(
                f"{host.source}: host {host.name}: S3 tasks run on the controller: --host must name a "
                "host with ansible_connection: local (or leave --host out)"
            )
        s3 = self._clients[host.name] = self._connect(host.vars, self._tuning)
        s3.waits.label = self.task
        try:
            with s3.failing(f"s3://{self.bucket}", UsageError):
                self.read_versioning(host, s3, self.bucket)  # the bucket exists and we may read it
        except S3Unanswered as exc:
            self._unanswered[host.name] = exc  # not bad input: the host fails (exit 1) when it runs

    def read_versioning(self, host: Host, s3: S3, bucket: str) -> str:
        """The bucket's versioning status, kept for `require_versioning` of the same run (one
        GetBucketVersioning per bucket and run)."""
        status = self._versioning[host.name, bucket] = s3.versioning(bucket)
        return status

    def answered(self, host: Host) -> bool:
        """False when the endpoint already failed to answer in validate (ask it nothing more)."""
        return host.name not in self._unanswered

    def s3(self, ctx: HostContext) -> S3:
        if ctx.host.name in self._unanswered:
            raise self._unanswered[ctx.host.name]
        s3 = self._clients.get(ctx.host.name) or self._connect(ctx.host.vars, self._tuning)
        s3.waits.label = self.task
        for secret in s3.secrets:
            ctx.redactor.add_value(secret)
        return s3

    def require_versioning(self, ctx: HostContext, s3: S3, bucket: str) -> None:
        with ctx.step("versioning") as step, s3.failing(f"s3://{bucket}: bucket versioning"):
            status = self._versioning.pop((ctx.host.name, bucket), None) or s3.versioning(bucket)
            if status != "Enabled":
                raise HostError(
                    f"refused: versioning of s3://{bucket} is {status}, not Enabled; a copy would "
                    "overwrite the current null version and destroy it. Enable versioning first "
                    f"(aws s3api put-bucket-versioning --bucket {bucket} "
                    "--versioning-configuration Status=Enabled)"
                )
            step.done(Status.OK, f"versioning of s3://{bucket} is Enabled")


