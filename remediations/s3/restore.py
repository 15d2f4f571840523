"""S3 version restore: bring back an old version of an object, or a whole prefix as it was at a time.

The S3 calls run on the controller with boto3. The target is a synthetic local host (`s3:BUCKET`,
`ansible_connection: local`) built when no --host is given, so results flow through the engine like
every other remediation: ok / changed / failed / skipped, --check, --json, audit, notifications.

facts   bucket versioning; the versions and delete markers of the key (or prefix) from
        list_object_versions, paginated by KeyMarker/VersionIdMarker (pages that hold only delete
        markers included); HEAD of the versions involved (content, checksums, archive state);
decide  pure functions: the version that was current at a time, whether the current version
        already holds a version's content (ETags and checksums compared fairly), what to do per key;
apply   copy the chosen version over the key (a new current version: history is kept, no data
        version is ever deleted), part by part above a size threshold; remove delete markers
        (--undelete); start the retrieval of archived versions; put delete markers on keys created
        after the time (only with --delete-new: reversible);
verify  re-read the current version (object) or re-plan the whole prefix (prefix).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO
from urllib.parse import urlencode

from remediations.actions import s3client
from remediations.actions.s3client import S3Unanswered, is_endpoint_down, is_unanswered
from remediations.core import interrupt, validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory, controller_host
from remediations.core.remediation import Remediation
from remediations.core.results import Status

S3Client = Any  # boto3's client is generated at run time; no stubs are installed


GiB = 1024**3
MiB = 1024**2
COPY_OBJECT_LIMIT = 5 * GiB  # the largest object a single CopyObject may copy
MIN_PART = 5 * MiB  # S3's smallest part (except the last one)
MAX_PARTS = 10_000
ARCHIVED = frozenset({"GLACIER", "DEEP_ARCHIVE"})
TIERS = ("Expedited", "Standard", "Bulk")
# Headers kept by a multipart copy (CopyObject keeps them itself with MetadataDirective=COPY).
SYSTEM_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage",
                  "WebsiteRedirectLocation")


@dataclass(frozen=True)
class Tuning:
    """Knobs with production defaults; tests shrink them to exercise paging and multipart copy."""

    workers: int = 16  # copies in flight; the HTTP connection pool is at least this large
    page_size: int = 1000  # MaxKeys of each listing page
    multipart_threshold: int = COPY_OBJECT_LIMIT  # larger objects are copied part by part
    part_size: int = 512 * MiB  # part size when the source's own layout cannot be read
    tier: str = "Standard"  # archive retrieval tier
    restore_days: int = 7  # how long a retrieved copy of an archived version stays readable

    def __post_init__(self) -> None:
        validate.check_workers(self.workers)
        if not 1 <= self.page_size <= 1000:
            raise UsageError(f"page size {self.page_size}: give 1 to 1000")
        if self.part_size < MIN_PART:
            raise UsageError(f"part size {self.part_size}: give at least {MIN_PART} bytes")
        if self.multipart_threshold < 1:
            raise UsageError(f"multipart threshold {self.multipart_threshold}: give at least 1 byte")
        if self.multipart_threshold > COPY_OBJECT_LIMIT:
            raise UsageError("multipart threshold: CopyObject cannot copy more than 5 GiB")
        if self.tier not in TIERS:
            raise UsageError(f"--tier {self.tier!r}: give one of {', '.join(TIERS)}")
        if self.restore_days < 1:
            raise UsageError(f"--restore-days {self.restore_days}: give at least 1")


# --------------------------------------------------------------------------------------------
# Decide: pure functions of the facts, with table-driven tests in tests/test_s3_restore.py
# --------------------------------------------------------------------------------------------

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}
_RELATIVE = re.compile(r"((?:\d+(?:\.\d+)?\s*[a-z]+\s*)+)ago", re.IGNORECASE)
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)


def parse_at(text: str, now: dt.datetime) -> dt.datetime:
    """`--at`: ISO 8601 with a timezone, or relative ("2h ago", "1d 6h ago"); returned in UTC."""
    raw = text.strip()
    relative = _RELATIVE.fullmatch(raw)
    if relative:
        seconds = 0.0
        for amount, unit in _AMOUNT.findall(relative.group(1)):
            if unit.lower() not in _UNITS:
                raise UsageError(f"--at {validate.shown(text)}: unknown unit {unit!r} (use s, m, h, d or w)")
            seconds += float(amount) * _UNITS[unit.lower()]
        validate.check_duration(seconds, "--at", text)
        return (now - dt.timedelta(seconds=seconds)).astimezone(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"--at {validate.shown(text)}: give an ISO 8601 time with a timezone (2024-05-01T09:30:00Z, "
            "2024-05-01T12:30+03:00) or a relative time such as '2h ago'"
        ) from None
    if when.tzinfo is None:
        raise UsageError(
            f"--at {validate.shown(text)} has no timezone: add Z (UTC) or an offset such as +03:00"
        )
    if when > now:
        raise UsageError(f"--at {validate.shown(text)} is in the future")
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:  # year 1 with a positive offset is before year 1 in UTC
        raise UsageError(f"--at {validate.shown(text)}: too long ago") from None


@dataclass(frozen=True)
class Content:
    """What identifies an object's bytes: size, ETag and any checksums S3 keeps for it."""

    size: int
    etag: str
    checksums: Mapping[str, str] = field(default_factory=dict)  # algorithm -> value
    checksum_type: str = ""  # FULL_OBJECT or COMPOSITE
    etag_is_md5: bool = True  # False under SSE-KMS / SSE-C: the ETag is then not a digest of the bytes


def etag_parts(etag: str) -> int:
    """0 for a single-part ETag (the MD5 of the bytes), N for a multipart one ("…-N")."""
    _, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else 0


