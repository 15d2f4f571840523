"""restore-s3-prefix: bring every key under s3://BUCKET/PREFIX back to its state at a time.

facts   versioning of the destination; every version and delete marker under the prefix (paged by
        KeyMarker/VersionIdMarker), the destination's current objects when restoring elsewhere, HEAD
        of the archived versions involved;
decide  `decide.plan_key` per key as soon as the listing has all its entries: unchanged, restore,
        retrieve, pending, new (left alone) or hide (--delete-new); the plans go to a temporary file
        (`spool.Spool`): memory holds the counts and what the listing shows, not a plan per key;
apply   the copies, delete markers and retrievals in a bounded pool (a bounded queue ahead of it);
        an endpoint that stops answering stops the run with the keys restored so far;
verify  one listing of the destination's current objects (ListObjectsV2), read alongside the plans:
        every planned key holds the bytes of its version at --at (ETag and size), hidden and absent
        keys are absent.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from remediations.actions import s3client
from remediations.actions.s3client import S3Unanswered, is_endpoint_down
from remediations.actions.s3task import BUCKET, TUNING, S3Task, tuning
from remediations.actions.s3throttle import Gate
from remediations.actions.s3versions import S3, Tuning
from remediations.core import interrupt, validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age, human_bytes
from remediations.facts.s3 import ARCHIVED, Content, Listing, Version, history, iso, parse_at, same_content
from remediations.reporting.progress import Meter, Progress
from remediations.s3.decide import KeyPlan, dest_key, plan_key, plan_lines, refine_archived
from remediations.s3.spool import Ahead, KeyLog, Spool, copied

LISTED_KEYS = 1000  # a listing of more keys shows these, changes first, and counts the rest
QUEUED_PER_WORKER = 4  # keys handed to the copy pool ahead of its workers


@dataclass
class Facts:
    s3: S3
    spool: Spool  # every key's plan
    progress: Progress
    applied: Applied | None = None  # what the apply did (set by it)


class RestorePrefix(S3Task):
    """Restore every key under a prefix to its state at a time.

    Overwritten keys get their version of that time back and deleted keys come back (copies: history
    is kept); keys created later are left alone and listed (--delete-new hides them). Copies run in a
    bounded pool, throttling, 5xx and timeouts are retried with backoff, and progress (listing,
    copying with % and ETA, verifying) goes to stderr (off a terminal: each phase's first and last
    line, and one per progress_interval, 60 s). Every S3 request is bounded (s3_connect_timeout 5 s,
    s3_read_timeout 30 s, s3_max_attempts 3: 108 s at most); a request waiting longer than
    s3_progress_interval (10 s) is reported on stderr, and an endpoint that stops answering stops the
    run with the keys restored so far. --check leads with the totals and lists each key (at most
    1000, changes first) and what would happen to it. A second run finds nothing to do.
    """

    task: ClassVar[str] = "restore-s3-prefix"
    params = args(
        BUCKET,
        Arg("prefix", "restore every key under this prefix (required; '' for the whole bucket)"),
        Arg("at", "the time to restore to: ISO 8601 with a timezone or relative ('2h ago') (required)"),
        Arg("to_bucket", "write the restored keys into this bucket instead (versioning must be Enabled)"),
        Arg("to_prefix", "write the restored keys under this prefix instead of --prefix"),
        Arg("delete_new", "hide keys created after --at behind a delete marker (reversible with "
            "restore-s3-object --undelete); default: leave them and list them", kind="flag"),
        *TUNING,
    )  # fmt: skip

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        values = dict(values)
        knobs = tuning(values)
        return cls(values.pop("bucket"), values.pop("prefix"), values.pop("at"), tuning=knobs, **values)

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
                self.read_versioning(host, s3, self.to_bucket)


    def gather(self, ctx: HostContext) -> Facts:
        s3 = self.s3(ctx)
        progress = Progress(self.task, self._progress, validate.value(ctx.host, "progress_interval"))
        self.require_versioning(ctx, s3, self.destination[0])
        with ctx.step("facts") as step, s3.failing(f"s3://{self.bucket}/{self.prefix}: facts"):
            spool, listing = self._plan(s3, progress)
            step.done(Status.OK, f"{spool.keys} key(s) under s3://{self.bucket}/{self.prefix} in "
                      f"{listing.pages} listing page(s)", keys=spool.keys, pages=listing.pages,
                      marker_only_pages=listing.marker_only_pages)  # fmt: skip
        return Facts(s3, spool, progress)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        spool = facts.spool
        counts, new = dict(spool.counts), spool.new
        listing = spool.listing()
        if not spool.changes:
            return Plan(reason=self._nothing_message(counts, new), data=dict(counts),
                        diff=listing if counts["wait"] or counts["new"] else "")  # fmt: skip
        summary = self._summary(counts, new, self._totals(spool))

        def apply(ctx: HostContext) -> None:
            ctx.record("decide", Status.OK, summary, diff=listing, **counts)
            self._restore(ctx, facts, counts, new)

        return Plan.of(Change("restore", summary, apply, diff=listing, own_steps=True, data=counts),
                       check_step="decide")  # fmt: skip

    def _restore(self, ctx: HostContext, facts: Facts, counts: Mapping[str, int], new: Sequence[str]) -> None:
        with ctx.step("restore") as step:
            applied = facts.applied = self._apply(facts.s3, facts.spool, facts.progress)
            done, failures = applied.done, applied.failures
            if applied.silence:
                step.done(Status.FAILED, self._stopped(applied), diff=applied.listing(),
                          restored=done["restore"], hidden=done["hide"], retrievals=done["retrieve"],
                          failed=len(failures), restored_keys=applied.restored_keys,
                          unanswered_keys=applied.unanswered_keys, not_sent=len(applied.not_sent))
                return
            step.done(Status.FAILED if failures else Status.CHANGED,
                      self._applied(done, failures, applied.started, counts, new) + applied.throttling(),
                      diff="\n".join(f"failed    {key}  {why}" for key, why in failures),
                      restored=done["restore"], hidden=done["hide"], retrievals=done["retrieve"],
                      failed=len(failures), slowdowns=applied.slowdowns)  # fmt: skip

    def verify(self, ctx: HostContext, facts: Facts, plan: Plan) -> None:
        if facts.applied is None or facts.applied.silence:
            return  # verifying would ask the silent endpoint again: the next run re-plans
        dest_bucket, dest_prefix = self.destination
        with ctx.step("verify") as step, facts.s3.failing(f"s3://{self.bucket}/{self.prefix}: verify"):
            current = Ahead(self._list_current(facts.s3, facts.progress, "verifying: "))
            left: list[KeyPlan] = []  # the first LISTED_KEYS keys not settled
            unsettled = 0
            with closing(current):
                for wanted in facts.spool:
                    if not settled(wanted, current.take(wanted.dest_key)):
                        unsettled += 1
                        if len(left) < LISTED_KEYS:
                            left.append(wanted)
                found = current.drain()
            facts.progress.end(f"verifying: listed {found:,} current object(s) under s3://{dest_bucket}/{dest_prefix}")
            if unsettled:
                more = f"\n… and {unsettled - len(left):,} more key(s)" if unsettled > len(left) else ""
                step.done(Status.FAILED, f"{unsettled} key(s) still not at their state of {iso(self._when)}: "
                          + ", ".join(p.dest_key for p in left[:5]), diff=plan_lines(left) + more)
            else:
                # retrievals started now are copied by a later run
                waiting = facts.spool.counts["retrieve"] + facts.spool.counts["wait"]
                pending_text = f" except {waiting} pending retrieval(s)" if waiting else ""
                step.done(Status.OK, f"every key under s3://{dest_bucket}/{dest_prefix} is at its state of "
                          f"{iso(self._when)}{pending_text}")

    def _list_current(self, s3: S3, progress: Progress, phase: str = "") -> Iterator[tuple[str, Content]]:
        """The destination's current objects in key order (one ListObjectsV2 pass, read as it is
        consumed, progress.end left to the caller): what a restore elsewhere starts from, what the
        verify compares."""
        dest_bucket, dest_prefix = self.destination
        where = f"s3://{dest_bucket}/{dest_prefix}"
        progress.begin(f"{phase}listing current objects under {where} …")

        def on_page(pages: int, found: int) -> None:
            progress.update(lambda: f"{phase}listing current objects under {where}: {found:,} so far "
                            f"({pages} page(s))")  # fmt: skip

        return s3.iter_current(dest_bucket, dest_prefix, self._tuning.page_size, on_page)

    def _plan(self, s3: S3, progress: Progress, phase: str = "") -> tuple[Spool, Listing]:
        """Plan each key as soon as the listing has all its entries, reading the destination's
        listing alongside (both in key order) when restoring elsewhere: neither the versions nor a
        plan per key stay in memory (the plans go to the spool, a page at a time)."""
        dest_prefix = None if self.in_place else self.destination[1]
        listing, spool, batch = Listing(), Spool(LISTED_KEYS), []
        # Both listings are asked for from here on, side by side (each a page ahead of its reader).
        dest_objects = () if self.in_place else self._list_current(s3, progress, phase)
        versions = self._stream_versions(s3, progress, phase, listing)
        current: Ahead[Content] = Ahead(dest_objects)
        heads = _Heads(self, s3, progress, phase)
        with closing(current), closing(versions), \
                ThreadPoolExecutor(max_workers=self._tuning.workers, thread_name_prefix="s3head") as pool:
            for key, entries in versions:
                hist = history(entries)
                target = dest_key(key, self.prefix, dest_prefix)
                batch += self._only_there(current.before(target))
                now, now_id = current.take(target), None
                if self.in_place and not hist[0].is_delete_marker:
                    now, now_id = hist[0].content, hist[0].version_id
                batch.append(plan_key(key, target, hist, self._when, now, now_id, self.delete_new,
                                      self.in_place))  # fmt: skip
                if len(batch) >= self._tuning.page_size:
                    heads.refine(pool, batch, spool)
                    batch = []
            batch += self._only_there(current.before(None))
            heads.refine(pool, batch, spool)
        if not self.in_place:
            where = f"s3://{self.destination[0]}/{self.destination[1]}"
            progress.end(f"{phase}listed {current.seen:,} current object(s) under {where}")
        heads.done()
        return spool, listing

    def _only_there(self, entries: Iterator[tuple[str, Content]]) -> list[KeyPlan]:
        """Keys only in the destination: new there."""
        return [plan_key(target, target, [], self._when, now, None, self.delete_new, in_place=False)
                for target, now in entries]  # fmt: skip

    def _stream_versions(self, s3: S3, progress: Progress, phase: str, listing: Listing
                         ) -> Generator[tuple[str, list[Version]], None, None]:  # fmt: skip
        """The prefix's keys with their entries as the pages come (asked for from this call on),
        with the listing's progress lines."""
        where = f"s3://{self.bucket}/{self.prefix}"
        started = time.monotonic()

        def so_far() -> str:
            return (f"{phase}listing versions under {where}: {listing.entries:,} version(s) of "
                    f"{listing.keys:,} key(s) so far ({listing.pages} page(s))")  # fmt: skip

        progress.begin(f"{phase}listing versions under {where} …")
        keys = s3.stream_versions(self.bucket, self.prefix, self._tuning.page_size, listing,
                                  on_page=lambda _: progress.update(so_far))  # fmt: skip

        def listed() -> Generator[tuple[str, list[Version]], None, None]:
            with closing(keys):
                yield from keys
            progress.end(f"{phase}listed {listing.entries:,} version(s) of {listing.keys:,} key(s) under "
                         f"{where} in {listing.pages} page(s), {human_age(time.monotonic() - started)}")

        return listed()

    def _apply(self, s3: S3, spool: Spool, progress: Progress) -> Applied:
        """Every planned change in the copy pool, read from the spool as the pool takes them (at
        most QUEUED_PER_WORKER per worker queued). The first request the endpoint does not answer
        (or cannot be sent) stops the run: queued and unread keys are not sent, those in flight end
        within their own bound, and the result lists what was restored before that."""
        applied = Applied(started=iso(dt.datetime.now(dt.UTC)))
        silent = threading.Event()
        gate = Gate(self._tuning.workers)
        gate.observe(s3.client)
        meter = Meter(spool.changes, spool.copied)
        progress.begin(f"copying {meter.keys:,} key(s), {human_bytes(meter.size)}, "
                       f"{self._tuning.workers} at a time …")
        futures: dict[Future[str], KeyPlan] = {}
        finished: queue.SimpleQueue[Future[str]] = queue.SimpleQueue()  # each future once it is done

        def collect() -> None:
            future = finished.get()
            self._collect(s3, future, futures, applied)
            meter.add(copied(futures.pop(future)))
            progress.update(lambda: f"copying: {meter.text()}")

        work = spool.work()
        try:
            with ThreadPoolExecutor(max_workers=self._tuning.workers, thread_name_prefix="s3copy") as pool:
                for plan in work:
                    future = pool.submit(self._send, s3, plan, silent, gate)
                    futures[future] = plan
                    future.add_done_callback(finished.put)
                    while len(futures) >= self._tuning.workers * QUEUED_PER_WORKER:
                        collect()
                    if applied.silence:
                        break
                while futures:
                    collect()
            applied.not_sent += [plan.dest_key for plan in work]  # never handed to the pool
        finally:
            ended = "copying stopped" if applied.silence else "copied"  # failures: the result line
            applied.slowdowns, applied.lowest = gate.slowdowns, gate.lowest
            progress.end(f"{ended}: {meter.text()}; {human_age(time.monotonic() - meter.start)}"
                         + applied.throttling())
        restored = applied.restored.read()  # named in the result only when the run stopped short
        applied.restored_keys = restored if applied.silence else []
        applied.failures.sort()
        for keys in (applied.restored_keys, applied.unanswered_keys, applied.not_sent):
            keys.sort()
        return applied

    def _send(self, s3: S3, plan: KeyPlan, silent: threading.Event, gate: Gate) -> str:
        """One key's change, in a worker of the copy pool (within the gate's limit, sent again while
        S3 throttles it); the action it took."""
        if silent.is_set() or interrupt.requested():
            raise _NotSent
        dest_bucket, _ = self.destination

        def send() -> None:
            if plan.action == "hide":
                s3.client.delete_object(Bucket=dest_bucket, Key=plan.dest_key)
            elif plan.action == "retrieve":
                assert plan.version is not None
                s3.start_retrieval(self.bucket, plan.key, plan.version, self._tuning)
            else:
                assert plan.version is not None
                s3.copy(self.bucket, plan.key, plan.version, dest_bucket, plan.dest_key, self._tuning)

        try:
            gate.throttled_retry(send)
        except Exception as exc:
            if isinstance(exc, S3Unanswered) or is_endpoint_down(exc):
                silent.set()  # here, before this worker takes the next key
            raise
        return plan.action

    @staticmethod
    def _collect(s3: S3, future: Future[str], futures: Mapping[Future[str], KeyPlan], applied: Applied
                 ) -> None:  # fmt: skip
        """Count one finished key; the first silence (or an interrupt) cancels the queued ones."""
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
            return
        except (s3client.ClientError, s3client.BotoCoreError, HostError) as exc:
            why = s3.explain(exc) if not isinstance(exc, HostError) else str(exc)
            if isinstance(exc, S3Unanswered) or is_endpoint_down(exc):
                applied.unanswered_keys.append(plan.dest_key)
                if not applied.silence:
                    applied.silence = why
                    for queued in futures:
                        queued.cancel()
            else:
                applied.failures.append((plan.dest_key, why))
            return
        applied.done[action] += 1
        if action == "restore":
            applied.restored.add(plan.dest_key)

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

    def _totals(self, spool: Spool) -> str:
        """What --check leads with on a prefix of any size: how much there is and how much is copied."""
        return (f" ({human_bytes(spool.copied)} to copy) of {spool.keys:,} key(s), "
                f"{human_bytes(spool.size)} at "
                f"{iso(self._when)}, under s3://{self.bucket}/{self.prefix}")

    def _summary(self, counts: Mapping[str, int], new: Sequence[str], totals: str = "") -> str:
        parts = [f"restore {counts['restore']} key(s)"] if counts["restore"] else []
        if counts["retrieve"]:
            parts.append(f"start {counts['retrieve']} archive retrieval(s)")
        if counts["hide"]:
            parts.append(f"hide {counts['hide']} new key(s) behind delete markers")
        return ", ".join(parts) + totals + self._tail(counts, new)

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
        if counts["new"]:  # `new`: the first few of them
            more = counts["new"] - len(new[:5])
            shown = ", ".join(new[:5]) + (f" and {more} more" if more else "")
            tail += f"; {counts['new']} key(s) created after {iso(self._when)} left alone: {shown}"
        return tail

    def _nothing_message(self, counts: Mapping[str, int], new: Sequence[str]) -> str:
        dest_bucket, dest_prefix = self.destination
        return (f"nothing to do: s3://{dest_bucket}/{dest_prefix} is at its state of {iso(self._when)}"
                + self._tail(counts, new))



