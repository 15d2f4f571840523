"""The requests a prefix restore sends per key, counted on the lab's S3 endpoint (botocore's
before-send hook: every HTTP attempt). The floor: one listing pass of the versions, one CopyObject
per key that needs it, one verifying listing of the current objects; no HEAD or GET per key when the
listing decides. A re-run with nothing to do and --check only list. Throttling (503 SlowDown from
a proxy, lab/s3proxy.py) shrinks the copies in flight and fails no key."""

from __future__ import annotations

import io
from typing import Any

import pytest

from lab import hosts as lab
from lab.s3proxy import S3Proxy
from remediations.actions.s3versions import Tuning
from remediations.s3.restore_prefix import RestorePrefix
from tests.lab.s3.test_s3_progress import run
from tests.lab.s3.test_s3_restore import aws_env, bucket, client, next_second
from tests.s3requests import Requests

__all__ = ["aws_env"]  # the fixture: credentials for the lab endpoint
pytestmark = pytest.mark.lab

KEYS = 30
PAGE = 10  # MaxKeys: several pages for a few keys


def pages(s3: Any, operation: str, name: str) -> int:
    """How many pages of PAGE a listing of data/ takes now (boto3's own paginator)."""
    paginator = s3.get_paginator(operation)
    listing = paginator.paginate(Bucket=name, Prefix="data/", PaginationConfig={"PageSize": PAGE})
    return sum(1 for _ in listing)


@pytest.fixture
def half_overwritten_half_deleted(lab: Any) -> tuple[str, str]:
    s3 = client()
    name = bucket(s3)
    for i in range(KEYS):
        s3.put_object(Bucket=name, Key=f"data/{i:03}", Body=b"before %d" % i)
    at = next_second()
    for i in range(KEYS):
        if i % 2:
            s3.delete_object(Bucket=name, Key=f"data/{i:03}")
        else:
            s3.put_object(Bucket=name, Key=f"data/{i:03}", Body=b"after")
    return name, at.isoformat()


def restore(name: str, at: str, requests: Requests) -> RestorePrefix:
    return RestorePrefix(name, "data/", at, tuning=Tuning(page_size=PAGE, workers=4),
                         progress=io.StringIO(), connect=requests.counted())  # fmt: skip


def test_a_restore_lists_once_copies_once_per_key_and_verifies_with_one_listing(
    half_overwritten_half_deleted: tuple[str, str],
) -> None:
    name, at = half_overwritten_half_deleted
    s3, requests = client(), Requests()
    listing = pages(s3, "list_object_versions", name)

    checked = run(restore(name, at, requests), name, check=True)
    assert checked.status.value == "changed", checked.message
    assert requests.take() == {"GetBucketVersioning": 1, "ListObjectVersions": listing}

    done = run(restore(name, at, requests), name)
    assert done.status.value == "changed", done.message
    sent = requests.take()
    assert sent == {"GetBucketVersioning": 1, "ListObjectVersions": listing, "CopyObject": KEYS,
                    "ListObjectsV2": pages(s3, "list_objects_v2", name)}, sent  # fmt: skip
    assert [s["step"] for s in done.to_dict()["steps"]][-1] == "verify"
    assert done.to_dict()["steps"][-1]["status"] == "ok"

    again = run(restore(name, at, requests), name)
    assert again.message.startswith("nothing to do"), again.message
    assert requests.take() == {"GetBucketVersioning": 1,
                               "ListObjectVersions": pages(s3, "list_object_versions", name)}  # fmt: skip


def test_a_rerun_into_another_bucket_lists_each_side_once_and_asks_versioning_once_per_bucket(
    half_overwritten_half_deleted: tuple[str, str],
) -> None:
    """The re-run that finds nothing to do: one pass of the source's versions, one of the
    destination's current objects (read alongside), each bucket's versioning once; no verifying
    listing (the listing it just read is the proof), no HEAD, no GET."""
    name, at = half_overwritten_half_deleted
    s3, requests = client(), Requests()
    dest = bucket(s3)

    def into(requests: Requests) -> RestorePrefix:
        return RestorePrefix(name, "data/", at, to_bucket=dest, tuning=Tuning(page_size=PAGE, workers=4),
                             progress=io.StringIO(), connect=requests.counted())  # fmt: skip

    done = run(into(requests), name)
    assert done.status.value == "changed", done.message
    sent, versions = requests.take(), pages(s3, "list_object_versions", name)
    assert sent == {"GetBucketVersioning": 2, "ListObjectVersions": versions, "CopyObject": KEYS,
                    "ListObjectsV2": 1 + pages(s3, "list_objects_v2", dest)}, sent  # fmt: skip

    again = run(into(requests), name)
    assert again.message.startswith("nothing to do"), again.message
    assert requests.take() == {"GetBucketVersioning": 2, "ListObjectVersions": versions,
                               "ListObjectsV2": pages(s3, "list_objects_v2", dest)}  # fmt: skip


def test_slowdown_shrinks_the_copies_in_flight_and_every_key_is_still_restored(
    half_overwritten_half_deleted: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy that answers 503 SlowDown beyond 5 requests a second for 4 s (more than
    botocore's 3 attempts outlast), the pool halves and re-sends: every key restored, none failed."""
    name, at = half_overwritten_half_deleted
    proxy = S3Proxy(lab.S3_ENDPOINT, delay=0).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        proxy.throttling(rate=5, seconds=4)
        done = run(RestorePrefix(name, "data/", at, tuning=Tuning(workers=16), progress=io.StringIO()), name)
    finally:
        proxy.stop()
    assert proxy.slowdowns > 0
    steps = {s["step"]: s for s in done.to_dict()["steps"]}
    restored = steps["restore"]
    assert restored["status"] == "changed", restored["message"]
    assert restored["data"]["restored"] == KEYS and restored["data"]["failed"] == 0
    assert restored["data"]["slowdowns"] > 0
    assert f"S3 answered SlowDown {restored['data']['slowdowns']} time(s)" in restored["message"]
    assert steps["verify"]["status"] == "ok", steps["verify"]["message"]
