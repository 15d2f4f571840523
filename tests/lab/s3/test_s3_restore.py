"""S3 restore against the lab's real S3 endpoint (moto server on 198.18.0.1:9000).

Most cases run through the library (Engine + the remediation), as cron or a fabfile would; the bad
input cases and one happy path run the real `inv` front end in a subprocess. moto reports
LastModified in whole seconds, so a timeline waits for the next second between "before" and "after".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lab import hosts as lab
from remediations.actions.s3task import controller_targets
from remediations.actions.s3versions import Tuning
from remediations.core import inventory
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.core.remediation import Remediation
from remediations.core.results import HostResult, Status
from remediations.facts.s3 import MiB, iso
from remediations.s3.bucket_check import BucketCheck
from remediations.s3.restore_object import RestoreObject
from remediations.s3.restore_prefix import RestorePrefix
from tests import labkit
from tests.labkit import audit_lines, inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

ACCESS_KEY = "AKIALABTESTKEY00042"
SECRET_KEY = "lab-secret-key-never-printed-9f8e7d"  # noqa: S105 - a fake, to prove it is never printed
PART = 5 * MiB


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


def client(endpoint: str = lab.S3_ENDPOINT) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def bucket(s3: Any, versioning: str | None = "Enabled") -> str:
    name = f"rm-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    if versioning:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
    return name


def run(remediation: Remediation, name: str, *, check: bool = False) -> HostResult:
    inv_ = inventory.parse(
        f"all:\n  hosts:\n    controller: {{ansible_connection: local}}\n"
        f"  vars:\n    s3_endpoint_url: {lab.S3_ENDPOINT}\n",
        "lab-s3",
    )
    result = Engine(inv_, RunOptions(check=check, diff=True)).run(remediation, controller_targets(name)(inv_))
    [host] = result.hosts
    return host


def versions(s3: Any, name: str, key: str) -> list[dict[str, Any]]:
    page = s3.list_object_versions(Bucket=name, Prefix=key)
    return [v for v in page.get("Versions", []) if v["Key"] == key]


def body(s3: Any, name: str, key: str) -> bytes:
    return s3.get_object(Bucket=name, Key=key)["Body"].read()  # type: ignore[no-any-return]


def next_second() -> dt.datetime:
    """Wait until the clock enters a new second; return a time between the two seconds' writes."""
    now = time.time()
    before = int(now)
    time.sleep(before + 1 - now + 0.02)
    return dt.datetime.fromtimestamp(before + 0.5, dt.UTC)


def put_multipart(s3: Any, name: str, key: str, data: bytes, part: int, **extra: Any) -> dict[str, Any]:
    upload = s3.create_multipart_upload(Bucket=name, Key=key, **extra)
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        done = s3.upload_part(
            Bucket=name,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + part],
        )
        parts.append({"PartNumber": number, "ETag": done["ETag"]})
    return s3.complete_multipart_upload(  # type: ignore[no-any-return]
        Bucket=name, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )


def planned(listing: str) -> list[tuple[str, str]]:
    """(action, key) from the per-key plan lines: "ACTION    KEY  reason"."""
    return [(line[:9].strip(), line[10:].split("  ")[0]) for line in listing.splitlines()]


# --- restore-s3-object ------------------------------------------------------------------------


