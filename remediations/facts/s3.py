"""S3 versions as data: the entries of a version listing, HEAD of a version, the timeline of a key.

Pure: parsers of what boto3 returns (list_object_versions pages, head_object) and the functions of a
key's history (which entry was current at a time, whether two objects hold the same bytes, the part
layout of a copy). Table-driven tests in tests/test_s3_restore.py.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.units import parse_seconds

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



AT_HINT = ("give an ISO 8601 time with a timezone (2024-05-01T09:30:00Z, 2024-05-01T12:30+03:00) or a "
           "relative time such as '2h ago'")


def parse_at(text: str, now: dt.datetime) -> dt.datetime:
    """`--at`: ISO 8601 with a timezone, or relative ("2h ago", "1d 6h ago"); returned in UTC."""
    raw = text.strip()
    if raw.lower().endswith("ago"):  # a duration in the one grammar (core/units.py), then "ago"
        seconds = parse_seconds(raw[: -len("ago")], "--at", AT_HINT)
        return (now - dt.timedelta(seconds=seconds)).astimezone(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"--at {validate.shown(text)}: {AT_HINT}") from None
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass
class Listing:
    """A version listing: the entries by key (a streamed listing hands complete keys on and drops
    them, see `complete_keys`), and counts of everything it has seen."""

    by_key: dict[str, list[Version]] = field(default_factory=dict)
    pages: int = 0
    marker_only_pages: int = 0
    entries: int = 0  # versions and delete markers seen
    keys: int = 0  # distinct keys seen



    def add_page(self, page: Mapping[str, Any], only_key: str | None = None) -> bool:
        """Take one list_object_versions page; True when the listing went past `only_key`.

        A page may hold only delete markers (no "Versions" element at all): nothing here assumes
        either list is present.
        """
        versions = page.get("Versions") or []
        markers = page.get("DeleteMarkers") or []
        self.pages += 1
        if markers and not versions:
            self.marker_only_pages += 1
        past_key = False
        for entry, is_marker in [*((v, False) for v in versions), *((m, True) for m in markers)]:
            key = str(entry["Key"])
            if only_key is not None and key != only_key:
                past_key = past_key or key > only_key
                continue
            self.entries += 1
            if key not in self.by_key:
                self.keys += 1
                self.by_key[key] = []
            self.by_key[key].append(Version(
                key, str(entry.get("VersionId") or "null"), entry["LastModified"],
                bool(entry.get("IsLatest")), is_marker, str(entry.get("ETag", "")),
                int(entry.get("Size", 0)), str(entry.get("StorageClass") or "STANDARD"),
            ))  # fmt: skip
        return past_key


def complete_keys(listing: Listing, more: bool) -> list[tuple[str, list[Version]]]:
    """Take the keys whose entries are all listed out of `listing`, in key order: every key but the
    last one seen while pages follow (S3 lists keys in order; one key's entries may go on in the
    next page), all of them at the end."""
    keys = sorted(listing.by_key)
    done = keys[:-1] if more else keys
    return [(key, listing.by_key.pop(key)) for key in done]


def next_page(request: dict[str, Any], page: Mapping[str, Any]) -> bool:
    """Move a list_object_versions request to its next page (KeyMarker/VersionIdMarker); False at the end."""
    if not page.get("IsTruncated"):
        return False
    request["KeyMarker"] = page["NextKeyMarker"]
    if page.get("NextVersionIdMarker"):
        request["VersionIdMarker"] = page["NextVersionIdMarker"]
    else:
        request.pop("VersionIdMarker", None)
    return True


def parse_head(found: Mapping[str, Any], version_id: str | None) -> Head:
    """A Head from head_object's answer (asked with ChecksumMode=ENABLED)."""
    checksums = {k.removeprefix("Checksum"): str(v) for k, v in found.items()
                 if k.startswith("Checksum") and k != "ChecksumType" and v}  # fmt: skip
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
