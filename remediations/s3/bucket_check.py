"""s3-bucket-check: does a bucket keep what a restore needs? Read-only.

versioning  Enabled, or the step fails (overwritten or deleted objects cannot be restored);
lifecycle   no enabled rule expires noncurrent versions sooner than the retention
            (`decide.short_noncurrent_rules`; --retention-days, else s3_noncurrent_retention_days, else 30).
"""

from __future__ import annotations

from typing import ClassVar

from remediations.actions import s3client
from remediations.actions.s3task import BUCKET, RETENTION_DAYS, S3Task
from remediations.actions.s3versions import Tuning
from remediations.core.args import args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.results import Status
from remediations.s3.decide import short_noncurrent_rules


class BucketCheck(S3Task):
    """Report whether a bucket keeps what a restore needs; changes nothing.

    Checks that versioning is Enabled and that no enabled lifecycle rule expires noncurrent versions
    sooner than the retention. Each finding fails its step (exit code 1), so cron can alert on it.
    """

    task: ClassVar[str] = "s3-bucket-check"
    changes: ClassVar[bool] = False
    check_shows_diff: ClassVar[bool] = False  # it never took --check as --diff
    params = args(BUCKET, RETENTION_DAYS)

    def __init__(self, bucket: str | None, retention_days: int | None = None,
                 tuning: Tuning | None = None) -> None:
        super().__init__(bucket, tuning or Tuning())
        if retention_days is not None and int(retention_days) < 1:
            raise UsageError(f"--retention-days {retention_days}: give at least 1")
        self.retention_days = retention_days

    def run(self, ctx: HostContext) -> None:
        s3 = self.s3(ctx)
        retention = int(self.retention_days or ctx.var("s3_noncurrent_retention_days", 30))
        with ctx.step("versioning") as step, s3.failing(f"s3://{self.bucket}: versioning"):
            status = s3.versioning(self.bucket)
            step.done(Status.OK if status == "Enabled" else Status.FAILED,
                      f"versioning is {status}" + ("" if status == "Enabled" else
                                                   ": overwritten or deleted objects cannot be restored"),
                      versioning=status)
        with ctx.step("lifecycle") as step, s3.failing(f"s3://{self.bucket}: lifecycle"):
            try:
                rules = s3.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules") or []
            except s3client.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            short = short_noncurrent_rules(rules, retention)
            if short:
                step.done(Status.FAILED, f"noncurrent versions expire sooner than the {retention}-day "
                          "retention: " + "; ".join(
                              f"rule {f.rule} ({f.scope}) after {f.days} day(s)"
                              + (f", keeping the newest {f.keeps_newer}" if f.keeps_newer else "")
                              for f in short), rules=len(rules))
            else:
                step.done(Status.OK, f"{len(rules)} lifecycle rule(s); none expires noncurrent versions "
                          f"sooner than {retention} day(s)", rules=len(rules))
