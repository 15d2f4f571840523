"""What every S3 client of the package shares: bounded waits, a word while waiting, one clear failure.

botocore's defaults let a hung endpoint (one that accepts the connection and never answers) hold a
task for minutes in silence: a 60 s read timeout per attempt, more with the restore's own 300 s,
times several attempts. Here each request is bounded by the inventory vars

    s3_connect_timeout (5 s)   s3_read_timeout (30 s)   s3_max_attempts (3, the first one included)

with botocore's standard retry mode (exponential backoff with jitter, at most 2^(i-1) s before
attempt i+1), so one request gives up within `Bounds.per_request` seconds:
attempts * (connect + read) + the backoff, 108 s with the defaults. While a request has been in
flight longer than `s3_progress_interval` (10 s), a line on stderr says what it waits for, again at
that interval. When the endpoint does not answer, the failure is one line: "S3 endpoint URL did not
answer within N s (what; attempts and timeouts); nothing more was sent".

`Client` is the one S3 client of the package (restore-s3-*, s3-bucket-check, health, backup-check,
restore-test, wal-cleanup): the session from `aws_profile` and `s3_region`, the endpoint from
`endpoint_url`, these bounds, and the credential values never to print. botocore and boto3 are
imported when the first client is made (`load_botocore`), not when the task list is built.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from remediations.core.errors import HostError, UsageError

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_REPORT_EVERY = 10.0
MAX_BACKOFF = 20.0  # botocore's standard mode never sleeps longer between attempts
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class _NotLoaded(Exception):
    """Stands for botocore's exceptions until a `Client` is made: nothing can raise them before."""


# botocore is imported when the first S3 client is made (`load_botocore`), not at import.
BotoCoreError: Any = _NotLoaded
ClientError: Any = _NotLoaded
EndpointConnectionError: Any = _NotLoaded
NoCredentialsError: Any = _NotLoaded
ProfileNotFound: Any = _NotLoaded


def load_botocore() -> None:
    """Bind botocore's exceptions in this module (`s3client.ClientError` and friends)."""
    global BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, ProfileNotFound
    from botocore import exceptions

    BotoCoreError, ClientError = exceptions.BotoCoreError, exceptions.ClientError
    EndpointConnectionError = exceptions.EndpointConnectionError
    NoCredentialsError, ProfileNotFound = exceptions.NoCredentialsError, exceptions.ProfileNotFound


# The timestamps S3 puts in its XML (every listing entry, a copy's result): ISO 8601 in UTC.
_ISO_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)")


def parse_timestamp(value: Any) -> dt.datetime:
    """A timestamp of an S3 answer, as botocore's parsers hand it over (`set_parser_defaults`).

    The ISO 8601 ones go to `datetime.fromisoformat` (aware, the same instant botocore's default
    gives); anything else (an HTTP date header such as HEAD's Last-Modified, epoch seconds) to
    botocore's own parser. Its default is dateutil's general parser, a fifth of the client's CPU
    per CopyObject and most of a listing page's parse.
    """
    if isinstance(value, str) and _ISO_TIMESTAMP.fullmatch(value):
        return dt.datetime.fromisoformat(value)
    from botocore.utils import parse_timestamp as general

    return general(value)  # type: ignore[no-any-return]


def embedded_error(status_code: int, body: bytes) -> bool:
    """Whether a 200 answer of S3 holds an error (its root element is Error) or is not well-formed
    XML (a cut answer): botocore's `_looks_like_special_case_error`, which builds the whole
    ElementTree of every 200 body only to read its root's tag, a second full parse of each listing
    page. Here expat checks the body without building anything and stops looking at names after
    the root's (names with a namespace do not compare equal to Error, as in botocore's)."""
    if status_code != 200 or not body:
        return False
    from xml.parsers import expat

    parser = expat.ParserCreate("utf-8", " ")
    root: list[str] = []

    def first(name: str, _attributes: Any) -> None:
        root.append(name)
        parser.StartElementHandler = None

    parser.StartElementHandler = first
    try:
        parser.Parse(body, True)
    except expat.ExpatError:
        return True
    return root == ["Error"]


def _handle_200_error(operation_model: Any, response_dict: Any, **_: Any) -> None:
    """botocore's `before-parse.s3.*` handler of that name, with `embedded_error`: a 200 whose
    body is an error becomes a 500 (retried as one)."""
    from botocore import handlers

    if handlers._should_handle_200_error(operation_model, response_dict) and embedded_error(
        response_dict["status_code"], response_dict["body"]
    ):
        response_dict["status_code"] = 500