def test_version_id_quartet_keeps_content_type_metadata_and_tags(lab: Any, tmp_path: Path) -> None:
    s3 = client()
    name = bucket(s3)
    old = s3.put_object(
        Bucket=name,
        Key="doc.txt",
        Body=b"old",
        ContentType="text/x-old",
        Metadata={"owner": "alice"},
        Tagging="team=blue&tier=1",
        CacheControl="max-age=60",
    )
    time.sleep(0.01)
    s3.put_object(Bucket=name, Key="doc.txt", Body=b"new", ContentType="text/plain")

    def state() -> tuple[bytes, int]:
        return body(s3, name, "doc.txt"), len(versions(s3, name, "doc.txt"))

    host, version = f"s3:{name}", old["VersionId"]
    four = quartet("restore-s3-object", "--bucket", name, "--key", "doc.txt", "--version-id", version,
                   hosts=[host], audit=tmp_path / "audit.jsonl", state=state, run=inv_s3)  # fmt: skip
    checked = four.check.host(host)
    assert checked["message"].startswith("would copy version " + old["VersionId"])
    assert state() == (b"old", 3)  # one new version; the history is all there
    applied = four.apply.host(host)
    assert [s["step"] for s in applied["steps"]] == ["versioning", "facts", "restore", "verify"]
    head = s3.head_object(Bucket=name, Key="doc.txt")
    assert body(s3, name, "doc.txt") == b"old"
    assert (head["ContentType"], head["Metadata"], head["CacheControl"]) == (
        "text/x-old",
        {"owner": "alice"},
        "max-age=60",
    )
    tags = s3.get_object_tagging(Bucket=name, Key="doc.txt")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "blue"), ("tier", "1")]
    again = four.again.host(host)
    assert len(versions(s3, name, "doc.txt")) == 3, again
    assert "already holds the content of version " + old["VersionId"] in again["message"]


def test_at_restores_the_version_current_then_and_says_when_the_key_did_not_exist(lab: Any) -> None:
    s3 = client()
    name = bucket(s3)
    s3.put_object(Bucket=name, Key="k", Body=b"first")
    time.sleep(0.01)
    s3.put_object(Bucket=name, Key="k", Body=b"second")
    at = next_second()
    s3.put_object(Bucket=name, Key="k", Body=b"third")

    done = run(RestoreObject(name, "k", at=iso(at)), name)
    assert done.status == Status.CHANGED, done.to_dict()
    assert body(s3, name, "k") == b"second"

    early = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    before = run(RestoreObject(name, "k", at=iso(early)), name)
    assert before.status == Status.OK, before.to_dict()
    assert before.message.startswith(f"the key did not exist at {iso(early)}")
    assert (body(s3, name, "k"), len(versions(s3, name, "k"))) == (b"second", 4)  # nothing changed

    relative = run(RestoreObject(name, "k", at="2h ago"), name)
    assert "did not exist at" in relative.message and len(versions(s3, name, "k")) == 4


def test_undelete_removes_stacked_delete_markers_only(lab: Any) -> None:
    s3 = client()
    name = bucket(s3)
    kept = s3.put_object(Bucket=name, Key="gone.txt", Body=b"data")
    for _ in range(2):
        time.sleep(0.01)
        s3.delete_object(Bucket=name, Key="gone.txt")

    checked = run(RestoreObject(name, "gone.txt", undelete=True), name, check=True)
    assert checked.status == Status.CHANGED and "remove 2 delete marker(s)" in checked.message
    assert len(s3.list_object_versions(Bucket=name)["DeleteMarkers"]) == 2

    done = run(RestoreObject(name, "gone.txt", undelete=True), name)
    assert done.status == Status.CHANGED, done.to_dict()
    assert s3.head_object(Bucket=name, Key="gone.txt")["VersionId"] == kept["VersionId"]
    listing = s3.list_object_versions(Bucket=name)
    assert "DeleteMarkers" not in listing and len(listing["Versions"]) == 1  # no data version touched

    again = run(RestoreObject(name, "gone.txt", undelete=True), name)
    assert again.status == Status.OK and "not a delete marker" in again.message


