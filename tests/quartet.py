"""The quartet every changing remediation passes (from the Ansible ufw module's integration tests):

    check        reports changed on every host, and changes nothing (the state read before and after
                 it is the same)
    apply        reports changed
    apply again  reports ok: nothing left to change
    check again  reports ok, and changes nothing

`quartet(...)` runs the four and asserts them once; it returns the four results for the assertions a
test adds about messages, diffs and data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.labkit import Ran, inv

Runner = Callable[..., Ran]


@dataclass(frozen=True)
class Quartet:
    check: Ran
    apply: Ran
    again: Ran
    check_again: Ran


def statuses(ran: Ran) -> dict[str, str]:
    return {h["host"]: h["status"] for h in ran.json()["hosts"]}


def quartet(
    *args: str,
    hosts: Sequence[str],
    audit: Path,
    state: Callable[[], Any],
    run: Runner = inv,
    **options: Any,
) -> Quartet:
    """Run the task `args` (task name first, --host included) four times with --json and assert the
    quartet on `hosts`; `state` reads what the task changes (compared around each check run)."""

    def once(*extra: str) -> Ran:
        ran = run(*args, *extra, "--json", audit=audit, **options)
        command = " ".join((*args, *extra))
        assert ran.code in (0, 3), f"{command}: exit {ran.code}\n{ran.stdout}{ran.stderr}"
        return ran

    def expect(ran: Ran, status: str, which: str) -> None:
        got = statuses(ran)
        assert {h: got.get(h) for h in hosts} == {h: status for h in hosts}, f"{which}: {ran.stdout}"

    before = state()
    check = once("--check")
    expect(check, "changed", "check")
    assert state() == before, "check mode changed something"
    apply = once()
    expect(apply, "changed", "apply")
    changed = state()
    assert changed != before, "apply reported changed but the state it reads is the same"
    again = once()
    expect(again, "ok", "apply again")
    assert state() == changed, "the second apply changed something"
    check_again = once("--check")
    expect(check_again, "ok", "check again")
    assert state() == changed, "check mode changed something"
    return Quartet(check, apply, again, check_again)