def cheaper_200_check(client: Any) -> None:
    """Swap botocore's check of S3's 200 answers for `_handle_200_error` on this client; a botocore
    without that handler (or its helper) keeps its own."""
    from botocore import handlers

    theirs = getattr(handlers, "_handle_200_error", None)
    if theirs is None or not hasattr(handlers, "_should_handle_200_error"):
        return
    client.meta.events.unregister("before-parse.s3.*", theirs)
    client.meta.events.register_first("before-parse.s3.*", _handle_200_error)


def endpoint_url(host_vars: Mapping[str, Any]) -> str | None:
    """The S3 endpoint: the standard environment (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL) wins
    over the `s3_endpoint_url` var; None is AWS itself."""
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    value = host_vars.get("s3_endpoint_url")
    return str(value) if value else None


def _var(host_vars: Mapping[str, Any], name: str) -> str | None:
    return str(host_vars[name]) if host_vars.get(name) else None


@dataclass(frozen=True)
class Bounds:
    """How long one S3 request may take, and how often a long one is reported."""

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    report_every: float = DEFAULT_REPORT_EVERY

    @classmethod
    def from_vars(cls, host_vars: Mapping[str, Any]) -> Bounds:
        """From the inventory vars; a value that is not a positive number is bad input."""

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = host_vars.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = float("nan")
            if not low <= value <= high:
                raise UsageError(f"{name}: {raw!r} is not a number of seconds from {low:g} to {high:g}")
            return value

        attempts = host_vars.get("s3_max_attempts")
        whole = {str(n) for n in range(1, 11)}
        given = attempts is not None and attempts != ""
        if given and (isinstance(attempts, bool) or str(attempts).strip() not in whole):
            raise UsageError(f"s3_max_attempts: {attempts!r} is not a whole number from 1 to 10")
        return cls(
            connect_timeout=number("s3_connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.1, 600),
            read_timeout=number("s3_read_timeout", DEFAULT_READ_TIMEOUT, 0.1, 3600),
            max_attempts=int(attempts) if attempts not in (None, "") else DEFAULT_MAX_ATTEMPTS,
            report_every=number("s3_progress_interval", DEFAULT_REPORT_EVERY, 0.1, 3600),
        )

    @property
    def backoff(self) -> float:
        """The longest total sleep between attempts in botocore's standard mode."""
        return sum(min(2.0**i, MAX_BACKOFF) for i in range(self.max_attempts - 1))

    @property
    def per_request(self) -> float:
        """Seconds after which one request has surely given up on an endpoint that does not answer."""
        return self.max_attempts * (self.connect_timeout + self.read_timeout) + self.backoff

    def describe(self) -> str:
        return (f"{self.max_attempts} attempt(s), each {self.connect_timeout:g} s to connect and "
                f"{self.read_timeout:g} s to answer")  # fmt: skip

    def config(self, pool: int = 10) -> Any:
        """The botocore Config: these bounds, standard retries, a pool of `pool` connections."""
        from botocore.config import Config

        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # total_max_attempts counts the first attempt too; botocore's "max_attempts" would not
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            max_pool_connections=max(pool, 10),
        )


def is_unanswered(exc: BaseException) -> bool:
    """The endpoint took the connection (or not) and never answered: a timeout or a dropped reply."""
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError

    return isinstance(exc, ReadTimeoutError | ConnectTimeoutError | ConnectionClosedError)


def is_endpoint_down(exc: BaseException) -> bool:
    """Any failure to talk to the endpoint at all (refused, unreachable, timed out): more requests
    would only wait as long again."""
    from botocore.exceptions import ConnectionError, HTTPClientError

    return isinstance(exc, ConnectionError | HTTPClientError)


class S3Unanswered(HostError):
    """The S3 endpoint did not answer within the bounds; no further request was sent."""


@dataclass
class _Request:
    what: str
    started: float