def test_multipart_source_is_copied_along_its_own_parts_so_a_rerun_is_ok(lab: Any) -> None:
    s3 = client()
    name = bucket(s3)
    data = os.urandom(PART) + b"tail" * 300
    source = put_multipart(
        s3,
        name,
        "big.bin",
        data,
        PART,
        ContentType="application/x-big",
        Metadata={"kind": "archive"},
        Tagging="k=v",
    )
    # S3's multipart ETag: the MD5 of the parts' MD5s, then "-N"
    part_md5s = b"".join(hashlib.md5(data[i : i + PART], usedforsecurity=False).digest() for i in (0, PART))
    expected = hashlib.md5(part_md5s, usedforsecurity=False).hexdigest() + "-2"
    assert source["ETag"].strip('"') == expected
    source_id = s3.head_object(Bucket=name, Key="big.bin")["VersionId"]
    time.sleep(0.01)
    s3.put_object(Bucket=name, Key="big.bin", Body=b"small")
    # part_size differs from the source's: only reading the source's own layout keeps its ETag
    tuning = Tuning(multipart_threshold=PART, part_size=6 * MiB)

    done = run(RestoreObject(name, "big.bin", version_id=source_id, tuning=tuning), name)
    assert done.status == Status.CHANGED, done.to_dict()
    head = s3.head_object(Bucket=name, Key="big.bin")
    assert head["ETag"].strip('"') == expected  # S3 computed it from the parts we copied
    assert (head["ContentType"], head["Metadata"]) == ("application/x-big", {"kind": "archive"})
    assert s3.get_object_tagging(Bucket=name, Key="big.bin")["TagSet"] == [{"Key": "k", "Value": "v"}]
    assert body(s3, name, "big.bin") == data
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []

    again = run(RestoreObject(name, "big.bin", version_id=source_id, tuning=tuning), name)
    assert again.status == Status.OK and len(versions(s3, name, "big.bin")) == 3, again.to_dict()


@pytest.mark.parametrize("versioning", [None, "Suspended"])
def test_refuses_when_versioning_is_not_enabled(lab: Any, versioning: str | None) -> None:
    s3 = client()
    name = bucket(s3, versioning)
    s3.put_object(Bucket=name, Key="k", Body=b"only copy")
    for remediation in (RestoreObject(name, "k", undelete=True), RestorePrefix(name, "", "1h ago")):
        refused = run(remediation, name)
        assert refused.status == Status.FAILED
        assert refused.message.startswith(
            f"refused: versioning of s3://{name} is {versioning or 'never enabled'}, not Enabled"
        )
        assert [s.step for s in refused.steps] == ["versioning"]
    assert body(s3, name, "k") == b"only copy"


# --- restore-s3-prefix -----------------------------------------------------------------------


class Timeline:
    """One bucket, several prefixes each with keys kept, overwritten, deleted and created after `at`."""

    def __init__(self) -> None:
        self.s3 = client()
        self.name = bucket(self.s3)
        self.dest = bucket(self.s3)
        self.prefixes = ("inplace/", "hide/", "copy/")
        s3, name = self.s3, self.name
        for p in self.prefixes:
            s3.put_object(Bucket=name, Key=f"{p}keep.txt", Body=b"keep")
            s3.put_object(
                Bucket=name,
                Key=f"{p}over.txt",
                Body=b"before",
                ContentType="text/x-before",
                Metadata={"v": "1"},
            )
            s3.put_object(Bucket=name, Key=f"{p}gone.txt", Body=b"gone")
        s3.put_object(Bucket=name, Key="markers/a", Body=b"a-before")
        s3.put_object(Bucket=name, Key="markers/b", Body=b"b-before")
        s3.put_object(Bucket=name, Key="cold/c.txt", Body=b"cold data", StorageClass="GLACIER")
        self.at = next_second()
        for p in self.prefixes:
            s3.put_object(Bucket=name, Key=f"{p}over.txt", Body=b"after")
            s3.delete_object(Bucket=name, Key=f"{p}gone.txt")
            s3.put_object(Bucket=name, Key=f"{p}new.txt", Body=b"new")
        for _ in range(3):  # markers/a: three delete markers over its version
            s3.delete_object(Bucket=name, Key="markers/a")
            time.sleep(0.002)
        s3.put_object(Bucket=name, Key="markers/b", Body=b"b-after")


@pytest.fixture(scope="module")
def timeline(lab: Any) -> Timeline:
    return Timeline()


