"""A plan: what a remediation decided to change on one host, as data the engine shows or applies.

A remediation's `decide` returns a `Plan`: the changes (`Change`, each with what it does in a few
words, the commands or calls it makes, an optional before/after diff, and the function that applies
it), or no change and the reason why. The engine records a plan in check mode as "would …" steps and
applies it otherwise; audit, `--diff` and `--json` read the same records. Work in several steps
(restart → wait → recreate) is a sequence of changes, or one change whose `apply` records the steps
it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remediations.core.context import HostContext

# Applies one change. It returns the message of its step (recorded as changed), or None when it
# recorded its own steps (`own_steps=True`): a restart that escalates to a recreate records both.
Apply = Callable[["HostContext"], "str | None"]


@dataclass(frozen=True)
class Change:
    step: str  # the step's name in results and audit ("restart", "ufw deny")
    summary: str  # what it does, in a few words: check mode says "would <summary>"
    apply: Apply
    diff: str = ""  # before/after, shown with --diff (secrets masked on the way out)
    commands: tuple[str, ...] = ()  # the commands or calls it makes, for --json and audit
    own_steps: bool = False  # apply records its own steps
    data: dict[str, Any] = field(default_factory=dict)  # recorded with the step (JSON)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    reason: str = ""  # with no change: why nothing is to be done ("already blocked")
    step: str = "decide"  # the step that records "nothing to do" (and check mode, unless a change says)
    check_step: str | None = None  # check mode records every change under this step name, if set
    data: dict[str, Any] = field(default_factory=dict)
    diff: str = ""  # with no change: what was compared, shown with --diff (a listing, a file)

    @classmethod
    def nothing(cls, reason: str, step: str = "decide", diff: str = "", **data: Any) -> Plan:
        return cls((), reason, step, data=data, diff=diff)

    @classmethod
    def of(cls, *changes: Change, step: str = "decide", check_step: str | None = None, **data: Any) -> Plan:
        return cls(tuple(changes), "", step, check_step, data)

    @property
    def empty(self) -> bool:
        return not self.changes
