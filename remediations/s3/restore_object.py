"""restore-s3-object: make one version of s3://BUCKET/KEY current again, or undelete it.

facts   bucket versioning; the key's versions and delete markers (list_object_versions, stopping
        after the key); HEAD of the chosen version and of the current one;
decide  `decide.decide_object`: nothing (already current, the same content, did not exist then,
        retrieval pending), copy, unmark (remove delete markers), or start an archive retrieval;
apply   copy the version over the key as a new current version (history is kept), or remove the
        delete markers, or start the retrieval;
verify  HEAD of the current version: the restored content, content type and metadata.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions import s3client
from remediations.actions.s3task import BUCKET, TUNING, S3Task, tuning
from remediations.actions.s3versions import S3, Tuning
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.s3 import Head, Version, history, iso, parse_at, same_content
from remediations.s3.decide import ObjectPlan, ObjectTarget, decide_object


@dataclass(frozen=True)
class Facts:
    s3: S3
    hist: list[Version]  # newest first
    chosen: Head | None  # HEAD of the version to restore
    current: Head | None  # HEAD of the current data version (None: a delete marker or nothing)


class RestoreObject(S3Task):
    """Restore one S3 object to an earlier version: give exactly one of --version-id, --at, --undelete.

    The chosen version is copied over the key as a new current version (history is kept; no data
    version is deleted), with its content type, metadata and tags; parts are copied along the
    source's own part boundaries for multipart objects and objects over 5 GiB. Already holding that
    content: ok, no new version. An archived version gets a retrieval started (pending); run again to
    copy it once readable. Refused when bucket versioning is not Enabled. Endpoint: AWS_ENDPOINT_URL,
    else the s3_endpoint_url inventory var; credentials: the standard AWS chain. Requests are bounded
    as for restore-s3-prefix (108 s at most each with the default s3_* timeouts).
    """

    task: ClassVar[str] = "restore-s3-object"
    params = args(
        BUCKET,
        Arg("key", "the object's key (required)"),
        Arg("version_id", "make this version the current one"),
        Arg("at", "make current the version that was current at this time: ISO 8601 with a timezone "
            "(2024-05-01T09:30:00Z) or relative ('2h ago', '1d ago')"),
        Arg("undelete", "if the current version is a delete marker, remove it (and any stacked on it) so "
            "the previous version shows again", kind="flag"),
        *TUNING,
    )  # fmt: skip

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        values = dict(values)
        knobs = tuning(values)
        return cls(values.pop("bucket"), values.pop("key"), tuning=knobs, **values)

    def __init__(self, bucket: str | None, key: str | None, *, version_id: str | None = None,
                 at: str | None = None, undelete: bool = False, tuning: Tuning | None = None,
                 now: dt.datetime | None = None,
                 connect: Callable[[Mapping[str, Any], Tuning], S3] = S3) -> None:
        super().__init__(bucket, tuning or Tuning(), connect)
        if not key:
            raise UsageError("--key is required")
        self.key = key
        self.version_id = version_id
        self.at = at
        self.undelete = undelete
        when = parse_at(at, now or dt.datetime.now(dt.UTC)) if at else None
        self._target = ObjectTarget(version_id or None, when, undelete)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.version_id and self.answered(host):
            s3 = self._clients[host.name]
            with s3.failing(f"{self.uri} version {self.version_id}", UsageError):
                try:
                    s3.client.head_object(Bucket=self.bucket, Key=self.key, VersionId=self.version_id)
                except s3client.ClientError as exc:
                    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                    if status == 405:
                        raise UsageError(f"{self.uri}: version {self.version_id} is a delete marker; "
                                         "use --undelete to remove delete markers") from None
                    if status in (400, 404):
                        raise UsageError(f"{self.uri}: no version {self.version_id} (unknown version id)"
                                         ) from None
                    raise

    def gather(self, ctx: HostContext) -> Facts:
        s3 = self.s3(ctx)
        self.require_versioning(ctx, s3, self.bucket)
        with ctx.step("facts") as step, s3.failing(f"{self.uri}: facts"):
            hist, chosen, current = self._facts(s3)
            latest = hist[0].describe() if hist else "none"
            step.done(Status.OK, f"{len(hist)} version(s) and delete marker(s); current: {latest}",
                      versions=len(hist))  # fmt: skip
        return Facts(s3, hist, chosen, current)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        plan = self._decision(facts)
        if plan.action in ("ok", "skip", "wait"):
            # Nothing to change now: ok, with the reason (also "did not exist then" and "pending").
            return Plan.nothing(plan.reason)
        step = "retrieve" if plan.action == "retrieve" else "restore"
        apply = self._retrieve if plan.action == "retrieve" else self._restore
        return Plan.of(Change(step, plan.reason, lambda ctx: apply(ctx, facts, plan),
                              diff=f"{self.uri}: {plan.reason}", own_steps=True), check_step="decide")

    def verify(self, ctx: HostContext, facts: Facts, plan: Plan) -> None:
        decided = self._decision(facts)
        if decided.action == "retrieve" or decided.version is None:
            return  # the copy is for a later run, once the retrieval is done
        with ctx.step("verify") as step, facts.s3.failing(f"{self.uri}: verify"):
            step.done(*self._verify(facts.s3, decided.version, facts.chosen))

    def _decision(self, facts: Facts) -> ObjectPlan:
        return decide_object(self._target, facts.hist, facts.chosen, facts.current)

    def _retrieve(self, ctx: HostContext, facts: Facts, plan: ObjectPlan) -> None:
        assert plan.version is not None
        with ctx.step("retrieve") as step, facts.s3.failing(f"{self.uri}: restore_object"):
            started = facts.s3.start_retrieval(self.bucket, self.key, plan.version, self._tuning)
            when = iso(dt.datetime.now(dt.UTC))
            step.done(Status.CHANGED if started else Status.OK,
                      f"pending, retrieval started at {when} (tier {self._tuning.tier}); run again to "
                      "copy it once it is readable" if started else
                      "pending: a retrieval is already in progress", tier=self._tuning.tier)  # fmt: skip

    def _restore(self, ctx: HostContext, facts: Facts, plan: ObjectPlan) -> None:
        assert plan.version is not None
        s3 = facts.s3
        with ctx.step("restore") as step, s3.failing(f"{self.uri}: restore"):
            if plan.action == "unmark":
                for marker in plan.markers:
                    s3.client.delete_object(Bucket=self.bucket, Key=self.key, VersionId=marker.version_id)
                step.done(Status.CHANGED, f"removed {len(plan.markers)} delete marker(s)",
                          diff="\n".join(f"- {m.describe()}" for m in plan.markers))  # fmt: skip
                return
            new = s3.copy(self.bucket, self.key, plan.version, self.bucket, self.key, self._tuning,
                          facts.chosen, part_workers=self._tuning.workers)  # fmt: skip
            step.done(Status.CHANGED, f"copied {plan.version.describe()} over the key as the new "
                                      f"current version {new}", new_version=new,
                      diff=f"{self.uri}: now holds {plan.version.describe()}")  # fmt: skip

    def _facts(self, s3: S3) -> tuple[list[Version], Head | None, Head | None]:
        listing = s3.list_versions(self.bucket, self.key, self._tuning.page_size, only_key=self.key)
        hist = history(listing.by_key.get(self.key, []))
        plan = decide_object(self._target, hist, None, None)  # which version, before any HEAD
        chosen = None
        if plan.version is not None and not self._target.undelete:
            chosen = s3.head(self.bucket, self.key, plan.version.version_id)
        current = None
        if hist and not hist[0].is_delete_marker:
            current = s3.head(self.bucket, self.key, hist[0].version_id)
        return hist, chosen, current

    def _verify(self, s3: S3, version: Version, chosen: Head | None) -> tuple[Status, str]:
        current = s3.head(self.bucket, self.key, None)
        if current is None:
            return Status.FAILED, "the key still shows as deleted"
        if self._target.undelete:
            ok = current.version_id == version.version_id
            message = f"current version is {current.version_id}"
            return (Status.OK, message) if ok else (Status.FAILED, f"{message}, not {version.version_id}")
        assert chosen is not None
        same = same_content(chosen.content, current.content)
        kept = current.content_type == chosen.content_type and dict(current.metadata) == dict(chosen.metadata)
        if same is False:
            return Status.FAILED, f"current version {current.version_id} does not hold the restored content"
        if not kept:
            return Status.FAILED, (f"content type or metadata differ from the restored version: "
                                   f"{current.content_type!r} {dict(current.metadata)}")
        proof = (f"ETag {current.content.etag.strip(chr(34))}" if same else
                 "same size; its ETag, of another part layout, cannot prove the bytes equal")
        return Status.OK, (f"current version {current.version_id} holds {version.describe()} "
                           f"({proof}; content type and metadata kept)")