def test_prefix_in_place_quartet(timeline: Timeline, tmp_path: Path) -> None:
    s3, name, at = timeline.s3, timeline.name, iso(timeline.at)

    def state() -> str:
        return s3_state(timeline)

    host = f"s3:{name}"
    four = quartet("restore-s3-prefix", "--bucket", name, "--prefix", "inplace/", "--at", at,
                   hosts=[host], audit=tmp_path / "audit.jsonl", state=state, run=inv_s3)  # fmt: skip
    checked = four.check.host(host)
    diff = "\n".join(s["diff"] for s in checked["steps"] if s["diff"])  # --check implies --diff
    assert sorted(planned(diff)) == [
        ("keep new", "inplace/new.txt"),
        ("ok", "inplace/keep.txt"),
        ("restore", "inplace/gone.txt"),
        ("restore", "inplace/over.txt"),
    ]
    assert "deleted after" in diff and "overwritten after" in diff

    done = four.apply.host(host)
    assert "restored 2 key(s)" in done["message"] and "inplace/new.txt" in done["message"], done
    assert body(s3, name, "inplace/over.txt") == b"before"
    assert s3.head_object(Bucket=name, Key="inplace/over.txt")["ContentType"] == "text/x-before"
    assert body(s3, name, "inplace/gone.txt") == b"gone"
    assert body(s3, name, "inplace/new.txt") == b"new"  # left alone
    assert len(versions(s3, name, "inplace/keep.txt")) == 1

    again = four.again.host(host)
    assert again["message"].startswith("nothing to do"), again
    assert [s["step"] for s in again["steps"]] == ["versioning", "facts", "decide"]


def test_prefix_delete_new_hides_new_keys_behind_a_delete_marker(timeline: Timeline) -> None:
    s3, name, at = timeline.s3, timeline.name, iso(timeline.at)
    done = run(RestorePrefix(name, "hide/", at, delete_new=True), name)
    assert done.status == Status.CHANGED and "hid 1 new key(s)" in done.message, done.to_dict()
    listing = s3.list_object_versions(Bucket=name, Prefix="hide/new.txt")
    assert [m["IsLatest"] for m in listing["DeleteMarkers"]] == [True]
    assert [v["Key"] for v in listing["Versions"]] == ["hide/new.txt"]  # its data is still there
    assert run(RestorePrefix(name, "hide/", at, delete_new=True), name).message.startswith("nothing to do")


def test_prefix_paging_through_a_page_of_only_delete_markers(timeline: Timeline) -> None:
    s3, name, at = timeline.s3, timeline.name, iso(timeline.at)
    done = run(RestorePrefix(name, "markers/", at, tuning=Tuning(page_size=2)), name)
    facts = next(s for s in done.steps if s.step == "facts")
    assert facts.data["marker_only_pages"] >= 1 and facts.data["pages"] >= 3, facts.data
    assert done.status == Status.CHANGED, done.to_dict()
    assert (body(s3, name, "markers/a"), body(s3, name, "markers/b")) == (b"a-before", b"b-before")


def test_prefix_into_another_bucket_and_prefix(timeline: Timeline) -> None:
    s3, name, dest, at = timeline.s3, timeline.name, timeline.dest, iso(timeline.at)
    s3.put_object(Bucket=dest, Key="restored/stray.txt", Body=b"stray")
    done = run(RestorePrefix(name, "copy/", at, to_bucket=dest, to_prefix="restored/"), name)
    assert done.status == Status.CHANGED, done.to_dict()
    current = {o["Key"] for o in s3.list_objects_v2(Bucket=dest)["Contents"]}
    assert current == {"restored/keep.txt", "restored/over.txt", "restored/gone.txt", "restored/stray.txt"}
    assert body(s3, dest, "restored/over.txt") == b"before"
    assert "restored/stray.txt" in done.message  # not in the snapshot: listed, left alone
    assert body(s3, name, "copy/over.txt") == b"after"  # the source is untouched
    again = run(RestorePrefix(name, "copy/", at, to_bucket=dest, to_prefix="restored/"), name)
    assert again.message.startswith("nothing to do"), again.to_dict()


