"""IAM and STS through boto3 for rotate-aws-key: the run's credentials (the standard chain, or the
`aws_profile` var) at `iam_endpoint_url` / `aws_endpoint_url` when set; a new key tested with STS (and
S3 through it when `aws_verify_bucket` is set), retried while IAM propagates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from remediations.actions import s3client
from remediations.core.errors import HostError, UsageError

PROPAGATION_TIMEOUT = 60.0


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
