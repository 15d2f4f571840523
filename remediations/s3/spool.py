"""The plan of a prefix restore, kept out of memory: one plan per key, in key order, in a temporary
file, with only counts, sums and the few keys the result shows in memory.

`Spool.add` takes the plans as the listing decides them (in destination key order), writes them
to the file in batches of `BATCH` (length-prefixed pickles) and counts them; `iter(spool)` reads
them back in that order (each iteration reads on its own with `os.pread`, so two never disturb each
other), `spool.work()` only the changes. `Ahead` walks a sorted listing alongside them (the merge
of the source's keys with the destination's current objects, in gather and in verify).
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from remediations.s3.decide import ACTION_WORDS, KeyPlan, plan_lines

BATCH = 1000  # plans per record of the file
WORK = ("restore", "retrieve", "hide")  # the actions that change S3
SHOWN_NEW = 5  # new keys the result names
LISTING_ORDER = {"restore": 0, "retrieve": 1, "hide": 2, "wait": 3, "new": 4, "unchanged": 5}
ACTION_NAMES = {"unchanged": "ok", "restore": "to restore", "retrieve": "to retrieve", "wait": "pending",
                "new": "new (kept)", "hide": "new (to hide)"}  # fmt: skip
_LENGTH = struct.Struct("<Q")

T = TypeVar("T")


class Spool:
    """Every key's plan, on disk; in memory the counts, the byte sums and what the listing shows
    (the first `listed` plans of each action, and all of them while there are at most `listed`)."""

    def __init__(self, listed: int) -> None:
        self._file = tempfile.TemporaryFile(prefix="remediations-plan-")  # noqa: SIM115 (closed by close())
        self._end = 0
        self._batch: list[KeyPlan] = []
        self.listed = listed
        self.keys = 0
        self.counts = dict.fromkeys(ACTION_WORDS, 0)
        self.size = 0  # bytes of the keys as of --at
        self.copied = 0  # bytes the restore copies
        self.new: list[str] = []  # the first SHOWN_NEW keys created after --at
        self._all: list[KeyPlan] | None = []  # every plan while there are at most `listed`
        self._first: dict[str, list[KeyPlan]] = {action: [] for action in ACTION_WORDS}

    def add(self, plan: KeyPlan) -> None:
        self.keys += 1
        self.counts[plan.action] += 1
        if plan.version is not None:
            self.size += plan.version.size
        self.copied += copied(plan)
        if plan.action == "new" and len(self.new) < SHOWN_NEW:
            self.new.append(plan.dest_key)
        if self._all is not None:
            self._all.append(plan)
            if len(self._all) > self.listed:
                self._all = None
        first = self._first[plan.action]
        if len(first) < self.listed:
            first.append(plan)
        self._batch.append(plan)
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        data = pickle.dumps(self._batch, pickle.HIGHEST_PROTOCOL)
        os.pwrite(self._file.fileno(), _LENGTH.pack(len(data)) + data, self._end)
        self._end += _LENGTH.size + len(data)
        self._batch = []

    def __iter__(self) -> Iterator[KeyPlan]:
        self._flush()
        fd, at, end = self._file.fileno(), 0, self._end
        while at < end:
            (length,) = _LENGTH.unpack(os.pread(fd, _LENGTH.size, at))
            batch: list[KeyPlan] = pickle.loads(os.pread(fd, length, at + _LENGTH.size))  # noqa: S301 (our own file)
            at += _LENGTH.size + length
            yield from batch

    def work(self) -> Iterator[KeyPlan]:
        """The plans that change S3, in key order."""
        return (plan for plan in self if plan.action in WORK)

    @property
    def changes(self) -> int:
        return sum(self.counts[action] for action in WORK)

    def listing(self) -> str:
        """The per-key listing; past `listed` keys, the changes first and the rest counted."""
        if self._all is not None:
            return plan_lines(self._all)
        ranked = [plan for action in sorted(LISTING_ORDER, key=LISTING_ORDER.__getitem__)
                  for plan in self._first[action]][: self.listed]  # fmt: skip
        rest = dict(self.counts)
        for plan in ranked:
            rest[plan.action] -= 1
        counted = ", ".join(f"{rest[a]:,} {ACTION_NAMES[a]}" for a in ACTION_WORDS if rest[a])
        return plan_lines(ranked) + f"\n… and {self.keys - len(ranked):,} more key(s): {counted}"

    def close(self) -> None:
        self._file.close()


def copied(plan: KeyPlan) -> int:
    """The bytes a key's change copies (a retrieval or a delete marker copies none)."""
    return plan.version.size if plan.action == "restore" and plan.version is not None else 0


class Ahead(Generic[T]):
    """A sorted stream of (key, value) read alongside another sorted stream of keys."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._entries = iter(entries)
        self._next = next(self._entries, None)
        self.seen = 0  # entries taken out so far

    def _advance(self) -> tuple[str, T]:
        assert self._next is not None
        entry, self._next = self._next, next(self._entries, None)
        self.seen += 1
        return entry

    def before(self, key: str | None) -> Iterator[tuple[str, T]]:
        """The entries whose key sorts before `key` (None: all that are left), taken out."""
        while self._next is not None and (key is None or self._next[0] < key):
            yield self._advance()

    def take(self, key: str) -> T | None:
        """The value of `key` when it is the next entry (taken out), else None."""
        for _ in self.before(key):  # the caller has taken these already; none left normally
            pass
        if self._next is not None and self._next[0] == key:
            return self._advance()[1]
        return None

    def close(self) -> None:
        """Stop reading the stream (a listing read ahead in a thread stops asking for pages)."""
        close = getattr(self._entries, "close", None)
        if close is not None:
            close()

    def drain(self) -> int:
        """Take out what is left; how many entries there were in all."""
        for _ in self.before(None):
            pass
        return self.seen


class KeyLog:
    """Keys written down one by one to a temporary file (the keys a run restored): read back only
    when a result must name them all."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="remediations-keys-")  # noqa: SIM115 (closed by read())
        self.count = 0

    def add(self, key: str) -> None:
        self._file.write(key.encode() + b"\0")
        self.count += 1

    def read(self) -> list[str]:
        """Every key written down, in order; the file is closed after."""
        self._file.seek(0)
        data = self._file.read()
        self._file.close()
        return [key.decode() for key in data.split(b"\0")[:-1]]