def settled(plan: KeyPlan, now: Content | None) -> bool:
    """After the apply: whether the key's current object (from ListObjectsV2) is what the plan wanted.

    Keys kept as they are (new, or waiting for a retrieval) are settled; a key absent at --at (or
    hidden) must be absent; any other must hold the bytes of its version at --at (its ETag and size
    prove it, as they did in the plan).
    """
    if plan.action in ("new", "retrieve", "wait"):
        return True
    if plan.version is None or plan.action == "hide":
        return now is None
    return now is not None and same_content(plan.version.content, now) is True


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
    restored: KeyLog = field(default_factory=KeyLog)  # the keys restored, written down as they are
    restored_keys: list[str] = field(default_factory=list)  # read back from it when the run stopped short
    unanswered_keys: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)
    slowdowns: int = 0  # 503 SlowDown answers seen
    lowest: int = 0  # the fewest copies in flight the pool came down to

    def throttling(self) -> str:
        if not self.slowdowns:
            return ""
        return f"; S3 answered SlowDown {self.slowdowns} time(s): {self.lowest} copies at a time at the least"

    def listing(self) -> str:
        return "\n".join([*(f"restored  {k}" for k in self.restored_keys),
                          *(f"no answer {k}" for k in self.unanswered_keys),
                          *(f"not sent  {k}" for k in self.not_sent),
                          *(f"failed    {k}  {why}" for k, why in self.failures)])  # fmt: skip