def test_archived_version_is_retrieved_first_then_copied_on_a_later_run(timeline: Timeline) -> None:
    s3, name, at = timeline.s3, timeline.name, iso(timeline.at)
    dest = bucket(s3)

    def restore() -> RestorePrefix:
        return RestorePrefix(name, "cold/", at, to_bucket=dest, tuning=Tuning(tier="Bulk"))

    checked = run(restore(), name, check=True)
    assert checked.status == Status.CHANGED and "start 1 archive retrieval(s)" in checked.message
    first = run(restore(), name)
    assert first.status == Status.CHANGED, first.to_dict()
    assert "1 pending, retrieval started at " in first.message and "(tier Bulk)" in first.message
    assert "Contents" not in s3.list_objects_v2(Bucket=dest)
    # moto finishes a retrieval at once; on AWS this run would come hours later
    second = run(restore(), name)
    assert second.status == Status.CHANGED and "restored 1 key(s)" in second.message, second.to_dict()
    assert body(s3, dest, "cold/c.txt") == b"cold data"
    assert run(restore(), name).message.startswith("nothing to do")


# --- s3-bucket-check -------------------------------------------------------------------------


def test_bucket_check_reports_versioning_and_short_noncurrent_expiry(lab: Any) -> None:
    s3 = client()
    good, plain, short = bucket(s3), bucket(s3, None), bucket(s3)
    s3.put_bucket_lifecycle_configuration(
        Bucket=short,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "tidy",
                    "Status": "Enabled",
                    "Filter": {"Prefix": "logs/"},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
                },
                {
                    "ID": "long",
                    "Status": "Enabled",
                    "Filter": {},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
                },
            ]
        },
    )
    ok = run(BucketCheck(good, 30), good)
    assert ok.status == Status.OK, ok.to_dict()
    unversioned = run(BucketCheck(plain, 30), plain)
    assert unversioned.status == Status.FAILED and unversioned.message.startswith(
        "versioning is never enabled"
    )
    expiring = run(BucketCheck(short, 30), short)
    assert expiring.status == Status.FAILED
    assert "rule tidy (prefix 'logs/') after 7 day(s)" in expiring.message and "long" not in expiring.message
    assert run(BucketCheck(short, 5), short).status == Status.OK


# --- the real front end ----------------------------------------------------------------------


def inv_s3(*args: str, audit: Path, env: dict[str, str] | None = None) -> Any:
    environ = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": lab.S3_ENDPOINT,
        **(env or {}),
    }
    return inv(*args, audit=audit, env=environ, timeout=60)


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_front_end_object_restore_json(lab: Any, tmp_path: Path) -> None:
    s3 = client()
    name = bucket(s3)
    old = s3.put_object(Bucket=name, Key="a b/ü.txt", Body=b"old")
    time.sleep(0.01)
    s3.put_object(Bucket=name, Key="a b/ü.txt", Body=b"new")
    audit = tmp_path / "audit.jsonl"
    args = ("restore-s3-object", "--bucket", name, "--key", "a b/ü.txt", "--version-id", old["VersionId"])
    checked = inv_s3(*args, "--check", "--json", audit=audit)
    assert checked.code == 0, checked.stderr
    assert checked.host(f"s3:{name}")["status"] == "changed"
    done = inv_s3(*args, "--json", audit=audit)
    assert done.code == 0 and done.host(f"s3:{name}")["status"] == "changed", done.stdout + done.stderr
    assert body(s3, name, "a b/ü.txt") == b"old"
    again = inv_s3(*args, audit=audit)
    assert again.code == 0 and again.stdout.startswith(f"ok      s3:{name}: the current version ")
    records = audit_lines(audit)
    assert {r["task"] for r in records} == {"restore-s3-object"}
    assert [r["status"] for r in records if r["step"] == "restore"] == ["changed"]
    assert_no_secrets(checked.stdout, done.stdout, again.stdout, audit.read_text())