class Waits:
    """The requests a client has in flight; a reporter thread, alive only while some are, writes
    "LABEL: waiting for S3 at URL (WHAT, N s of at most M s)" for one older than `report_every`."""

    def __init__(
        self, label: str, endpoint: str | None, bounds: Bounds, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.endpoint = endpoint or "AWS"
        self.bounds = bounds
        self.stream = stream
        self.reported = 0  # lines written, for tests and the curious
        self._flying: dict[int, _Request] = {}
        self._lock = threading.Lock()
        self._reporter: threading.Thread | None = None
        self._local = threading.local()
        self._last_failed: tuple[str, float] | None = None

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build.s3", self._name)
        events.register("before-call.s3", self._begin)
        events.register("after-call.s3", self._end)
        events.register("after-call-error.s3", self._failed)

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Name the requests this thread makes in the block (e.g. "ListObjectVersions page 3")."""
        before = getattr(self._local, "what", None)
        self._local.what = what
        try:
            yield
        finally:
            self._local.what = before

    # botocore event handlers ------------------------------------------------------------------

    def _name(self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        named = getattr(self._local, "what", None)
        if named:
            context["remediations_what"] = named
            return
        target = params.get("Key") or params.get("Bucket") or ""
        context["remediations_what"] = f"{model.name} of {target}" if target else str(model.name)

    def _begin(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        request = _Request(str(context.get("remediations_what") or model.name), time.monotonic())
        with self._lock:
            self._flying[id(context)] = request
            if self._reporter is None:
                self._reporter = threading.Thread(target=self._report, daemon=True, name="s3-waits")
                self._reporter.start()

    def _end(self, context: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self._flying.pop(id(context), None)

    def _failed(self, context: dict[str, Any], exception: BaseException, **_: Any) -> None:
        with self._lock:
            request = self._flying.pop(id(context), None)
        if request is not None:
            failed = (request.what, time.monotonic() - request.started)
            self._local.last_failed = failed
            self._last_failed = failed  # for a caller that got it from a worker thread

    # the reporter -----------------------------------------------------------------------------

    def _report(self) -> None:
        last = 0.0
        tick = min(0.5, self.bounds.report_every / 2)
        while True:
            time.sleep(tick)
            with self._lock:
                if not self._flying:
                    self._reporter = None
                    return
                oldest = min(self._flying.values(), key=lambda r: r.started)
                others = len(self._flying) - 1
            now = time.monotonic()
            age = now - oldest.started
            if age >= self.bounds.report_every and now - last >= self.bounds.report_every:
                last = now
                more = f"; {others} more request(s) in flight" if others else ""
                stream = self.stream if self.stream is not None else sys.stderr
                stream.write(f"{self.label}: waiting for S3 at {self.endpoint} ({oldest.what}, {age:.0f} s "
                             f"of at most {self.bounds.per_request:.0f} s{more})\n")  # fmt: skip
                stream.flush()
                self.reported += 1

    # the failure ------------------------------------------------------------------------------

    def unanswered(self) -> str:
        """The one line for a request this thread made that the endpoint never answered."""
        failed = getattr(self._local, "last_failed", None) or self._last_failed
        what, took = failed or ("a request", self.bounds.per_request)
        return (f"S3 endpoint {self.endpoint} did not answer within {took:.0f} s ({what}: "
                f"{self.bounds.describe()}); nothing more was sent")  # fmt: skip


class Client:
    """The boto3 S3 client for one host's vars, bounded, plus the credential values never to print.

    strict      a missing profile or no credentials at all is bad input (UsageError) here; otherwise
                the first request fails with botocore's error, as the caller's own step
    pool        the HTTP connection pool (at least 10): as large as the requests in flight at once
    client      a client made elsewhere (tests use botocore's Stubber on one)
    """

    def __init__(self, host_vars: Mapping[str, Any], label: str = "s3", *, pool: int = 10,
                 strict: bool = True, client: Any = None) -> None:  # fmt: skip
        load_botocore()
        self.endpoint = endpoint_url(host_vars)
        self.profile = _var(host_vars, "aws_profile")
        self.bounds = Bounds.from_vars(host_vars)
        self.waits = Waits(label, self.endpoint, self.bounds)
        self.secrets: list[str] = []
        self.session: Any = None  # boto3's, when this client made its own (presigning reuses it)
        self.client: Any = client
        if client is None:
            self.client = self._connect(host_vars, pool, strict)
        self.waits.attach(self.client)

    def _connect(self, host_vars: Mapping[str, Any], pool: int, strict: bool) -> Any:
        import boto3
        import botocore.session

        core = botocore.session.Session()  # its parsers read timestamps with `parse_timestamp`
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        try:
            region = _var(host_vars, "s3_region")
            session = boto3.session.Session(botocore_session=core, profile_name=self.profile,
                                            region_name=region)  # fmt: skip
            self.session = session
        except ProfileNotFound as exc:
            if not strict:
                raise
            raise UsageError(f"AWS profile: {exc}") from None
        credentials = session.get_credentials()
        if credentials is None and strict:
            raise UsageError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE (or the inventory var aws_profile)"
            )
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            self.secrets = [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]
        # Standard retries cover exactly the transient failures (503 SlowDown and other throttling,
        # 500/502/503/504, RequestTimeout, connection errors and timeouts) with backoff and jitter,
        # for every call: the listing pages and each part of a multipart copy included. Repeating one
        # S3 request is safe: a repeated copy only adds an identical version.
        region = session.region_name or "us-east-1"
        client = session.client("s3", endpoint_url=self.endpoint, region_name=region,
                                config=self.bounds.config(pool=pool))  # fmt: skip
        cheaper_200_check(client)
        return client

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "*****")
        return text


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    modified: dt.datetime
    etag: str = ""  # without its quotes; the MD5 in hex for a single-part upload without SSE-KMS/SSE-C
    checksums: tuple[str, ...] = ()  # the listing's ChecksumAlgorithm (e.g. CRC32): S3 keeps those
    checksum_type: str = ""  # the listing's ChecksumType (FULL_OBJECT or COMPOSITE), when it says


def s3_endpoint(host_vars: Mapping[str, Any]) -> str | None:
    """The endpoint every S3 client of the package uses (`endpoint_url`)."""
    return endpoint_url(host_vars)


STREAM_CHUNK = 1024 * 1024


@dataclass
class Received:
    """What `S3Store.stream` got so far, and what it checked."""

    expected: int = -1  # the GET's Content-Length
    received: int = 0
    etag: str = ""  # the MD5 the content must have ("" when the ETag is not one)
    md5_checked: bool = False


class S3Store(Client):
    """The package's S3 client (`Client`) for one host's settings; failures become one
    readable HostError line."""

    def __init__(self, host_vars: Mapping[str, Any], label: str = "s3") -> None:
        super().__init__(host_vars, label, strict=False)

    def where(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def explain(self, exc: Exception) -> str:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            text = {
                "NoSuchBucket": "the bucket does not exist",
                "NoSuchKey": "no such object",
                "404": "no such object",
            }.get(code) or f"{code}: {error.get('Message') or ''}".rstrip(": ")
        elif is_unanswered(exc):
            text = self.waits.unanswered()
        elif isinstance(exc, EndpointConnectionError):
            text = f"cannot reach the S3 endpoint {self.endpoint or 'AWS'}"
        elif isinstance(exc, NoCredentialsError):
            text = "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or aws_profile)"
        else:
            text = f"{type(exc).__name__}: {exc}"
        for secret in self.secrets:
            text = text.replace(secret, "*****")
        return text

    @contextmanager
    def failing(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise HostError(f"{what}: {self.explain(exc)}") from None

    def list(self, bucket: str, prefix: str) -> list[S3Object]:
        """Every object under `prefix` (paginated)."""
        found: list[S3Object] = []
        with self.failing(f"listing {self.where(bucket, prefix)}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents") or []:
                    found.append(
                        S3Object(
                            str(item["Key"]),
                            int(item["Size"]),
                            item["LastModified"],
                            str(item.get("ETag") or "").strip('"'),
                            tuple(str(a) for a in item.get("ChecksumAlgorithm") or ()),
                            str(item.get("ChecksumType") or ""),
                        )
                    )
        return found

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        with self.failing(f"reading the metadata of s3://{bucket}/{key}"):
            return dict(self.client.head_object(Bucket=bucket, Key=key))

    def md5(self, bucket: str, key: str) -> str:
        """The MD5 (hex) of an object's content, read back in chunks (never held whole in memory)."""
        digest = hashlib.md5(usedforsecurity=False)
        with self.failing(f"reading back s3://{bucket}/{key}"):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(1024 * 1024), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def download(self, bucket: str, key: str, path: str) -> None:
        with self.failing(f"downloading s3://{bucket}/{key}"):
            self.client.download_file(bucket, key, path)

    def stream(self, bucket: str, key: str, got: Received, chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
        """The object's content in chunks of at most `chunk` bytes, read as they are consumed (one
        GET; never more than a chunk held here), checked at the end: the byte count against the
        GET's Content-Length and, for a single-part object without SSE-KMS/SSE-C (its ETag is the
        content's MD5), the MD5 against the ETag. A cut or short stream raises HostError in one line
        (after the chunks already given out: the consumer must treat what it got as void)."""
        what = f"streaming s3://{bucket}/{key}"
        digest = hashlib.md5(usedforsecurity=False)
        with self.failing(what):
            reply = self.client.get_object(Bucket=bucket, Key=key)
            got.expected = int(reply.get("ContentLength") or 0)
            etag = str(reply.get("ETag") or "").strip('"')
            plain = not reply.get("SSECustomerAlgorithm") and reply.get("ServerSideEncryption") != "aws:kms"
            got.etag = etag if plain and len(etag) == 32 and "-" not in etag else ""
            body = reply["Body"]
            try:
                for data in body.iter_chunks(chunk):
                    got.received += len(data)
                    if got.etag:
                        digest.update(data)
                    yield data
            except (OSError, BotoCoreError) as exc:
                raise HostError(
                    f"{what}: the stream was cut after {got.received} of {got.expected} bytes "
                    f"({self.explain(exc)})"
                ) from None
            finally:
                body.close()
        if got.received != got.expected:
            raise HostError(f"{what}: got {got.received} of {got.expected} bytes: the stream was cut")
        if got.etag and digest.hexdigest() != got.etag:
            raise HostError(f"{what}: the content's MD5 {digest.hexdigest()} is not the ETag {got.etag}")
        got.md5_checked = bool(got.etag)