def same_content(a: Content, b: Content) -> bool | None:
    """Whether two objects hold the same bytes: True, False, or None when the facts cannot tell.

    A multipart ETag is the MD5 of the parts' MD5s plus "-N", so it depends on where the parts
    were cut: equal ETags prove equal bytes, but a single-part and a multipart ETag (or two
    multipart ETags) that differ prove nothing. Full-object checksums settle those cases.
    """
    if a.size != b.size:
        return False
    if a.etag.strip('"') == b.etag.strip('"'):
        return True
    for algorithm in sorted(set(a.checksums) & set(b.checksums)):
        if a.checksums[algorithm] == b.checksums[algorithm] and a.checksum_type == b.checksum_type:
            return True
        if a.checksum_type == b.checksum_type == "FULL_OBJECT":
            return False
    if etag_parts(a.etag) == etag_parts(b.etag) == 0 and a.etag_is_md5 and b.etag_is_md5:
        return False  # two MD5s of the bytes
    return None


@dataclass(frozen=True)
class Version:
    """One entry of list_object_versions: a data version or a delete marker."""

    key: str
    version_id: str
    last_modified: dt.datetime
    is_latest: bool
    is_delete_marker: bool = False
    etag: str = ""
    size: int = 0
    storage_class: str = "STANDARD"

    @property
    def content(self) -> Content:
        return Content(self.size, self.etag)

    def describe(self) -> str:
        what = "delete marker" if self.is_delete_marker else "version"
        return f"{what} {self.version_id} of {iso(self.last_modified)}"


