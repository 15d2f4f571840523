"""A copy pool that adapts to S3's throttling (503 SlowDown), as TCP adapts to loss.

S3 answers 503 SlowDown when a prefix gets more requests than it can take right now (it scales a
prefix up over minutes). `Gate` caps the requests in flight: it starts at the pool size, halves on
a SlowDown (at most once per `cut_every` seconds, so one burst of answers to requests that were all
in flight together counts once) and wins one slot back per `limit` successes (additive increase,
multiplicative decrease). botocore's standard retries still retry each request a few times; a
request S3 still throttles after those is sent again by `throttled_retry` after a jittered backoff
instead of failing its key. `Gate.observe(client)` sees every throttled attempt through botocore's
`needs-retry` hook (it only observes: botocore's own handler decides the retry).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from remediations.core import interrupt

THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "TooManyRequests", "TooManyRequestsException", "RequestThrottled"})  # fmt: skip
THROTTLED_ROUNDS = 6  # sends of a throttled request after botocore's own attempts: backoff 1+2+…+20 s
MAX_BACKOFF = 20.0

T = TypeVar("T")


def throttled(parsed: Any) -> bool:
    """Whether an S3 answer (botocore's parsed response, or a ClientError) says "slow down"."""
    response = getattr(parsed, "response", parsed)
    if not isinstance(response, dict):
        return False
    code = str((response.get("Error") or {}).get("Code") or "")
    return code in THROTTLING


class Gate:
    """At most `limit` requests in flight; halves on throttling, grows back by one per window."""

    def __init__(self, ceiling: int, cut_every: float = 0.5) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.lowest = ceiling  # the smallest limit it came down to (for the result and the curious)
        self.slowdowns = 0  # throttled answers seen
        self.cut_every = cut_every
        self._flying = 0
        self._last_cut = -cut_every
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while self._flying >= int(self.limit):
                self._cond.wait(0.5)
            self._flying += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._cond:
                self._flying -= 1
                if ok:
                    self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
                self._cond.notify_all()

    def slow_down(self) -> None:
        with self._cond:
            self.slowdowns += 1
            now = time.monotonic()
            if now - self._last_cut >= self.cut_every:
                self._last_cut = now
                self.limit = max(1.0, self.limit / 2)
                self.lowest = min(self.lowest, int(self.limit))

    def observe(self, client: Any) -> None:
        """Cut the limit on every throttled attempt botocore sees (before it retries)."""
        client.meta.events.register("needs-retry.s3", self._attempt)

    def _attempt(self, response: Any = None, **_: Any) -> None:
        if response is not None and throttled(response[1]):
            self.slow_down()

    def throttled_retry(self, send: Callable[[], T], *, rounds: int = THROTTLED_ROUNDS) -> T:
        """`send()` in a slot; sent again after a jittered backoff while S3 throttles it."""
        for round_ in range(rounds + 1):
            try:
                with self.slot():
                    return send()
            except Exception as exc:
                if not throttled(exc) or round_ == rounds or interrupt.requested():
                    raise
            interrupt.sleep(random.uniform(0.5, 1.0) * min(MAX_BACKOFF, 2.0**round_))  # noqa: S311
        raise AssertionError("unreachable")