class _Heads:
    """HEAD of the archived versions a batch of plans would copy (in the head pool), then the batch
    to the spool: an archived version must be retrieved before it can be copied."""

    def __init__(self, task: RestorePrefix, s3: S3, progress: Progress, phase: str) -> None:
        self.task, self.s3, self.progress, self.phase = task, s3, progress, phase
        self.read = 0

    def refine(self, pool: ThreadPoolExecutor, batch: list[KeyPlan], spool: Spool) -> None:
        archived = [i for i, p in enumerate(batch) if p.action == "restore" and p.version
                    and p.version.storage_class in ARCHIVED]  # fmt: skip
        if archived and not self.read:
            self.progress.begin(f"{self.phase}reading the state of the archived versions …")
        for index, refined in zip(archived, pool.map(lambda i: self._head(batch[i]), archived), strict=True):
            batch[index] = refined
        self.read += len(archived)
        for plan in batch:
            spool.add(plan)

    def _head(self, plan: KeyPlan) -> KeyPlan:
        assert plan.version is not None
        head = self.s3.head(self.task.bucket, plan.key, plan.version.version_id)
        return plan if head is None else refine_archived(plan, head)

    def done(self) -> None:
        if self.read:
            self.progress.end(f"{self.phase}read the state of {self.read:,} archived version(s)")