def iso(when: dt.datetime) -> str:
    spec = "milliseconds" if when.microsecond else "seconds"
    return when.astimezone(dt.UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def history(entries: Iterable[Version]) -> list[Version]:
    """One key's versions and delete markers, newest first.

    boto3 returns versions and delete markers in two lists, so their common order is rebuilt from
    LastModified, which has one-second resolution. On a tie the IsLatest entry comes first, then
    delete markers before versions (a put and a delete in the same second are far more often in that
    order than the reverse), then listing order, which S3 gives newest first within each list.
    """
    return sorted(entries, key=lambda v: (v.last_modified, v.is_latest, v.is_delete_marker), reverse=True)


def at_time(hist: Sequence[Version], when: dt.datetime) -> Version | None:
    """The entry that was current at `when`: the newest at or before it (None: no entry yet)."""
    return next((v for v in hist if v.last_modified <= when), None)


def archive_state(storage_class: str, restore: str) -> str:
    """readable | archived | retrieving | retrieved, from StorageClass and the x-amz-restore header."""
    if storage_class not in ARCHIVED:
        return "readable"
    if 'ongoing-request="true"' in restore:
        return "retrieving"
    if 'ongoing-request="false"' in restore:
        return "retrieved"
    return "archived"


@dataclass(frozen=True)
class Head:
    """HEAD of one version: its content, what a copy must keep, and its archive state."""

    version_id: str
    content: Content
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    system: Mapping[str, str] = field(default_factory=dict)  # Cache-Control and friends
    storage_class: str = "STANDARD"
    restore: str = ""

    @property
    def state(self) -> str:
        return archive_state(self.storage_class, self.restore)


@dataclass(frozen=True)
class ObjectTarget:
    """Which state of the key to restore: exactly one of a version id, a time, or undelete."""

    version_id: str | None = None
    at: dt.datetime | None = None
    undelete: bool = False

    def __post_init__(self) -> None:
        given = [n for n, v in (("--version-id", self.version_id), ("--at", self.at),
                                ("--undelete", self.undelete)) if v]
        if len(given) != 1:
            raise UsageError(
                "give exactly one of --version-id, --at or --undelete"
                + (f" (got {' and '.join(given)})" if given else "")
            )


@dataclass(frozen=True)
class ObjectPlan:
    """ok / skip: nothing to do, and why; copy / retrieve / wait / unmark: what to do."""

    action: str
    reason: str
    version: Version | None = None
    markers: tuple[Version, ...] = ()


def decide_object(target: ObjectTarget, hist: Sequence[Version], chosen: Head | None,
                  current: Head | None) -> ObjectPlan:
    """Pure: what restoring `target` means for a key with history `hist` (newest first).

    `chosen` is the HEAD of the version to restore, `current` that of the current data version
    (None when the key's current entry is a delete marker or there is none).
    """
    latest = hist[0] if hist else None
    if target.undelete:
        markers = tuple(v for v in _leading_markers(hist))
        if not markers:
            return ObjectPlan("ok", "the current version is not a delete marker: nothing to undelete")
        revealed = next((v for v in hist if not v.is_delete_marker), None)
        if revealed is None:
            return ObjectPlan("skip", "the key has only delete markers: no version to show again")
        return ObjectPlan(
            "unmark",
            f"remove {len(markers)} delete marker(s) so {revealed.describe()} shows again",
            revealed, markers,
        )
    if target.version_id is not None:
        version = next((v for v in hist if v.version_id == target.version_id), None)
        if version is None or version.is_delete_marker:
            return ObjectPlan("skip", f"version {target.version_id} is not a data version of the key")
    else:
        assert target.at is not None
        version = at_time(hist, target.at)
        if version is None:
            first = f" (its first version is from {iso(hist[-1].last_modified)})" if hist else ""
            return ObjectPlan("skip", f"the key did not exist at {iso(target.at)}{first}; nothing changed")
        if version.is_delete_marker:
            return ObjectPlan("skip", f"the key did not exist at {iso(target.at)} (deleted by "
                                      f"{version.describe()}); nothing changed")
    if latest is not None and latest.version_id == version.version_id:
        return ObjectPlan("ok", f"{version.describe()} is already the current version", version)
    content = chosen.content if chosen else version.content
    if current is not None:
        same = same_content(content, current.content)
        if same:
            return ObjectPlan("ok", f"the current version {current.version_id} already holds the content "
                                    f"of {version.describe()} (ETag {content.etag.strip(chr(34))})", version)
        why = ("its content differs" if same is False else
               "its content cannot be proven equal (ETags of different part layouts, no common checksum)")
        why = f"the current version {current.version_id}: {why}"
    else:
        why = "the key is deleted (its current version is a delete marker)"
    state = chosen.state if chosen else archive_state(version.storage_class, "")
    if state == "archived":
        return ObjectPlan("retrieve", f"{version.describe()} is in {version.storage_class}: its retrieval "
                                      "must finish before it can be copied", version)
    if state == "retrieving":
        return ObjectPlan("wait", f"pending: retrieval of {version.describe()} from "
                                  f"{version.storage_class} is still in progress", version)
    return ObjectPlan("copy", f"copy {version.describe()} over the key ({why})", version)


def _leading_markers(hist: Sequence[Version]) -> Iterator[Version]:
    for entry in hist:
        if not entry.is_delete_marker:
            return
        yield entry


@dataclass(frozen=True)
class KeyPlan:
    """What a prefix restore does to one key.

    unchanged | restore | retrieve | wait | new (left alone) | hide (delete marker, --delete-new).
    """

    key: str
    dest_key: str
    action: str
    reason: str
    version: Version | None = None


def dest_key(key: str, prefix: str, to_prefix: str | None) -> str:
    return key if to_prefix is None else to_prefix + key[len(prefix):]


def plan_key(key: str, target_key: str, hist: Sequence[Version], at: dt.datetime,
             dest: Content | None, dest_version_id: str | None, delete_new: bool,
             in_place: bool = True) -> KeyPlan:
    """Pure: bring `target_key` to the state `key` (history `hist`, newest first) had at `at`.

    `dest` is the target key's current content (None: missing or deleted); `dest_version_id` is its
    current version id in an in-place restore (the target is the key itself), else None.
    """
    wanted = at_time(hist, at)
    if wanted is not None and wanted.is_delete_marker:
        wanted = None
    if wanted is None:
        if dest is None:
            return KeyPlan(key, target_key, "unchanged", f"absent at {iso(at)} and now")
        if delete_new:
            return KeyPlan(key, target_key, "hide", f"created after {iso(at)}: a delete marker hides it")
        return KeyPlan(key, target_key, "new", f"created after {iso(at)}: left alone (--delete-new hides it)")
    if dest is None:
        why = "deleted after" if in_place else "missing in the destination at"
        return KeyPlan(key, target_key, "restore", f"{why} {iso(at)}: restore {wanted.describe()}", wanted)
    if dest_version_id == wanted.version_id or same_content(wanted.content, dest) is True:
        return KeyPlan(key, target_key, "unchanged", f"already holds {wanted.describe()}", wanted)
    why = "overwritten after" if in_place else "differs from the source at"
    return KeyPlan(key, target_key, "restore", f"{why} {iso(at)}: restore {wanted.describe()}", wanted)


def refine_archived(plan: KeyPlan, head: Head) -> KeyPlan:
    """An archived version must be retrieved before it can be copied."""
    state = head.state
    if plan.action != "restore" or state in ("readable", "retrieved"):
        return plan
    if state == "retrieving":
        return KeyPlan(plan.key, plan.dest_key, "wait", "pending: retrieval still in progress", plan.version)
    return KeyPlan(plan.key, plan.dest_key, "retrieve",
                   f"archived in {head.storage_class}: retrieval needed before the copy", plan.version)


ACTION_WORDS = {
    "unchanged": "ok", "restore": "restore", "retrieve": "retrieve", "wait": "pending",
    "new": "keep new", "hide": "hide new",
}


def plan_lines(plans: Iterable[KeyPlan]) -> str:
    """One line per key: what happens to it and why (the --check listing)."""
    return "\n".join(f"{ACTION_WORDS[p.action]:<9} {p.dest_key}  {p.reason}" for p in plans)


def count_actions(plans: Iterable[KeyPlan]) -> dict[str, int]:
    counts = dict.fromkeys(ACTION_WORDS, 0)
    for plan in plans:
        counts[plan.action] += 1
    return counts


def part_layout(size: int, part_size: int) -> list[int]:
    """Fixed-size parts (the last one shorter), grown so that there are at most 10,000."""
    part_size = max(part_size, math.ceil(size / MAX_PARTS), 1)
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest or not full else [])


def uniform_layout(size: int, first_part: int, parts: int) -> list[int] | None:
    """The layout every SDK uploader makes (equal parts, a shorter last one), if it fits the facts."""
    if parts < 1 or first_part < 1:
        return None
    last = size - first_part * (parts - 1)
    if not 0 < last <= first_part or (parts == 1 and last != first_part):
        return None
    return [first_part] * (parts - 1) + [last]


