"""The client side of a listing, against a loopback HTTP server answering S3's XML (no mock of the
client: botocore parses every answer): timestamps read by `s3client.parse_timestamp`, the pages of
a listing asked for one ahead of their reader (`s3versions.read_ahead`), and nothing asked beyond."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from remediations.actions import s3client
from remediations.actions.s3versions import S3, Tuning
from remediations.facts.s3 import Listing

KEYS = 9
PAGE = 3  # MaxKeys: three pages of versions, three of current objects
ANSWER_DELAY = 0.3  # the server's time to answer a listing page


def versions_page(start: int) -> bytes:
    entries = "".join(
        f"<Version><Key>data/{i:03}</Key><VersionId>v{i}</VersionId><IsLatest>true</IsLatest>"
        f"<LastModified>2026-01-02T03:04:{i:02}.250Z</LastModified><ETag>&quot;{i:032x}&quot;</ETag>"
        "<Size>5</Size><StorageClass>STANDARD</StorageClass></Version>"
        for i in range(start, min(start + PAGE, KEYS))
    )
    more = start + PAGE < KEYS
    marker = f"<NextKeyMarker>data/{start + PAGE - 1:03}</NextKeyMarker>" if more else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/'
            f'2006-03-01/"><Name>b</Name><Prefix>data/</Prefix><MaxKeys>{PAGE}</MaxKeys><IsTruncated>'
            f"{str(more).lower()}</IsTruncated>{marker}{entries}</ListVersionsResult>").encode()  # fmt: skip


def current_page(start: int) -> bytes:
    entries = "".join(
        f"<Contents><Key>data/{i:03}</Key><LastModified>2026-01-02T03:04:05Z</LastModified>"
        f"<ETag>&quot;{i:032x}&quot;</ETag><Size>5</Size></Contents>"
        for i in range(start, min(start + PAGE, KEYS))
    )
    more = start + PAGE < KEYS
    token = f"<NextContinuationToken>{start + PAGE}</NextContinuationToken>" if more else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            f"2006-03-01/\"><Name>b</Name><Prefix>data/</Prefix><MaxKeys>{PAGE}</MaxKeys><IsTruncated>"
            f"{str(more).lower()}</IsTruncated>{token}{entries}</ListBucketResult>").encode()  # fmt: skip


class _S3(BaseHTTPRequestHandler):
    """ListObjectVersions and ListObjectsV2 of KEYS keys in pages of PAGE, each answered after
    ANSWER_DELAY; HEAD of an object with an HTTP-date Last-Modified. Records each request's
    arrival (monotonic seconds) and what it asked for."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[float, str]]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.seen.append((time.monotonic(), "HeadObject"))
        self.send_response(200)
        for name, value in (("Content-Length", "5"), ("ETag", f'"{0:032x}"'),
                            ("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT")):  # fmt: skip
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        if "versions" in query:
            marker = query.get("key-marker", [""])[0]
            start = int(marker.removeprefix("data/")) + 1 if marker else 0
            what, body = f"ListObjectVersions from {start}", versions_page(start)
        else:
            start = int(query.get("continuation-token", ["0"])[0])
            what, body = f"ListObjectsV2 from {start}", current_page(start)
        self.seen.append((time.monotonic(), what))
        time.sleep(ANSWER_DELAY)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[S3, list[tuple[float, str]]]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret-value-abcdef")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    seen: list[tuple[float, str]] = []
    server = _Server(("127.0.0.1", 0), type("Handler", (_S3,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield S3({"s3_endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"}, Tuning()), seen
    finally:
        server.shutdown()
        server.server_close()


def test_listing_timestamps_are_read_by_fromisoformat_and_an_http_date_by_botocore(
    s3: tuple[S3, list[tuple[float, str]]],
) -> None:
    """botocore's default reads each timestamp with dateutil's general parser: a fifth of the
    client's CPU per CopyObject and most of a listing page's parse. The same instant, now aware UTC
    from `datetime.fromisoformat` (botocore's default gave dateutil's tzutc/tzlocal)."""
    client, _ = s3
    keys = list(client.stream_versions("b", "data/", PAGE, Listing()))
    first = keys[0][1][0].last_modified
    assert first == dt.datetime(2026, 1, 2, 3, 4, 0, 250000, tzinfo=dt.UTC)
    assert first.tzinfo is dt.UTC
    head = client.client.head_object(Bucket="b", Key="data/000")
    assert head["LastModified"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # botocore's own parser


@pytest.mark.parametrize("text", ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123Z",
                                  "2026-01-02T06:04:05+03:00", "2026-01-02T03:04:05.123456789Z",
                                  "Fri, 02 Jan 2026 03:04:05 GMT", "1767323045"])  # fmt: skip
def test_parse_timestamp_gives_the_instant_botocore_gives(text: str) -> None:
    from botocore.utils import parse_timestamp

    assert s3client.parse_timestamp(text) == parse_timestamp(text)


def test_two_listings_read_side_by_side_are_asked_for_a_page_ahead(
    s3: tuple[S3, list[tuple[float, str]]],
) -> None:
    """Before, each page was asked for when its reader wanted it, one listing after the other."""
    client, seen = s3
    versions = client.stream_versions("b", "data/", PAGE, Listing())
    current = client.iter_current("b", "data/", PAGE)
    time.sleep(ANSWER_DELAY * 2.5)  # neither has been read yet: both first pages, then both second
    asked = [what for _, what in seen]
    assert sorted(asked) == ["ListObjectVersions from 0", "ListObjectVersions from 3",
                             "ListObjectsV2 from 0", "ListObjectsV2 from 3"], asked  # fmt: skip
    assert [k for k, _ in versions] == [f"data/{i:03}" for i in range(KEYS)]
    assert [k for k, _ in current] == [f"data/{i:03}" for i in range(KEYS)]
    assert len(seen) == 6  # three pages each: nothing asked beyond the last one


def test_a_listing_left_early_stops_asking(s3: tuple[S3, list[tuple[float, str]]]) -> None:
    client, seen = s3
    current = client.iter_current("b", "data/", PAGE)
    assert next(current)[0] == "data/000"
    current.close()
    time.sleep(ANSWER_DELAY * 4)
    assert len(seen) <= 2, seen  # the page read and the one asked for ahead; never the third


def test_read_ahead_raises_where_the_producer_failed_and_stops_when_dropped() -> None:
    from remediations.actions.s3versions import read_ahead

    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(3):
            made.append(i)
            yield i
        raise RuntimeError("page 4 failed")

    ahead = read_ahead(items())
    assert [next(ahead), next(ahead), next(ahead)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="page 4 failed"):
        next(ahead)

    endless = iter(range(10**9))
    dropped = read_ahead(endless)
    time.sleep(0.2)
    del dropped  # never started: the producer stops all the same
    time.sleep(0.5)
    left = next(endless)
    time.sleep(0.3)
    assert next(endless) == left + 1 and left <= 3  # the producer took at most three, then stopped


@pytest.mark.parametrize("body", [
    versions_page(0), versions_page(0)[:-12], b"", b"not xml", b"<Error><Code>InternalError</Code></Error>",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code></Error>',
    b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>X</Code></Error>',
    b"<a:Error xmlns:a='u'/>",
    b"<CopyObjectResult><ETag>&quot;x&quot;</ETag></CopyObjectResult>", "<Été/>".encode(), b"<Error/><more/>",
])  # fmt: skip
def test_the_check_of_a_200_answer_is_botocores(body: bytes) -> None:
    """botocore built the whole ElementTree of each 200 body to read its root's tag (a listing page
    of 1000 versions: about 15 ms, against 4 for expat checking it without building anything)."""
    from botocore.handlers import _looks_like_special_case_error

    for status in (200, 500):
        assert s3client.embedded_error(status, body) == _looks_like_special_case_error(status, body)


class _ErrorIn200(BaseHTTPRequestHandler):
    """CopyObject: the first answer is a 200 whose body is an InternalError (S3 does this when a
    copy fails after it started), then a CopyObjectResult."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[int]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        self.seen.append(1)
        body = (b"<Error><Code>InternalError</Code><Message>internal error</Message></Error>"
                if len(self.seen) == 1 else
                b"<CopyObjectResult><LastModified>2026-01-02T03:04:05.000Z</LastModified>"
                b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag></CopyObjectResult>")  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_error_in_a_200_answer_is_retried(s3: tuple[S3, list[tuple[float, str]]]) -> None:
    seen: list[int] = []
    server = _Server(("127.0.0.1", 0), type("Handler", (_ErrorIn200,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = S3({"s3_endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"}, Tuning()).client
        done = client.copy_object(Bucket="b", Key="k", CopySource={"Bucket": "b", "Key": "j"})
    finally:
        server.shutdown()
        server.server_close()
    assert len(seen) == 2
    assert done["CopyObjectResult"]["LastModified"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
