"""The S3 calls of the restore tasks, on the package's one client (`actions.s3client.Client`).

`S3` reads versions (list_object_versions, paginated; HEAD of a version) and changes S3 only by
adding: a copy of an old version over the key (part by part along the source's own boundaries for
multipart objects), delete-marker removal (undelete), archive retrievals. `Tuning` holds the knobs.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from remediations.actions import s3client
from remediations.actions.s3client import S3Unanswered, is_endpoint_down, is_unanswered
from remediations.core import validate
from remediations.core.errors import HostError, UsageError
from remediations.facts.s3 import (
    COPY_OBJECT_LIMIT,
    MIN_PART,
    TIERS,
    Content,
    Head,
    Listing,
    MiB,
    Version,
    byte_ranges,
    complete_keys,
    etag_parts,
    next_page,
    parse_head,
    part_layout,
    uniform_layout,
)  # fmt: skip

S3Client = Any  # boto3's client is generated at run time; no stubs are installed
T = TypeVar("T")


@dataclass(frozen=True)
class Tuning:
    """Knobs with production defaults; tests shrink them to exercise paging and multipart copy."""

    workers: int = 64  # copies in flight (the gate halves them on SlowDown); the HTTP pool is as large
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




_END = object()  # what `read_ahead` hands over after the last item


def read_ahead(items: Iterator[T], name: str = "s3-read-ahead") -> Generator[T, None, None]:
    """The items of `items` (listing pages), produced from now on in a thread of their own, one
    item ahead of the consumer: the endpoint's time to answer the next page overlaps the parse and
    the planning of this one, and two listings read side by side overlap each other. At most two
    items wait (one handed over, one made); an exception is raised to the consumer where it
    happened; closing the returned iterator, or dropping it, stops the producer after the request
    it is making, so nothing is asked beyond what the consumer takes and one more."""
    handoff: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                handoff.put((item, error), timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            hand(_END, exc)
            return
        hand(_END)

    def consume() -> Generator[T, None, None]:
        try:
            while True:
                item, error = handoff.get()
                if item is _END:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            stop.set()

    consumer = consume()
    weakref.finalize(consumer, stop.set)  # dropped before it was started: its finally never runs
    threading.Thread(target=produce, daemon=True, name=name).start()
    return consumer


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
        return parse_head(found, version_id)

    def list_versions(self, bucket: str, prefix: str, page_size: int, *, only_key: str | None = None,
                      on_page: Callable[[Listing], None] | None = None) -> Listing:
        """Every version and delete marker under `prefix`, page by page.

        A page may hold only delete markers (no "Versions" element at all): nothing here assumes
        either list is present. With `only_key`, stops after that key's entries (keys are listed in
        order, so every later page is about other keys). `on_page` sees the listing after each page.
        """
        listing = Listing()
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        while True:
            with self.waits.doing(f"ListObjectVersions page {listing.pages + 1} of {bucket}/{prefix}"):
                page = self.client.list_object_versions(**request)
            past_key = listing.add_page(page, only_key)
            if on_page is not None:
                on_page(listing)
            if past_key or not next_page(request, page):
                return listing

    def stream_versions(self, bucket: str, prefix: str, page_size: int, listing: Listing,
                        on_page: Callable[[Listing], None] | None = None
                        ) -> Generator[tuple[str, list[Version]], None, None]:  # fmt: skip
        """Every key under `prefix` with its versions and delete markers, in key order, as the pages
        come (`read_ahead`, from this call on: the next page is asked for while this one is read):
        at most three pages of entries are held, whatever the size of the prefix. `listing` keeps
        the counts (pages, entries, keys); `on_page` sees it after each page."""
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}

        def pages() -> Iterator[Mapping[str, Any]]:
            for number in itertools.count(1):
                with self.waits.doing(f"ListObjectVersions page {number} of {bucket}/{prefix}"):
                    page = self.client.list_object_versions(**request)
                yield page
                if not next_page(request, page):
                    return

        def keys(ahead: Generator[Mapping[str, Any], None, None]
                 ) -> Generator[tuple[str, list[Version]], None, None]:  # fmt: skip
            with closing(ahead):
                for page in ahead:
                    listing.add_page(page)
                    if on_page is not None:
                        on_page(listing)
                    yield from complete_keys(listing, bool(page.get("IsTruncated")))

        return keys(read_ahead(pages(), "s3-versions"))

    def list_current(self, bucket: str, prefix: str, page_size: int,
                     on_page: Callable[[int, int], None] | None = None) -> dict[str, Content]:
        """The current objects under `prefix` (deleted keys are absent), by key."""
        return dict(self.iter_current(bucket, prefix, page_size, on_page))

    def iter_current(self, bucket: str, prefix: str, page_size: int,
                     on_page: Callable[[int, int], None] | None = None
                     ) -> Generator[tuple[str, Content], None, None]:  # fmt: skip
        """The current objects under `prefix` (deleted keys are absent) in key order, as the pages
        come (ListObjectsV2, `read_ahead` from this call on: at most three pages held); `on_page`
        sees (pages, objects) after each page."""
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}

        def pages() -> Iterator[Mapping[str, Any]]:
            for number in itertools.count(1):
                with self.waits.doing(f"ListObjectsV2 page {number} of {bucket}/{prefix}"):
                    page = self.client.list_objects_v2(**request)
                yield page
                if not page.get("IsTruncated"):
                    return
                request["ContinuationToken"] = page["NextContinuationToken"]

        def objects(ahead: Generator[Mapping[str, Any], None, None]
                    ) -> Generator[tuple[str, Content], None, None]:  # fmt: skip
            found = 0
            with closing(ahead):
                for number, page in enumerate(ahead, 1):
                    contents = page.get("Contents") or []
                    found += len(contents)
                    if on_page is not None:
                        on_page(number, found)
                    for entry in contents:
                        size, etag = int(entry.get("Size", 0)), str(entry.get("ETag", ""))
                        yield str(entry["Key"]), Content(size, etag)

        return objects(read_ahead(pages(), "s3-current"))

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