def byte_ranges(layout: Sequence[int]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for length in layout:
        ranges.append((start, start + length - 1))
        start += length
    return ranges


@dataclass(frozen=True)
class LifecycleFinding:
    rule: str
    scope: str
    days: int
    keeps_newer: int


def short_noncurrent_rules(rules: Iterable[Mapping[str, Any]], retention_days: int) -> list[LifecycleFinding]:
    """Enabled lifecycle rules that expire noncurrent versions sooner than `retention_days`."""
    found = []
    for rule in rules:
        expiry = rule.get("NoncurrentVersionExpiration") or {}
        days = expiry.get("NoncurrentDays")
        if rule.get("Status") != "Enabled" or days is None or int(days) >= retention_days:
            continue
        found.append(LifecycleFinding(str(rule.get("ID") or "(no id)"), _rule_scope(rule), int(days),
                                      int(expiry.get("NewerNoncurrentVersions") or 0)))
    return found


def _rule_scope(rule: Mapping[str, Any]) -> str:
    flt = rule.get("Filter") or {}
    prefix = rule.get("Prefix", flt.get("Prefix", (flt.get("And") or {}).get("Prefix")))
    tags = ([flt["Tag"]] if "Tag" in flt else []) + list((flt.get("And") or {}).get("Tags") or [])
    parts = [f"prefix {prefix!r}"] if prefix else []
    parts += [f"tag {t.get('Key')}={t.get('Value')}" for t in tags]
    return ", ".join(parts) or "the whole bucket"


# --------------------------------------------------------------------------------------------
# Facts and apply: the S3 client and the calls it makes
# --------------------------------------------------------------------------------------------

endpoint_url = s3client.endpoint_url


class S3(s3client.Client):
    """The package's S3 client (`s3client.Client`) for one target host, with the calls a restore makes."""

    def __init__(self, host_vars: Mapping[str, Any], tuning: Tuning, client: S3Client = None) -> None:
        # The connection pool is at least as large as the copy pool.
        super().__init__(host_vars, "s3", pool=tuning.workers, client=client)

    def explain(self, exc: Exception) -> str:
        """One line for an S3 failure, with the credentials masked."""
        where = self.endpoint or "AWS"
        if isinstance(exc, s3client.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = str(error.get("Message") or "")
            if code == "NoSuchBucket":
                text = "the bucket does not exist"
            elif code in ("AccessDenied", "AllAccessDisabled") or status == 403:
                text = f"access denied ({code or status}): {message}".rstrip(": ")
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                          "ExpiredToken"):
                text = f"the AWS credentials were refused ({code})"
            else:
                text = f"{exc.operation_name}: {code or status}: {message}".rstrip(": ")
            return self.mask(f"{text} [{where}]")
        if is_unanswered(exc):
            return self.mask(self.waits.unanswered())
        if isinstance(exc, s3client.EndpointConnectionError):
            return self.mask(f"cannot reach the S3 endpoint {where}: {exc}")
        if isinstance(exc, s3client.NoCredentialsError):
            return "no AWS credentials found"
        return self.mask(f"{type(exc).__name__}: {exc} [{where}]")

    @contextmanager
    def failing(self, what: str, error: type[Exception] = HostError) -> Iterator[None]:
        """Turn an S3 failure into `error` (HostError for a host, UsageError for bad input); an
        endpoint that does not answer is never bad input: S3Unanswered, a HostError."""
        try:
            yield
        except (s3client.ClientError, s3client.BotoCoreError) as exc:
            if is_unanswered(exc):
                raise S3Unanswered(f"{what}: {self.explain(exc)}") from None
            raise error(f"{what}: {self.explain(exc)}") from None

    # facts ------------------------------------------------------------------------------------

    def versioning(self, bucket: str) -> str:
        return str(self.client.get_bucket_versioning(Bucket=bucket).get("Status") or "never enabled")

    def head(self, bucket: str, key: str, version_id: str | None) -> Head | None:
        """HEAD of a version (the current one when version_id is None); None for a delete marker."""
        extra = {"VersionId": version_id} if version_id else {}
        try:
            found = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra)
        except s3client.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (404, 405):
                return None
            raise
        checksums = {k.removeprefix("Checksum"): str(v) for k, v in found.items()
                     if k.startswith("Checksum") and k != "ChecksumType" and v}
        sse = str(found.get("ServerSideEncryption") or "")
        return Head(
            version_id=str(found.get("VersionId") or version_id or "null"),
            content=Content(int(found.get("ContentLength", 0)), str(found.get("ETag", "")), checksums,
                            str(found.get("ChecksumType") or ""),
                            etag_is_md5=sse != "aws:kms" and not found.get("SSECustomerAlgorithm")),
            content_type=str(found.get("ContentType") or ""),
            metadata=dict(found.get("Metadata") or {}),
            system={k: str(found[k]) for k in SYSTEM_HEADERS if found.get(k)},
            storage_class=str(found.get("StorageClass") or "STANDARD"),
            restore=str(found.get("Restore") or ""),
        )

    def list_versions(self, bucket: str, prefix: str, page_size: int, *, only_key: str | None = None
                      ) -> Listing:
        """Every version and delete marker under `prefix`, page by page.

        A page may hold only delete markers (no "Versions" element at all): nothing here assumes
        either list is present. With `only_key`, stops after that key's entries (keys are listed in
        order, so every later page is about other keys).
        """
        listing = Listing()
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        while True:
            with self.waits.doing(f"ListObjectVersions page {listing.pages + 1} of {bucket}/{prefix}"):
                page = self.client.list_object_versions(**request)
            versions = page.get("Versions") or []
            markers = page.get("DeleteMarkers") or []
            listing.pages += 1
            if markers and not versions:
                listing.marker_only_pages += 1
            past_key = False
            for entry, is_marker in [*((v, False) for v in versions), *((m, True) for m in markers)]:
                key = str(entry["Key"])
                if only_key is not None and key != only_key:
                    past_key = past_key or key > only_key
                    continue
                listing.by_key.setdefault(key, []).append(Version(
                    key, str(entry.get("VersionId") or "null"), entry["LastModified"],
                    bool(entry.get("IsLatest")), is_marker, str(entry.get("ETag", "")),
                    int(entry.get("Size", 0)), str(entry.get("StorageClass") or "STANDARD"),
                ))
            if past_key or not page.get("IsTruncated"):
                return listing
            request["KeyMarker"] = page["NextKeyMarker"]
            if page.get("NextVersionIdMarker"):
                request["VersionIdMarker"] = page["NextVersionIdMarker"]
            else:
                request.pop("VersionIdMarker", None)

    def list_current(self, bucket: str, prefix: str, page_size: int) -> dict[str, Content]:
        """The current objects under `prefix` (deleted keys are absent), for a restore elsewhere."""
        found: dict[str, Content] = {}
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        pages = 0
        while True:
            pages += 1
            with self.waits.doing(f"ListObjectsV2 page {pages} of {bucket}/{prefix}"):
                page = self.client.list_objects_v2(**request)
            for entry in page.get("Contents") or []:
                found[str(entry["Key"])] = Content(int(entry.get("Size", 0)), str(entry.get("ETag", "")))
            if not page.get("IsTruncated"):
                return found
            request["ContinuationToken"] = page["NextContinuationToken"]

    # apply ------------------------------------------------------------------------------------

    def copy(self, bucket: str, key: str, version: Version, dest_bucket: str, dest: str,
             tuning: Tuning, head: Head | None = None, part_workers: int = 1) -> str:
        """Copy `version` over `dest` as its new current version; returns the new version id.

        Content type, metadata and tags come with it. A multipart source is copied part for part
        along its own part boundaries, so the copy has the source's ETag and a later run can see
        that it is already restored; objects over the threshold are always copied in parts.
        """
        source = {"Bucket": bucket, "Key": key, "VersionId": version.version_id}
        multipart = etag_parts(version.etag) > 0 or version.size > tuning.multipart_threshold
        if not multipart:
            done = self.client.copy_object(
                Bucket=dest_bucket, Key=dest, CopySource=source,
                MetadataDirective="COPY", TaggingDirective="COPY",
            )
            return str(done.get("VersionId") or "null")
        head = head or self.head(bucket, key, version.version_id)
        if head is None:
            raise HostError(f"s3://{bucket}/{key}: {version.describe()} disappeared before the copy")
        layout = self.source_layout(bucket, key, version, tuning)
        tags = self.client.get_object_tagging(Bucket=bucket, Key=key, VersionId=version.version_id)
        upload = self.client.create_multipart_upload(
            Bucket=dest_bucket, Key=dest, ContentType=head.content_type or "binary/octet-stream",
            Metadata=dict(head.metadata), Tagging=urlencode([(t["Key"], t["Value"]) for t in tags["TagSet"]]),
            **head.system,
        )
        upload_id = upload["UploadId"]

        def part(number: int, first: int, last: int) -> dict[str, Any]:
            done = self.client.upload_part_copy(
                Bucket=dest_bucket, Key=dest, UploadId=upload_id, PartNumber=number,
                CopySource=source, CopySourceRange=f"bytes={first}-{last}",
            )
            return {"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=part_workers, thread_name_prefix="s3part") as pool:
                parts = list(pool.map(lambda r: part(r[0] + 1, *r[1]), enumerate(byte_ranges(layout))))
            done = self.client.complete_multipart_upload(
                Bucket=dest_bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts},
            )
        except BaseException as exc:
            # An abort would only wait as long again on a silent endpoint: say what is left instead.
            if isinstance(exc, Exception) and is_endpoint_down(exc):
                raise S3Unanswered(
                    f"{self.explain(exc)}; the unfinished multipart upload {upload_id} of "
                    f"s3://{dest_bucket}/{dest} is left: abort it (aws s3api abort-multipart-upload "
                    f"--bucket {dest_bucket} --key {dest} --upload-id {upload_id}) or let an "
                    "AbortIncompleteMultipartUpload lifecycle rule remove it"
                ) from None
            # An unfinished upload keeps its parts (and their cost) until aborted.
            self.client.abort_multipart_upload(Bucket=dest_bucket, Key=dest, UploadId=upload_id)
            raise
        return str(done.get("VersionId") or "null")

    def source_layout(self, bucket: str, key: str, version: Version, tuning: Tuning) -> list[int]:
        """The source's own part sizes when S3 tells them (HEAD ?partNumber), else fixed parts."""
        count = etag_parts(version.etag)
        if count > 1:
            try:
                first = self.client.head_object(Bucket=bucket, Key=key, VersionId=version.version_id,
                                                PartNumber=1)
            except s3client.ClientError:
                first = {}
            if int(first.get("PartsCount") or 0) == count:
                layout = uniform_layout(version.size, int(first.get("ContentLength") or 0), count)
                if layout is not None:
                    return layout
        return part_layout(version.size, tuning.part_size)

    def start_retrieval(self, bucket: str, key: str, version: Version, tuning: Tuning) -> bool:
        """Start restore_object for an archived version; False when one is already running."""
        try:
            self.client.restore_object(
                Bucket=bucket, Key=key, VersionId=version.version_id,
                RestoreRequest={"Days": tuning.restore_days, "GlacierJobParameters": {"Tier": tuning.tier}},
            )
        except s3client.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "RestoreAlreadyInProgress":
                return False
            raise
        return True


