"""S3 restore without the lab: the pure decisions (tables), archive states moto cannot produce
(botocore Stubber with recorded-shape responses), botocore's retries against a real local HTTP
server that answers 503 SlowDown. (Progress lines: tests/unit/reporting/test_progress.py.)"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from remediations.actions.s3task import controller_targets
from remediations.actions.s3versions import S3 as S3Api
from remediations.actions.s3versions import Tuning
from remediations.core import inventory
from remediations.core.engine import Engine
from remediations.core.errors import HostError, UsageError
from remediations.core.options import RunOptions
from remediations.core.results import HostResult, Status
from remediations.facts.s3 import (
    Content,
    Head,
    Listing,
    MiB,
    Version,
    archive_state,
    at_time,
    byte_ranges,
    etag_parts,
    history,
    next_page,
    parse_at,
    parse_head,
    part_layout,
    same_content,
    uniform_layout,
)
from remediations.s3.decide import (
    KeyPlan,
    ObjectTarget,
    decide_object,
    dest_key,
    plan_key,
    refine_archived,
    short_noncurrent_rules,
)
from remediations.s3.restore_object import RestoreObject

UTC = dt.UTC
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def t(minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, 1, 10, minute, second, tzinfo=UTC)


# --- time parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T09:30:00Z", dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:00+03:00", dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01 09:30:15.250-01:00", dt.datetime(2024, 5, 1, 10, 30, 15, 250000, tzinfo=UTC)),
        ("2h ago", NOW - dt.timedelta(hours=2)),
        ("  90 minutes ago ", NOW - dt.timedelta(minutes=90)),
        ("1d 6h ago", NOW - dt.timedelta(days=1, hours=6)),
        ("1h30m ago", NOW - dt.timedelta(minutes=90)),
        ("2 weeks ago", NOW - dt.timedelta(weeks=2)),
        ("1.5h ago", NOW - dt.timedelta(minutes=90)),
    ],
)
def test_parse_at(text: str, expected: dt.datetime) -> None:
    parsed = parse_at(text, NOW)
    assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "give an ISO 8601 time with a timezone"),
        ("2024-05-01T09:30:00", "has no timezone"),
        ("2024-05-01", "has no timezone"),
        ("2h", "give an ISO 8601 time"),
        ("2 fortnights ago", "unknown unit 'fortnights'"),
        ("2024-06-01T00:00:00Z", "is in the future"),
        ("", "give an ISO 8601 time"),
    ],
)
def test_parse_at_rejects(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_at(text, NOW)


# --- version selection ------------------------------------------------------------------------


def v(
    vid: str,
    when: dt.datetime,
    *,
    latest: bool = False,
    marker: bool = False,
    etag: str = "",
    size: int = 3,
    storage: str = "STANDARD",
    key: str = "k",
) -> Version:
    return Version(key, vid, when, latest, marker, etag or f'"{vid}-md5"', size, storage)


def test_history_orders_ties_latest_first_then_markers_then_listing_order() -> None:
    # S3 lists versions and delete markers apart; a put and two deletes in one second
    entries = [
        v("v1", t(5)),
        v("v0", t(1)),
        v("dm2", t(5), latest=True, marker=True),
        v("dm1", t(5), marker=True),
    ]
    assert [e.version_id for e in history(entries)] == ["dm2", "dm1", "v1", "v0"]


HIST = history(
    [
        v("v3", t(30), latest=True),
        v("dm", t(20), marker=True),
        v("v2", t(10)),
        v("v1", t(0)),
    ]
)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (t(0), "v1"),  # at or before: the same second counts
        (t(5), "v1"),
        (t(10), "v2"),
        (t(25), "dm"),  # deleted then
        (t(40), "v3"),
        (t(0) - dt.timedelta(seconds=1), None),  # did not exist yet
    ],
)
def test_at_time(when: dt.datetime, expected: str | None) -> None:
    found = at_time(HIST, when)
    assert (found.version_id if found else None) == expected


# --- ETag and checksum comparison -------------------------------------------------------------

MD5_A, MD5_B = '"0cc175b9c0f1b6a831c399e269772661"', '"92eb5ffee6ae2fec3ad71c777531578f"'


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (Content(3, MD5_A), Content(3, MD5_A.strip('"')), True),  # quotes do not matter
        (Content(3, MD5_A), Content(3, MD5_B), False),  # two MD5s
        (Content(3, MD5_A), Content(4, MD5_A), False),  # size first
        (Content(9, '"abc-2"'), Content(9, '"abc-2"'), True),  # same multipart ETag: same parts, same bytes
        (Content(9, '"abc-2"'), Content(9, '"def-2"'), None),  # could be other part boundaries
        (Content(9, '"abc-2"'), Content(9, MD5_A), None),  # multipart vs single part: unknown
        (Content(9, '"abc-3"'), Content(9, '"abc-2"'), None),
        (Content(9, MD5_A, etag_is_md5=False), Content(9, MD5_B), None),  # SSE-KMS: ETag is no digest
        (
            Content(9, '"abc-2"', {"CRC64NVME": "x"}, "FULL_OBJECT"),
            Content(9, MD5_A, {"CRC64NVME": "x"}, "FULL_OBJECT"),
            True,
        ),
        (
            Content(9, '"abc-2"', {"CRC64NVME": "x"}, "FULL_OBJECT"),
            Content(9, MD5_A, {"CRC64NVME": "y"}, "FULL_OBJECT"),
            False,
        ),
        (
            Content(9, '"abc-2"', {"SHA256": "x-2"}, "COMPOSITE"),
            Content(9, MD5_A, {"SHA256": "y"}, "FULL_OBJECT"),
            None,
        ),
        (
            Content(9, '"abc-2"', {"SHA256": "x"}, "FULL_OBJECT"),
            Content(9, MD5_A, {"CRC32": "x"}, "FULL_OBJECT"),
            None,
        ),
    ],
)
def test_same_content(a: Content, b: Content, same: bool | None) -> None:
    assert same_content(a, b) is same
    assert same_content(b, a) is same


@pytest.mark.parametrize(("etag", "parts"), [(MD5_A, 0), ('"abc-12"', 12), ("abc-x", 0), ('"a-b-3"', 3)])
def test_etag_parts(etag: str, parts: int) -> None:
    assert etag_parts(etag) == parts


# --- multipart layouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "part", "layout"),
    [
        (10, 4, [4, 4, 2]),
        (8, 4, [4, 4]),
        (3, 4, [3]),
        (0, 4, [0]),
        (25_000, 1, [3] * 8333 + [1]),  # grown so that at most 10,000 parts
    ],
)
def test_part_layout(size: int, part: int, layout: list[int]) -> None:
    assert part_layout(size, part) == layout
    assert len(layout) <= 10_000 and sum(layout) == size


@pytest.mark.parametrize(
    ("size", "first", "parts", "layout"),
    [
        (10, 4, 3, [4, 4, 2]),
        (12, 4, 3, [4, 4, 4]),
        (5, 5, 1, [5]),
        (13, 4, 3, None),  # the last part would be larger than the first
        (8, 4, 3, None),  # nothing left for the last part
        (10, 10, 3, None),  # a HEAD that reported the whole object, not the part
        (6, 5, 1, None),
    ],
)
def test_uniform_layout(size: int, first: int, parts: int, layout: list[int] | None) -> None:
    assert uniform_layout(size, first, parts) == layout


def test_byte_ranges() -> None:
    assert byte_ranges([4, 4, 2]) == [(0, 3), (4, 7), (8, 9)]


# --- archive states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "restore", "state"),
    [
        ("STANDARD", "", "readable"),
        ("GLACIER_IR", "", "readable"),
        ("GLACIER", "", "archived"),
        ("DEEP_ARCHIVE", 'ongoing-request="true"', "retrieving"),
        ("GLACIER", 'ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"', "retrieved"),
    ],
)
def test_archive_state(storage: str, restore: str, state: str) -> None:
    assert archive_state(storage, restore) == state


# --- the object plan --------------------------------------------------------------------------


def head(vid: str, etag: str, *, size: int = 3, storage: str = "STANDARD", restore: str = "") -> Head:
    return Head(vid, Content(size, etag), "text/plain", {}, {}, storage, restore)


OBJ = history(
    [v("v3", t(30), latest=True, etag=MD5_B), v("v2", t(10), etag=MD5_A), v("v1", t(0), etag=MD5_B)]
)
DELETED = history(
    [
        v("dm2", t(40), latest=True, marker=True),
        v("dm1", t(35), marker=True),
        *OBJ[1:],
        v("v3", t(30), etag=MD5_B),
    ]
)


@pytest.mark.parametrize(
    ("target", "hist", "chosen", "current", "action", "reason"),
    [
        (
            ObjectTarget(version_id="v2"),
            OBJ,
            head("v2", MD5_A),
            head("v3", MD5_B),
            "copy",
            "its content differs",
        ),
        (
            ObjectTarget(version_id="v3"),
            OBJ,
            head("v3", MD5_B),
            head("v3", MD5_B),
            "ok",
            "already the current",
        ),
        (
            ObjectTarget(version_id="v1"),
            OBJ,
            head("v1", MD5_B),
            head("v3", MD5_B),
            "ok",
            "already holds the content",
        ),
        (
            ObjectTarget(version_id="v2"),
            OBJ,
            head("v2", '"x-2"'),
            head("v3", MD5_B),
            "copy",
            "cannot be proven",
        ),
        (ObjectTarget(version_id="nope"), OBJ, None, None, "skip", "not a data version"),
        (ObjectTarget(at=t(15)), OBJ, head("v2", MD5_A), head("v3", MD5_B), "copy", "copy version v2"),
        (ObjectTarget(at=t(0) - dt.timedelta(minutes=1)), OBJ, None, None, "skip", "did not exist at"),
        (ObjectTarget(at=t(37)), DELETED, None, None, "skip", "deleted by delete marker dm1"),
        (ObjectTarget(at=t(15)), DELETED, head("v2", MD5_A), None, "copy", "the key is deleted"),
        (
            ObjectTarget(undelete=True),
            DELETED,
            None,
            None,
            "unmark",
            "remove 2 delete marker(s) so version v3",
        ),
        (ObjectTarget(undelete=True), OBJ, None, None, "ok", "not a delete marker"),
        (
            ObjectTarget(undelete=True),
            history([v("dm", t(1), latest=True, marker=True)]),
            None,
            None,
            "skip",
            "only delete markers",
        ),
        (
            ObjectTarget(version_id="v2"),
            OBJ,
            head("v2", MD5_A, storage="GLACIER"),
            head("v3", MD5_B),
            "retrieve",
            "is in STANDARD",
        ),
        (
            ObjectTarget(version_id="v2"),
            OBJ,
            head("v2", MD5_A, storage="DEEP_ARCHIVE", restore='ongoing-request="true"'),
            head("v3", MD5_B),
            "wait",
            "pending",
        ),
        (
            ObjectTarget(version_id="v2"),
            OBJ,
            head("v2", MD5_A, storage="GLACIER", restore='ongoing-request="false"'),
            head("v3", MD5_B),
            "copy",
            "differs",
        ),
    ],
)
def test_decide_object(
    target: ObjectTarget,
    hist: list[Version],
    chosen: Head | None,
    current: Head | None,
    action: str,
    reason: str,
) -> None:
    plan = decide_object(target, hist, chosen, current)
    assert plan.action == action and reason in plan.reason, plan


def test_object_target_needs_exactly_one() -> None:
    with pytest.raises(UsageError, match="exactly one of"):
        ObjectTarget()
    with pytest.raises(UsageError, match=r"\(got --at and --undelete\)"):
        ObjectTarget(at=NOW, undelete=True)


# --- the per-key prefix plan ------------------------------------------------------------------

AT = t(15)


@pytest.mark.parametrize(
    ("hist", "dest", "dest_id", "delete_new", "in_place", "action", "reason"),
    [
        (
            [v("v1", t(10), latest=True)],
            Content(3, '"v1-md5"'),
            "v1",
            False,
            True,
            "unchanged",
            "already holds",
        ),
        (
            [v("v2", t(20), latest=True), v("v1", t(10))],
            Content(3, '"v2-md5"'),
            "v2",
            False,
            True,
            "restore",
            "overwritten after",
        ),
        (
            [v("v2", t(20), latest=True, etag='"v1-md5"'), v("v1", t(10))],
            Content(3, '"v1-md5"'),
            "v2",
            False,
            True,
            "unchanged",
            "already holds version v1",
        ),  # restored by an earlier run
        (
            [v("dm", t(20), latest=True, marker=True), v("v1", t(10))],
            None,
            None,
            False,
            True,
            "restore",
            "deleted after",
        ),
        ([v("v1", t(20), latest=True)], Content(3, '"v1-md5"'), "v1", False, True, "new", "left alone"),
        (
            [v("v1", t(20), latest=True)],
            Content(3, '"v1-md5"'),
            "v1",
            True,
            True,
            "hide",
            "delete marker hides it",
        ),
        (
            [v("dm", t(30), latest=True, marker=True), v("v1", t(20))],
            None,
            None,
            True,
            True,
            "unchanged",
            "absent",
        ),
        (
            [v("v1", t(10), latest=True), v("dm", t(5), marker=True), v("v0", t(1))],
            Content(3, '"v1-md5"'),
            "v1",
            False,
            True,
            "unchanged",
            "already holds",
        ),
        ([v("v1", t(10), latest=True)], None, None, False, False, "restore", "missing in the destination"),
        (
            [v("v1", t(10), latest=True)],
            Content(3, '"other"'),
            None,
            False,
            False,
            "restore",
            "differs from the source",
        ),
        (
            [v("v1", t(10), latest=True)],
            Content(3, '"v1-md5"'),
            None,
            False,
            False,
            "unchanged",
            "already holds",
        ),
        ([], Content(3, '"x"'), None, False, False, "new", "created after"),  # only in the destination
    ],
)
def test_plan_key(
    hist: list[Version],
    dest: Content | None,
    dest_id: str | None,
    delete_new: bool,
    in_place: bool,
    action: str,
    reason: str,
) -> None:
    plan = plan_key(
        "p/k", "p/k" if in_place else "q/k", history(hist), AT, dest, dest_id, delete_new, in_place
    )
    assert (plan.action, plan.dest_key) == (action, "p/k" if in_place else "q/k")
    assert reason in plan.reason, plan


@pytest.mark.parametrize(
    ("restore", "action"),
    [
        ("", "retrieve"),
        ('ongoing-request="true"', "wait"),
        ('ongoing-request="false"', "restore"),
    ],
)
def test_refine_archived(restore: str, action: str) -> None:
    version = v("v1", t(10), storage="GLACIER")
    plan = KeyPlan("k", "k", "restore", "deleted after", version)
    assert refine_archived(plan, head("v1", '"x"', storage="GLACIER", restore=restore)).action == action


def test_dest_key() -> None:
    assert dest_key("logs/2024/a", "logs/", "restored/logs/") == "restored/logs/2024/a"
    assert dest_key("logs/a", "logs/", None) == "logs/a"


# --- lifecycle findings -----------------------------------------------------------------------


def test_short_noncurrent_rules() -> None:
    rules = [
        {
            "ID": "short",
            "Status": "Enabled",
            "Filter": {"Prefix": "logs/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7, "NewerNoncurrentVersions": 3},
        },
        {
            "ID": "off",
            "Status": "Disabled",
            "Filter": {},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        },
        {
            "ID": "long",
            "Status": "Enabled",
            "Filter": {},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        },
        {"ID": "current-only", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}},
        {"Status": "Enabled", "Prefix": "old-style/", "NoncurrentVersionExpiration": {"NoncurrentDays": 2}},
        {
            "ID": "tagged",
            "Status": "Enabled",
            "Filter": {"And": {"Prefix": "a/", "Tags": [{"Key": "t", "Value": "1"}]}},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        },
    ]
    found = short_noncurrent_rules(rules, 30)
    assert [(f.rule, f.scope, f.days, f.keeps_newer) for f in found] == [
        ("short", "prefix 'logs/'", 7, 3),
        ("(no id)", "prefix 'old-style/'", 2, 0),
        ("tagged", "prefix 'a/', tag t=1", 1, 0),
    ]


# --- tuning and targets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "--workers 0"),
        ({"tier": "Fast"}, "--tier 'Fast'"),
        ({"part_size": MiB}, "part size"),
        ({"multipart_threshold": 6 * 1024**3}, "cannot copy more than 5 GiB"),
        ({"page_size": 0}, "page size 0"),
    ],
)
def test_tuning_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Tuning(**kwargs)


def test_controller_target_uses_the_shared_vars_and_is_local() -> None:
    inv = inventory.parse(
        "all:\n  vars: {s3_endpoint_url: 'http://s3.local', audit_log: /tmp/a}\n"
        "  hosts:\n    a: {x: 1}\n    b: {x: 2}\n",
        "t.yml",
    )
    [host] = controller_targets("media")(inv)
    assert host.name == "s3:media" and host.is_local
    assert host.get("s3_endpoint_url") == "http://s3.local" and host.get("x") is None


def test_a_host_that_is_not_local_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    inv = inventory.parse("all:\n  hosts:\n    api1: {ansible_host: 10.0.0.1}\n", "t.yml")
    with pytest.raises(UsageError, match="S3 tasks run on the controller"):
        RestoreObject("bkt", "k", undelete=True).validate(inv.hosts["api1"])


# --- the client: endpoint, secrets, retries ---------------------------------------------------


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret-value-abcdef")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


def test_endpoint_environment_wins_over_the_inventory(creds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert S3Api({"s3_endpoint_url": "http://inv:9000"}, Tuning()).endpoint == "http://inv:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert S3Api({"s3_endpoint_url": "http://inv:9000"}, Tuning()).endpoint == "http://env:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://env-s3:9000")
    assert S3Api({}, Tuning()).client.meta.endpoint_url == "http://env-s3:9000"


def test_no_credentials_is_bad_input(creds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UsageError, match="no AWS credentials found"):
        S3Api({}, Tuning())


def test_explain_masks_credentials(creds: None) -> None:
    s3 = S3Api({}, Tuning())
    error = ClientError(
        {
            "Error": {"Code": "SignatureDoesNotMatch", "Message": "key AKIAUNITTESTKEY0001"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "GetObject",
    )
    other = ClientError(
        {
            "Error": {"Code": "Weird", "Message": "secret unit-secret-value-abcdef leaked"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        "GetObject",
    )
    assert s3.explain(error) == "access denied (SignatureDoesNotMatch): key ***** [AWS]"
    assert s3.explain(other) == "GetObject: Weird: secret ***** leaked [AWS]"


class SlowDown(BaseHTTPRequestHandler):
    """Answers GET ?versioning with 503 SlowDown `failures` times, then with versioning Enabled."""

    failures = 0
    seen = 0

    def do_GET(self) -> None:
        cls = type(self)
        cls.seen += 1
        if cls.seen <= cls.failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
        else:
            body = (
                b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<Status>Enabled</Status></VersioningConfiguration>"
            )
            self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_down() -> Iterator[tuple[str, type[SlowDown]]]:
    handler = type("Handler", (SlowDown,), {"failures": 0, "seen": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_slowdown_is_retried_until_it_passes(creds: None, slow_down: tuple[str, type[SlowDown]]) -> None:
    url, handler = slow_down
    handler.failures = 2
    s3 = S3Api({"s3_endpoint_url": url}, Tuning())
    assert s3.versioning("bucket") == "Enabled"
    assert handler.seen == 3


def test_slowdown_retries_stop_after_max_attempts(creds: None, slow_down: tuple[str, type[SlowDown]]) -> None:
    url, handler = slow_down
    handler.failures = 100
    s3 = S3Api({"s3_endpoint_url": url, "s3_max_attempts": 2}, Tuning())
    with (
        pytest.raises(HostError, match=r"s3://bucket: GetBucketVersioning: SlowDown: Please reduce"),
        s3.failing("s3://bucket"),
    ):
        s3.versioning("bucket")
    assert handler.seen == 2
    assert s3.client.meta.config.max_pool_connections >= Tuning().workers


# --- archive states moto cannot produce: Stubber on recorded-shape responses ------------------

OLD, NEW, BUCKET, KEY = (
    "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
    "9zGnP0k1JvUz.TEVi2g_3RvTB8qxHb2N",
    "media",
    "photo.jpg",
)
LISTING = {
    "Name": BUCKET,
    "Prefix": KEY,
    "KeyMarker": "",
    "VersionIdMarker": "",
    "MaxKeys": 1000,
    "IsTruncated": False,
    "Versions": [
        {
            "Key": KEY,
            "VersionId": NEW,
            "IsLatest": True,
            "LastModified": t(30),
            "ETag": MD5_B,
            "Size": 5,
            "StorageClass": "STANDARD",
        },
        {
            "Key": KEY,
            "VersionId": OLD,
            "IsLatest": False,
            "LastModified": t(10),
            "ETag": MD5_A,
            "Size": 4,
            "StorageClass": "GLACIER",
        },
    ],
}


def glacier_head(restore: str | None) -> dict[str, Any]:
    found = {
        "ContentLength": 4,
        "ETag": MD5_A,
        "VersionId": OLD,
        "ContentType": "image/jpeg",
        "LastModified": t(10),
        "Metadata": {"camera": "x"},
        "StorageClass": "GLACIER",
    }
    return {**found, "Restore": restore} if restore else found


CURRENT_HEAD = {
    "ContentLength": 5,
    "ETag": MD5_B,
    "VersionId": NEW,
    "ContentType": "image/jpeg",
    "LastModified": t(30),
    "Metadata": {},
}


def run_stubbed(
    restore: str | None,
    after: list[tuple[str, dict[str, Any], dict[str, Any] | None]],
    error: str | None = None,
) -> HostResult:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")  # noqa: S106
    stub = Stubber(client)
    stub.add_response("get_bucket_versioning", {"Status": "Enabled"}, {"Bucket": BUCKET})
    stub.add_response("head_object", glacier_head(restore), {"Bucket": BUCKET, "Key": KEY, "VersionId": OLD})
    # the versioning read in validate is the one the run checks: asked once
    stub.add_response("list_object_versions", LISTING, {"Bucket": BUCKET, "Prefix": KEY, "MaxKeys": 1000})
    stub.add_response(
        "head_object",
        glacier_head(restore),
        {"Bucket": BUCKET, "Key": KEY, "VersionId": OLD, "ChecksumMode": "ENABLED"},
    )
    stub.add_response(
        "head_object",
        CURRENT_HEAD,
        {"Bucket": BUCKET, "Key": KEY, "VersionId": NEW, "ChecksumMode": "ENABLED"},
    )
    for method, response, params in after:
        stub.add_response(method, response, params)
    if error:
        stub.add_client_error("restore_object", error, "Object restore is already in progress", 409)
    inv = inventory.parse("all:\n  hosts:\n    ctl: {ansible_connection: local}\n", "t.yml")
    remediation = RestoreObject(
        BUCKET,
        KEY,
        version_id=OLD,
        tuning=Tuning(tier="Expedited", restore_days=3),
        connect=lambda host_vars, tuning: S3Api(host_vars, tuning, client),
    )
    with stub:
        [host] = Engine(inv, RunOptions()).run(remediation, controller_targets(BUCKET)(inv)).hosts
        stub.assert_no_pending_responses()
    return host


RESTORE_PARAMS = {
    "Bucket": BUCKET,
    "Key": KEY,
    "VersionId": OLD,
    "RestoreRequest": {"Days": 3, "GlacierJobParameters": {"Tier": "Expedited"}},
}


def test_archived_version_starts_a_retrieval(creds: None) -> None:
    host = run_stubbed(None, [("restore_object", {}, RESTORE_PARAMS)])
    assert host.status == Status.CHANGED, host.to_dict()
    assert host.message.startswith("pending, retrieval started at 20") and "(tier Expedited)" in host.message


def test_retrieval_already_started_elsewhere_is_pending(creds: None) -> None:
    host = run_stubbed(None, [], error="RestoreAlreadyInProgress")
    assert (host.status, host.message) == (Status.OK, "pending: a retrieval is already in progress")


def test_retrieval_in_progress_changes_nothing(creds: None) -> None:
    host = run_stubbed('ongoing-request="true"', [])
    assert host.status == Status.OK and host.message.startswith("pending: retrieval of version " + OLD)


def test_retrieved_version_is_copied_and_verified(creds: None) -> None:
    restored = 'ongoing-request="false", expiry-date="Fri, 03 May 2024 00:00:00 GMT"'
    copied = {
        **CURRENT_HEAD,
        "ContentLength": 4,
        "ETag": MD5_A,
        "VersionId": "v-new",
        "Metadata": {"camera": "x"},
    }
    host = run_stubbed(
        restored,
        [
            (
                "copy_object",
                {"VersionId": "v-new", "CopyObjectResult": {"ETag": MD5_A}},
                {
                    "Bucket": BUCKET,
                    "Key": KEY,
                    "CopySource": {"Bucket": BUCKET, "Key": KEY, "VersionId": OLD},
                    "MetadataDirective": "COPY",
                    "TaggingDirective": "COPY",
                },
            ),
            ("head_object", copied, {"Bucket": BUCKET, "Key": KEY, "ChecksumMode": "ENABLED"}),
        ],
    )
    assert host.status == Status.CHANGED, host.to_dict()
    assert [s.status for s in host.steps][-2:] == [Status.CHANGED, Status.OK]
    assert "new current version v-new" in host.steps[-2].message


# --- the listing and HEAD parsers (facts.s3) ----------------------------------------------------


def _entry(key: str, vid: str, minute: int, **extra: Any) -> dict[str, Any]:
    return {"Key": key, "VersionId": vid, "LastModified": t(minute), **extra}


@pytest.mark.parametrize(
    ("page", "only_key", "keys", "past", "marker_only"),
    [
        ({}, None, {}, False, 0),  # an empty page: neither list present
        ({"DeleteMarkers": [_entry("a", "m1", 3)]}, None, {"a": ["m1"]}, False, 1),
        ({"Versions": [_entry("a", "v1", 1), _entry("b", "v2", 2)], "DeleteMarkers": [_entry("a", "m1", 3)]},
         None, {"a": ["v1", "m1"], "b": ["v2"]}, False, 0),
        ({"Versions": [_entry("a", "v1", 1), _entry("ab", "v2", 2)]}, "a", {"a": ["v1"]}, True, 0),
        ({"Versions": [_entry("0", "v0", 1), _entry("a", "v1", 1)]}, "a", {"a": ["v1"]}, False, 0),
    ],
)  # fmt: skip
def test_listing_add_page(page: dict[str, Any], only_key: str | None, keys: dict[str, list[str]], past: bool,
                          marker_only: int) -> None:  # fmt: skip
    listing = Listing()
    assert listing.add_page(page, only_key) is past
    assert {k: [v.version_id for v in vs] for k, vs in listing.by_key.items()} == keys
    assert (listing.pages, listing.marker_only_pages) == (1, marker_only)
    markers = [v for vs in listing.by_key.values() for v in vs if v.is_delete_marker]
    assert all(m.version_id.startswith("m") for m in markers)


@pytest.mark.parametrize(
    ("request_before", "page", "more", "request_after"),
    [
        ({"Bucket": "b"}, {"IsTruncated": False}, False, {"Bucket": "b"}),
        ({"Bucket": "b"}, {"IsTruncated": True, "NextKeyMarker": "k", "NextVersionIdMarker": "v"}, True,
         {"Bucket": "b", "KeyMarker": "k", "VersionIdMarker": "v"}),
        ({"Bucket": "b", "KeyMarker": "k", "VersionIdMarker": "v"},
         {"IsTruncated": True, "NextKeyMarker": "l"}, True, {"Bucket": "b", "KeyMarker": "l"}),
    ],
)  # fmt: skip
def test_next_page(request_before: dict[str, Any], page: dict[str, Any], more: bool,
                   request_after: dict[str, Any]) -> None:  # fmt: skip
    request = dict(request_before)
    assert next_page(request, page) is more
    assert request == request_after


def test_parse_head() -> None:
    head = parse_head({
        "ContentLength": 3, "ETag": '"abc"', "ChecksumCRC32": "AAAA", "ChecksumType": "FULL_OBJECT",
        "ContentType": "text/plain", "Metadata": {"o": "a"}, "CacheControl": "max-age=1",
        "StorageClass": "GLACIER", "Restore": 'ongoing-request="true"',
    }, "v1")  # fmt: skip
    assert head.version_id == "v1" and head.content == Content(3, '"abc"', {"CRC32": "AAAA"}, "FULL_OBJECT")
    assert (head.content_type, dict(head.metadata), dict(head.system)) == ("text/plain", {"o": "a"},
                                                                          {"CacheControl": "max-age=1"})
    assert head.state == "retrieving"
    kms = parse_head({"ServerSideEncryption": "aws:kms", "VersionId": "v2"}, None)
    assert (kms.version_id, kms.content.etag_is_md5, kms.storage_class) == ("v2", False, "STANDARD")


# --- the declared arguments: the tuning flags as tasks.py parsed them -----------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, Tuning()),
        ({"workers": "", "restore_days": ""}, Tuning()),
        ({"workers": "4", "restore_days": "2", "tier": "Bulk"},
         Tuning(workers=4, restore_days=2, tier="Bulk")),
    ],
)  # fmt: skip
def test_declared_tuning(given: dict[str, Any], expected: Tuning) -> None:
    values = RestoreObject.params.parse({"bucket": "bkt", "key": "k", "undelete": True, **given})
    made = RestoreObject.from_values(values)
    assert isinstance(made, RestoreObject) and made._tuning == expected and made.undelete


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"workers": "0"}, "--workers '0'"),
        ({"restore_days": "abc"}, "--restore-days 'abc'"),
        ({"tier": "Fast"}, "--tier 'Fast': give one of Expedited, Standard, Bulk"),
        ({"workers": "abc", "tier": "Fast"}, "--workers 'abc'"),  # workers first, as before
    ],
)
def test_declared_tuning_refuses(given: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        RestoreObject.from_values(RestoreObject.params.parse({"bucket": "bkt", "key": "k", **given}))
