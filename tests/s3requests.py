"""Counting the S3 requests a client sends, with botocore's own event hooks (no proxy, no mock).

`Requests.attach(client)` registers on `before-send.s3`, which fires once per HTTP attempt (a
retried request counts again), so a count is what the endpoint received. `counted(connect)` wraps
the `connect` factory of the S3 remediations so every client they make is counted. Shared by the
request-count tests and scripts/bench_s3_prefix.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from remediations.actions.s3versions import S3, Tuning


class Requests:
    """S3 requests sent, by operation name (CopyObject, ListObjectVersions, …)."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._send)

    def _send(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self.sent[event_name.rsplit(".", 1)[-1]] += 1

    def take(self) -> dict[str, int]:
        """The counts so far (then zero again)."""
        with self._lock:
            sent, self.sent = dict(self.sent), Counter()
        return sent

    def counted(self, connect: Callable[[Mapping[str, Any], Tuning], S3] = S3
                ) -> Callable[[Mapping[str, Any], Tuning], S3]:  # fmt: skip
        def make(host_vars: Mapping[str, Any], tuning: Tuning) -> S3:
            s3 = connect(host_vars, tuning)
            self.attach(s3.client)
            return s3

        return make