@dataclass
class Listing:
    by_key: dict[str, list[Version]] = field(default_factory=dict)
    pages: int = 0
    marker_only_pages: int = 0


class Progress:
    """`done/total keys, N keys/s` on one rewritten line, only when the stream is a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every: float = 0.2) -> None:
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.every = every
        self.done = 0
        self.start = time.monotonic()
        self._shown = 0.0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if self.live and (now - self._shown >= self.every or self.done == self.total):
                self._shown = now
                rate = self.done / max(now - self.start, 1e-6)
                self.stream.write(f"\r\033[K{self.label}: {self.done}/{self.total} keys, {rate:.1f} keys/s")
                self.stream.flush()

    def close(self) -> None:
        if self.live and self.done:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# The remediations
# --------------------------------------------------------------------------------------------


def controller_targets(bucket: str | None) -> Callable[[Inventory], list[Host]]:
    """The synthetic target when no --host is given: `s3:BUCKET`, local, with the shared vars.

    The shared vars are those every inventory host has (in practice `all` vars): where
    `s3_endpoint_url`, `aws_profile`, `audit_log` and the notification settings live.
    """

    def targets(inventory: Inventory) -> list[Host]:
        return [controller_host(inventory, f"s3:{bucket}")]

    return targets


class _S3Remediation(Remediation):
    """Shared by the S3 tasks: the target must be local; one client per target, built in validate."""

    changes_hosts: ClassVar[bool] = False  # only S3 changes: no lock on the controller

    def __init__(self, bucket: str | None, tuning: Tuning,
                 connect: Callable[[Mapping[str, Any], Tuning], S3] = S3) -> None:
        if not bucket:
            raise UsageError("--bucket is required")
        self.bucket = validate.check_bucket(bucket)
        self._tuning = tuning
        self._connect = connect
        self._clients: dict[str, S3] = {}
        self._unanswered: dict[str, S3Unanswered] = {}  # by host: the endpoint was silent in validate

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
                s3.versioning(self.bucket)  # the bucket exists and we may read it
        except S3Unanswered as exc:
            self._unanswered[host.name] = exc  # not bad input: the host fails (exit 1) when it runs

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
            status = s3.versioning(bucket)
            if status != "Enabled":
                raise HostError(
                    f"refused: versioning of s3://{bucket} is {status}, not Enabled; a copy would "
                    "overwrite the current null version and destroy it. Enable versioning first "
                    f"(aws s3api put-bucket-versioning --bucket {bucket} "
                    "--versioning-configuration Status=Enabled)"
                )
            step.done(Status.OK, f"versioning of s3://{bucket} is Enabled")


class RestoreObject(_S3Remediation):
    """Make one version of s3://BUCKET/KEY current again (or undelete it)."""

    task: ClassVar[str] = "restore-s3-object"

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

    def run(self, ctx: HostContext) -> None:
        s3 = self.s3(ctx)
        self.require_versioning(ctx, s3, self.bucket)
        with ctx.step("facts") as step, s3.failing(f"{self.uri}: facts"):
            hist, chosen, current = self._facts(s3)
            latest = hist[0].describe() if hist else "none"
            step.done(Status.OK, f"{len(hist)} version(s) and delete marker(s); current: {latest}",
                      versions=len(hist))
        plan = decide_object(self._target, hist, chosen, current)
        if plan.action in ("ok", "skip", "wait"):
            # Nothing to change now: ok, with the reason (also "did not exist then" and "pending").
            ctx.record("decide", Status.OK, plan.reason)
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would {plan.reason}", diff=f"{self.uri}: {plan.reason}")
            return
        assert plan.version is not None
        if plan.action == "retrieve":
            with ctx.step("retrieve") as step, s3.failing(f"{self.uri}: restore_object"):
                started = s3.start_retrieval(self.bucket, self.key, plan.version, self._tuning)
                when = iso(dt.datetime.now(dt.UTC))
                step.done(Status.CHANGED if started else Status.OK,
                          f"pending, retrieval started at {when} (tier {self._tuning.tier}); run again to "
                          "copy it once it is readable" if started else
                          "pending: a retrieval is already in progress", tier=self._tuning.tier)
            return
        with ctx.step("restore") as step, s3.failing(f"{self.uri}: restore"):
            if plan.action == "unmark":
                for marker in plan.markers:
                    s3.client.delete_object(Bucket=self.bucket, Key=self.key, VersionId=marker.version_id)
                step.done(Status.CHANGED, f"removed {len(plan.markers)} delete marker(s)",
                          diff="\n".join(f"- {m.describe()}" for m in plan.markers))
            else:
                new = s3.copy(self.bucket, self.key, plan.version, self.bucket, self.key, self._tuning,
                              chosen, part_workers=self._tuning.workers)
                step.done(Status.CHANGED, f"copied {plan.version.describe()} over the key as the new "
                                          f"current version {new}", new_version=new,
                          diff=f"{self.uri}: now holds {plan.version.describe()}")
        with ctx.step("verify") as step, s3.failing(f"{self.uri}: verify"):
            step.done(*self._verify(s3, plan.version, chosen))

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


