"""The health wait's policy (actions.compose_service): a short, bounded backoff and the same deadline."""

from __future__ import annotations

import time

from tenacity import RetryCallState, Retrying

from remediations.actions.compose_service import POLL_MAX, poll_wait, wait_until
from remediations.facts.compose import ServiceFacts


def pauses(count: int) -> list[float]:
    """The pause before each of the first `count` polls after the first."""
    policy = poll_wait()
    state = RetryCallState(Retrying(), None, (), {})
    out = []
    for attempt in range(1, count + 1):
        state.attempt_number = attempt
        out.append(policy(state))
    return out


def test_first_pauses_are_short_then_grow_to_a_bound() -> None:
    schedule = pauses(12)
    assert 0.1 <= schedule[0] <= 0.2
    assert schedule == sorted(schedule)  # never shorter than the one before
    assert max(schedule) == POLL_MAX <= 2.0
    assert schedule[-1] == POLL_MAX  # a slow service is polled at most once a POLL_MAX
    assert sum(schedule[:4]) < 1.0  # four polls in the first second (a 1 s tick makes one)


def test_done_ends_the_wait_at_the_first_good_read() -> None:
    reads = iter([ServiceFacts("api", "v2", error=str(n)) for n in range(10)])
    seen: list[str] = []

    def read() -> ServiceFacts:
        facts = next(reads)
        seen.append(facts.error)
        return facts

    got = wait_until(read, lambda f: f.error == "2", timeout=30)
    assert got.error == "2" and seen == ["0", "1", "2"]


def test_deadline_is_honoured_and_the_last_read_returned() -> None:
    """Never healthy: reads stop once the deadline passed, and the last one is the answer."""
    count = 0

    def read() -> ServiceFacts:
        nonlocal count
        count += 1
        return ServiceFacts("api", "v2", error=f"read {count}")

    start = time.monotonic()
    got = wait_until(read, lambda f: False, timeout=1.2)
    took = time.monotonic() - start
    assert 1.2 <= took < 1.2 + POLL_MAX + 0.5
    assert got.error == f"read {count}"
    assert count >= 5  # 0, 0.1, 0.25, 0.48, 0.81 s: a 1 s tick would have read twice

