"""restore-s3-prefix keeps its plan out of memory: the plans go to a temporary file (`spool.Spool`)
as the listing decides them, and the destination's listing is read alongside (`spool.Ahead`).

The listing pages come from botocore's own `before-call` hook (the request is built and signed as
usual, then answered here, nothing is sent): a prefix of any size without an endpoint."""

from __future__ import annotations

import datetime as dt
import io
import threading
import tracemalloc
from typing import Any

from botocore.awsrequest import AWSResponse

from remediations.actions.s3task import controller_targets
from remediations.actions.s3versions import S3, Tuning
from remediations.core import inventory
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.facts.s3 import Content, Version
from remediations.s3.decide import KeyPlan
from remediations.s3.restore_prefix import RestorePrefix
from remediations.s3.spool import Ahead, KeyLog, Spool

BEFORE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
AFTER = BEFORE + dt.timedelta(days=2)
INVENTORY = "all:\n  hosts:\n    controller: {ansible_connection: local}\n"


def generated(keys: int, pages: list[int]) -> Any:
    """A connect factory whose client answers ListObjectVersions with `keys` keys under data/, each
    overwritten after --at (two versions), 1000 entries a page; `pages` counts the pages asked."""

    def page(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        pages.append(1)
        query = params["query_string"]
        start = int(query.get("key-marker", "data/-1")[len("data/"):]) + 1
        end = min(start + int(query["max-keys"]) // 2, keys)
        entries = [{"Key": f"data/{i:07}", "VersionId": f"v{i}-{n}", "IsLatest": n == 1,
                    "LastModified": AFTER if n == 1 else BEFORE, "ETag": f'"{i:031x}{n}"', "Size": 100,
                    "StorageClass": "STANDARD"} for i in range(start, end) for n in (1, 0)]  # fmt: skip
        done: dict[str, Any] = {"Versions": entries, "IsTruncated": end < keys, "DeleteMarkers": []}
        if end < keys:
            done["NextKeyMarker"] = f"data/{end - 1:07}"
        return AWSResponse("", 200, {}, None), done

    def connect(host_vars: Any, tuning: Tuning) -> S3:
        s3 = S3({**host_vars, "s3_endpoint_url": "http://127.0.0.1:9"}, tuning)
        s3.client.meta.events.register("before-call.s3.ListObjectVersions", page)
        s3.client.meta.events.register("before-call.s3.GetBucketVersioning",
                                       lambda **_: (AWSResponse("", 200, {}, None), {"Status": "Enabled"}))
        return s3

    return connect


def check(keys: int, monkeypatch: Any) -> tuple[Any, int, int]:
    """--check over a generated prefix: (the host's result, peak traced bytes, pages listed)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNIT0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret")
    pages: list[int] = []
    inv = inventory.parse(INVENTORY, "unit")
    task = RestorePrefix("generated", "data/", (BEFORE + dt.timedelta(days=1)).isoformat(),
                         connect=generated(keys, pages), progress=io.StringIO())  # fmt: skip
    tracemalloc.start()
    try:
        engine = Engine(inv, RunOptions(check=True, diff=True))
        result = engine.run(task, controller_targets("generated")(inv))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result.hosts[0], peak, len(pages)


def test_the_plan_of_a_prefix_does_not_grow_in_memory_with_its_keys(monkeypatch: Any) -> None:
    """Five times the keys, about the same peak: before, each key's plan stayed in memory (about
    0.6 kB each: some 7 MB more here for 12,000 more keys)."""
    check(100, monkeypatch)  # botocore loads its models once: not part of either peak
    small, small_peak, small_pages = check(3_000, monkeypatch)
    large, large_peak, large_pages = check(15_000, monkeypatch)
    assert (small_pages, large_pages) == (6, 30)
    assert large.message.startswith("would restore 15000 key(s) (1.5 MB to copy) of 15,000 key(s)"), (
        large.message)
    listing = large.diff.splitlines()
    assert len(listing) == 1001 and listing[-1] == "… and 14,000 more key(s): 14,000 to restore"
    assert small.message.startswith("would restore 3000 key(s)"), small.message
    assert large_peak - small_peak < 1_500_000, (small_peak, large_peak)


def plan(key: str, action: str, size: int = 10) -> KeyPlan:
    version = Version(key, "v1", BEFORE, False, False, '"e"', size)
    return KeyPlan(key, key, action, "why", None if action in ("new", "unchanged") else version)


def test_the_spool_gives_the_plans_back_in_order_counted_and_two_readers_do_not_disturb_each_other() -> None:
    spool = Spool(listed=3)
    actions = ["unchanged", "restore", "new", "restore", "hide", "unchanged"] * 500
    for i, action in enumerate(actions):
        spool.add(plan(f"k{i:05}", action))
    assert spool.keys == 3000 and spool.changes == 1500
    assert spool.counts["restore"] == 1000 and spool.counts["hide"] == 500 and spool.counts["new"] == 500
    assert spool.copied == 10 * 1000 and spool.new == ["k00002", "k00008", "k00014", "k00020", "k00026"]
    first, second = iter(spool), iter(spool)
    together = [(a.dest_key, b.dest_key) for a, b in zip(first, second, strict=True)]
    assert [a for a, _ in together] == [b for _, b in together] == [f"k{i:05}" for i in range(3000)]
    assert [p.dest_key for p in spool.work()][:3] == ["k00001", "k00003", "k00004"]
    assert len(list(spool.work())) == 1500
    listing = spool.listing().splitlines()
    assert [line.split()[0] for line in listing[:3]] == ["restore"] * 3
    assert listing[-1] == ("… and 2,997 more key(s): 1,000 ok, 997 to restore, 500 new (kept), "
                           "500 new (to hide)")
    spool.close()


def test_a_small_spool_lists_every_key_in_key_order() -> None:
    spool = Spool(listed=10)
    for i, action in enumerate(["unchanged", "restore", "new"]):
        spool.add(plan(f"k{i}", action))
    assert [line.split()[-2] for line in spool.listing().splitlines()] == ["k0", "k1", "k2"]


def test_ahead_reads_a_sorted_listing_alongside_the_keys() -> None:
    read = threading.Event()

    def listing() -> Any:
        yield from [("a", Content(1, "1")), ("c", Content(3, "3"))]
        read.set()
        yield ("e", Content(5, "5"))

    ahead = Ahead(listing())
    assert list(ahead.before("b")) == [("a", Content(1, "1"))]
    assert ahead.take("b") is None
    assert not read.is_set()  # read as consumed (one entry ahead), not all at once
    assert ahead.take("c") == Content(3, "3")
    assert list(ahead.before(None)) == [("e", Content(5, "5"))]
    assert ahead.drain() == 3


def test_the_key_log_gives_back_every_key_written_down() -> None:
    log = KeyLog()
    keys = ["data/a", "data/é b", "", "data/z" * 100]
    for key in keys:
        log.add(key)
    assert log.count == 4 and log.read() == keys