class RestorePrefix(_S3Remediation):
    """Bring every key under s3://BUCKET/PREFIX back to its state at a time (in place or elsewhere)."""

    task: ClassVar[str] = "restore-s3-prefix"

    def __init__(self, bucket: str | None, prefix: str | None, at: str | None, *,
                 to_bucket: str | None = None, to_prefix: str | None = None, delete_new: bool = False,
                 tuning: Tuning | None = None, now: dt.datetime | None = None,
                 progress: TextIO | None = None,
                 connect: Callable[[Mapping[str, Any], Tuning], S3] = S3) -> None:
        super().__init__(bucket, tuning or Tuning(), connect)
        if prefix is None:
            raise UsageError("--prefix is required (give --prefix '' for the whole bucket)")
        if not at:
            raise UsageError("--at is required: the time to restore the prefix to")
        self.prefix = prefix
        self.at = at
        self.to_bucket = validate.check_bucket(to_bucket, "--to-bucket") if to_bucket else None
        self.to_prefix = to_prefix
        self.delete_new = delete_new
        self._when = parse_at(at, now or dt.datetime.now(dt.UTC))
        self._progress = progress
        dest_bucket, dest_prefix = self.destination
        if dest_bucket == self.bucket and dest_prefix != prefix and (
            dest_prefix.startswith(prefix) or prefix.startswith(dest_prefix)
        ):
            raise UsageError(f"--to-prefix {dest_prefix!r} overlaps --prefix {prefix!r} in the same bucket: "
                             "the restore would write into what it reads")

    @property
    def destination(self) -> tuple[str, str]:
        return self.to_bucket or self.bucket, self.prefix if self.to_prefix is None else self.to_prefix

    @property
    def in_place(self) -> bool:
        return self.destination == (self.bucket, self.prefix)

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.to_bucket and self.to_bucket != self.bucket and self.answered(host):
            s3 = self._clients[host.name]
            with s3.failing(f"--to-bucket s3://{self.to_bucket}", UsageError):
                s3.versioning(self.to_bucket)

    def run(self, ctx: HostContext) -> None:
        s3 = self.s3(ctx)
        dest_bucket, dest_prefix = self.destination
        source = f"s3://{self.bucket}/{self.prefix}"
        self.require_versioning(ctx, s3, dest_bucket)
        with ctx.step("facts") as step, s3.failing(f"{source}: facts"):
            plans, listing = self._plan(s3)
            step.done(Status.OK, f"{len(plans)} key(s) under {source} in {listing.pages} listing page(s)",
                      keys=len(plans), pages=listing.pages, marker_only_pages=listing.marker_only_pages)
        counts = count_actions(plans)
        work = [p for p in plans if p.action in ("restore", "retrieve", "hide")]
        new = [p.dest_key for p in plans if p.action == "new"]
        pending = [p for p in plans if p.action == "wait"]
        listing_text = plan_lines(plans)
        if not work:
            ctx.record("decide", Status.OK, self._nothing_message(counts, new),
                       diff=listing_text if pending or new else "", **counts)
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, "would " + self._summary(counts, new), diff=listing_text,
                       **counts)
            return
        ctx.record("decide", Status.OK, self._summary(counts, new), diff=listing_text, **counts)
        with ctx.step("restore") as step:
            applied = self._apply(s3, work)
            done, failures, started = applied.done, applied.failures, applied.started
            if applied.silence:
                step.done(Status.FAILED, self._stopped(applied), diff=applied.listing(),
                          restored=done["restore"], hidden=done["hide"], retrievals=done["retrieve"],
                          failed=len(failures), restored_keys=applied.restored_keys,
                          unanswered_keys=applied.unanswered_keys, not_sent=len(applied.not_sent))
                return  # verifying would ask the silent endpoint again: the next run re-plans
            step.done(Status.FAILED if failures else Status.CHANGED,
                      self._applied(done, failures, started, counts, new),
                      diff="\n".join(f"failed    {key}  {why}" for key, why in failures),
                      restored=done["restore"], hidden=done["hide"], retrievals=done["retrieve"],
                      failed=len(failures))
        with ctx.step("verify") as step, s3.failing(f"{source}: verify"):
            after, _ = self._plan(s3)
            retrieving = {p.dest_key for p in work if p.action == "retrieve"}  # copied by a later run
            left = [p for p in after if p.action in ("restore", "hide") and p.dest_key not in retrieving]
            if left:
                step.done(Status.FAILED, f"{len(left)} key(s) still not at their state of {iso(self._when)}: "
                          + ", ".join(p.dest_key for p in left[:5]), diff=plan_lines(left))
            else:
                waiting = sum(p.action in ("retrieve", "wait") or p.dest_key in retrieving for p in after)
                pending_text = f" except {waiting} pending retrieval(s)" if waiting else ""
                step.done(Status.OK, f"every key under s3://{dest_bucket}/{dest_prefix} is at its state of "
                          f"{iso(self._when)}{pending_text}")

    def _plan(self, s3: S3) -> tuple[list[KeyPlan], Listing]:
        dest_bucket, dest_prefix = self.destination
        listing = s3.list_versions(self.bucket, self.prefix, self._tuning.page_size)
        current: dict[str, Content] = {}
        current_ids: dict[str, str] = {}
        if self.in_place:
            for key, entries in listing.by_key.items():
                latest = history(entries)[0]
                if not latest.is_delete_marker:
                    current[key], current_ids[key] = latest.content, latest.version_id
        else:
            current = s3.list_current(dest_bucket, dest_prefix, self._tuning.page_size)
        plans = []
        seen = set()
        for key, entries in sorted(listing.by_key.items()):
            target = dest_key(key, self.prefix, None if self.in_place else dest_prefix)
            seen.add(target)
            plans.append(plan_key(key, target, history(entries), self._when, current.get(target),
                                  current_ids.get(target), self.delete_new, self.in_place))
        for target in sorted(set(current) - seen):  # only in the destination: new there
            plans.append(plan_key(target, target, [], self._when, current[target], None, self.delete_new,
                                  in_place=False))

        def archive_head(plan: KeyPlan) -> KeyPlan:
            assert plan.version is not None
            head = s3.head(self.bucket, plan.key, plan.version.version_id)
            return plan if head is None else refine_archived(plan, head)

        archived = [i for i, p in enumerate(plans)
                    if p.action == "restore" and p.version and p.version.storage_class in ARCHIVED]
        with ThreadPoolExecutor(max_workers=self._tuning.workers, thread_name_prefix="s3head") as pool:
            for index, refined in zip(archived, pool.map(lambda i: archive_head(plans[i]), archived),
                                      strict=True):
                plans[index] = refined
        return plans, listing

    def _apply(self, s3: S3, work: list[KeyPlan]) -> Applied:
        """Every planned change in the copy pool. The first request the endpoint does not answer (or
        cannot be sent) stops the run: queued keys are not sent, those in flight end within their
        own bound, and the result lists what was restored before that."""
        dest_bucket, _ = self.destination
        applied = Applied(started=iso(dt.datetime.now(dt.UTC)))
        done, failures = applied.done, applied.failures
        silent = threading.Event()

        def one(plan: KeyPlan) -> str:
            if silent.is_set() or interrupt.requested():
                raise _NotSent
            try:
                if plan.action == "hide":
                    s3.client.delete_object(Bucket=dest_bucket, Key=plan.dest_key)
                elif plan.action == "retrieve":
                    assert plan.version is not None
                    s3.start_retrieval(self.bucket, plan.key, plan.version, self._tuning)
                else:
                    assert plan.version is not None
                    s3.copy(self.bucket, plan.key, plan.version, dest_bucket, plan.dest_key, self._tuning)
            except Exception as exc:
                if isinstance(exc, S3Unanswered) or is_endpoint_down(exc):
                    silent.set()  # here, before this worker takes the next key
                raise
            return plan.action

        progress = Progress(len(work), self.task, self._progress)
        try:
            with ThreadPoolExecutor(max_workers=self._tuning.workers, thread_name_prefix="s3copy") as pool:
                futures = {pool.submit(one, plan): plan for plan in work}
                for future in as_completed(futures):
                    plan = futures[future]
                    stopping = interrupt.requested()
                    if stopping and not applied.silence:  # the copies in flight finish; no new one starts
                        applied.silence = f"interrupted by {stopping}"
                        for queued in futures:
                            queued.cancel()
                    try:
                        action = future.result()
                    except (CancelledError, _NotSent):
                        applied.not_sent.append(plan.dest_key)
                        continue
                    except (s3client.ClientError, s3client.BotoCoreError, HostError) as exc:
                        why = s3.explain(exc) if not isinstance(exc, HostError) else str(exc)
                        if isinstance(exc, S3Unanswered) or is_endpoint_down(exc):
                            applied.unanswered_keys.append(plan.dest_key)
                            if not applied.silence:
                                applied.silence = why
                                for queued in futures:
                                    queued.cancel()
                        else:
                            failures.append((plan.dest_key, why))
                    else:
                        done[action] += 1
                        if action == "restore":
                            applied.restored_keys.append(plan.dest_key)
                    progress.tick()
        finally:
            progress.close()
        failures.sort()
        applied.restored_keys.sort()
        applied.unanswered_keys.sort()
        applied.not_sent.sort()
        return applied

    def _stopped(self, applied: Applied) -> str:
        """The result line when the endpoint went silent mid-run: why, and how far it got."""
        restored = applied.restored_keys
        shown = ", ".join(restored[:5]) + (f" and {len(restored) - 5} more" if len(restored) > 5 else "")
        parts = [f"stopped: {applied.silence}",
                 f"restored {len(restored)} key(s) before that" + (f": {shown}" if restored else "")]
        if applied.unanswered_keys:
            parts.append(f"{len(applied.unanswered_keys)} request(s) had no answer (the copy may or may not "
                         "have happened; the next run checks)")
        if applied.not_sent:
            parts.append(f"{len(applied.not_sent)} key(s) not sent")
        if applied.failures:
            parts.append(f"{len(applied.failures)} failed: "
                         + "; ".join(f"{k}: {why}" for k, why in applied.failures[:3]))
        return "; ".join(parts) + "; run again to finish"

    def _summary(self, counts: Mapping[str, int], new: Sequence[str]) -> str:
        parts = [f"restore {counts['restore']} key(s)"] if counts["restore"] else []
        if counts["retrieve"]:
            parts.append(f"start {counts['retrieve']} archive retrieval(s)")
        if counts["hide"]:
            parts.append(f"hide {counts['hide']} new key(s) behind delete markers")
        return ", ".join(parts) + self._tail(counts, new)

    def _applied(self, done: Mapping[str, int], failures: Sequence[tuple[str, str]], started: str,
                 counts: Mapping[str, int], new: Sequence[str]) -> str:
        parts = [f"restored {done['restore']} key(s)"]
        if done["retrieve"]:
            parts.append(f"{done['retrieve']} pending, retrieval started at {started} "
                         f"(tier {self._tuning.tier}); run again to copy them once readable")
        if done["hide"]:
            parts.append(f"hid {done['hide']} new key(s) behind delete markers")
        if failures:
            parts.append(f"{len(failures)} failed: " + "; ".join(f"{k}: {why}" for k, why in failures[:3]))
        return ", ".join(parts) + self._tail(counts, new)

    def _tail(self, counts: Mapping[str, int], new: Sequence[str]) -> str:
        tail = f"; {counts['unchanged']} unchanged" if counts["unchanged"] else ""
        if counts["wait"]:
            tail += f"; {counts['wait']} pending retrieval(s) still in progress"
        if new:
            shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
            tail += f"; {len(new)} key(s) created after {iso(self._when)} left alone: {shown}"
        return tail

    def _nothing_message(self, counts: Mapping[str, int], new: Sequence[str]) -> str:
        dest_bucket, dest_prefix = self.destination
        return (f"nothing to do: s3://{dest_bucket}/{dest_prefix} is at its state of {iso(self._when)}"
                + self._tail(counts, new))


class _NotSent(Exception):
    """A key left unsent because the endpoint had stopped answering."""


@dataclass
class Applied:
    """What a prefix restore's apply did: counts, failures and, when the endpoint went silent,
    which keys were restored before, which had no answer and which were never sent."""

    started: str
    done: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("restore", "retrieve", "hide"), 0))
    failures: list[tuple[str, str]] = field(default_factory=list)
    silence: str = ""  # why the run stopped sending; "" when the endpoint answered throughout
    restored_keys: list[str] = field(default_factory=list)
    unanswered_keys: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)

    def listing(self) -> str:
        return "\n".join([*(f"restored  {k}" for k in self.restored_keys),
                          *(f"no answer {k}" for k in self.unanswered_keys),
                          *(f"not sent  {k}" for k in self.not_sent),
                          *(f"failed    {k}  {why}" for k, why in self.failures)])  # fmt: skip


class BucketCheck(_S3Remediation):
    """Report whether a bucket keeps what a restore needs; changes nothing."""

    task: ClassVar[str] = "s3-bucket-check"
    changes: ClassVar[bool] = False

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
