"""The copy pool's gate (actions/s3throttle.py): halves on SlowDown, grows back one per window."""

from __future__ import annotations

import threading
import time

from botocore.exceptions import ClientError

from remediations.actions.s3throttle import Gate, throttled


def test_a_slowdown_halves_the_limit_once_per_burst_and_successes_win_it_back() -> None:
    gate = Gate(16, cut_every=60)
    for _ in range(5):  # one burst: the answers to requests that were all in flight together
        gate.slow_down()
    assert (gate.limit, gate.lowest, gate.slowdowns) == (8, 8, 5)
    for _ in range(8):  # a window of 8 successes: one slot more
        with gate.slot():
            pass
    assert 8.9 < gate.limit < 9.1
    gate.limit = 1.0
    gate._last_cut = -60.0
    gate.slow_down()
    assert gate.limit == 1.0  # never below one request


def test_the_gate_holds_requests_beyond_its_limit() -> None:
    gate = Gate(2)
    gate.limit = 2.0
    flying, most, lock = [0], [0], threading.Lock()

    def request() -> None:
        with gate.slot():
            with lock:
                flying[0] += 1
                most[0] = max(most[0], flying[0])
            time.sleep(0.02)
            with lock:
                flying[0] -= 1

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2


def test_throttled_tells_slowdown_from_other_errors() -> None:
    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}},
                       "CopyObject")
    denied = ClientError({"Error": {"Code": "AccessDenied"}}, "CopyObject")
    assert throttled(slow) and throttled(slow.response)
    assert not throttled(denied) and not throttled(None)


def test_a_request_still_throttled_after_botocore_is_sent_again() -> None:
    gate, calls = Gate(4), []

    def send() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ClientError({"Error": {"Code": "SlowDown"}}, "CopyObject")
        return "done"

    assert gate.throttled_retry(send) == "done" and len(calls) == 2
    denied = ClientError({"Error": {"Code": "AccessDenied"}}, "CopyObject")

    def refused() -> None:
        raise denied

    try:
        gate.throttled_retry(refused)
    except ClientError as exc:
        assert exc is denied  # not throttling: raised at once