def test_front_end_prefix_check_lists_every_key(timeline: Timeline, tmp_path: Path) -> None:
    ran = inv_s3(
        "restore-s3-prefix",
        "--bucket",
        timeline.name,
        "--prefix",
        "copy/",
        "--at",
        iso(timeline.at),
        "--to-bucket",
        timeline.dest,
        "--to-prefix",
        "check/",
        "--check",
        audit=tmp_path / "audit.jsonl",
    )
    assert ran.code == 0, ran.stderr
    listing = "\n".join(line[4:] for line in ran.stdout.splitlines() if line.startswith("    "))
    assert sorted(planned(listing)) == [  # new.txt did not exist at the time and is not in the destination
        ("ok", "check/new.txt"),
        ("restore", "check/gone.txt"),
        ("restore", "check/keep.txt"),
        ("restore", "check/over.txt"),
    ]


@pytest.fixture(scope="module")
def denying_endpoint(lab: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """A private moto server that enforces IAM after setup, and a user with no permission at all.

    (The lab's shared server does not check permissions, and switching that on would break others.)
    """
    with labkit.private_moto(setup_calls=3) as endpoint:
        client(endpoint).create_bucket(Bucket="locked")  # 1
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        iam.create_user(UserName="nobody")  # 2
        key = iam.create_access_key(UserName="nobody")["AccessKey"]  # 3: from here on, IAM is enforced
        yield (
            endpoint,
            {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]},
        )


def test_front_end_bad_input(
    timeline: Timeline, tmp_path: Path, denying_endpoint: tuple[str, dict[str, str]]
) -> None:
    name = timeline.name
    audit = tmp_path / "audit.jsonl"
    base = ("restore-s3-object", "--bucket", name, "--key", "inplace/keep.txt")
    cases = {
        "unparseable time": ((*base, "--at", "last tuesday"), "error: --at 'last tuesday': give an ISO 8601"),
        "no timezone": (
            (*base, "--at", "2024-05-01T10:00:00"),
            "error: --at '2024-05-01T10:00:00' has no timezone",
        ),
        "unknown version": (
            (*base, "--version-id", "no-such-version"),
            f"error: s3://{name}/inplace/keep.txt: no version no-such-version",
        ),
        "two targets": (
            (*base, "--version-id", "x", "--at", "1h ago"),
            "error: give exactly one of --version-id, --at or --undelete (got --version-id and --at)",
        ),
        "missing bucket": (
            ("restore-s3-object", "--bucket", f"{name}-nope", "--key", "k", "--undelete"),
            f"error: s3://{name}-nope: the bucket does not exist",
        ),
        "missing prefix bucket": (
            (
                "restore-s3-prefix",
                "--bucket",
                name,
                "--prefix",
                "x/",
                "--at",
                "1h ago",
                "--to-bucket",
                f"{name}-nope",
            ),
            f"error: --to-bucket s3://{name}-nope: ",
        ),
    }
    before = s3_state(timeline)
    for label, (args, start) in cases.items():
        ran = inv_s3(*args, audit=audit)
        assert (ran.code, ran.stdout) == (2, ""), (label, ran)
        assert ran.stderr.startswith(start) and ran.stderr.count("\n") == 1, (label, ran.stderr)
        assert_no_secrets(ran.stderr)
    endpoint, nobody = denying_endpoint
    denied = inv_s3(
        "restore-s3-object",
        "--bucket",
        "locked",
        "--key",
        "k",
        "--undelete",
        audit=audit,
        env={**nobody, "AWS_ENDPOINT_URL": endpoint},
    )
    assert denied.code == 2 and denied.stderr.startswith("error: s3://locked: access denied"), denied
    assert denied.stderr.count("\n") == 1 and "Traceback" not in denied.stderr
    assert nobody["AWS_SECRET_ACCESS_KEY"] not in denied.stderr + audit.read_text()
    assert s3_state(timeline) == before  # nothing changed anywhere
    usage = [r for r in audit_lines(audit) if r["step"] == "arguments"]
    assert len(usage) == len(cases) + 1 and {r["status"] for r in usage} == {"failed"}
    assert_no_secrets(audit.read_text())


def s3_state(timeline: Timeline) -> str:
    pages = [timeline.s3.list_object_versions(Bucket=b) for b in (timeline.name, timeline.dest)]
    return json.dumps([[p.get("Versions"), p.get("DeleteMarkers")] for p in pages], default=str)
