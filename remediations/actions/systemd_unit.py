"""Bring a systemd service back: restart, escalate as the unit's var says, wait until healthy.

The escalation is the unit's `escalate` list (`systemd_units`; default `[restart, stop-start]`):
- `restart`: `systemctl restart U`;
- `stop-start`: `systemctl stop U`, `systemctl reset-failed U` (which also clears systemd's start
  rate limit, the "start request repeated too quickly" a restart alone cannot get past), then
  `systemctl start U`.
After each, the unit is polled (one round trip: `systemctl show` and its URL) until it started
anew (another InvocationID), is `active` and its URL answers, or `health_timeout` passed; a unit
that started anew and then failed, went inactive or waits in `auto-restart` (it crashed) is not
waited on further, nor is one whose systemctl command failed (systemd refused or failed the job:
it is read once). When the last step did not bring it back, the step fails with the last
`journalctl -u U -n 50` lines, secrets masked (the unit's secret-looking `Environment=` values,
every known secret, and `name=value` pairs whose names look secret).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay

from remediations.actions.compose_service import poll_wait
from remediations.core import interrupt
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.remote import Remote
from remediations.core.results import Status
from remediations.facts.systemd import (
    JOURNAL_LINES,
    UnitFacts,
    UnitSettings,
    facts_command,
    journal_command,
    mask_line,
    parse_facts,
)

GATHER_TIMEOUT = 60.0
# What each step runs: one command line on the host (a failing reset-failed changes nothing).
STEP_COMMANDS = {
    "restart": lambda u: f"systemctl restart -- {u}",
    "stop-start": lambda u: f"systemctl stop -- {u}; systemctl reset-failed -- {u} 2>/dev/null; "
                            f"systemctl start -- {u}",
    "start": lambda u: f"systemctl reset-failed -- {u} 2>/dev/null; systemctl start -- {u}",
}  # fmt: skip


def gather(remote: Remote, units: Sequence[UnitSettings]) -> list[UnitFacts]:
    """The facts of `units` in one round trip; HostError when the host cannot be asked at all."""
    if not units:
        return []
    result = remote.run(facts_command(units), timeout=GATHER_TIMEOUT)
    facts = parse_facts(units, result.stdout)
    if facts and facts[0].error:
        raise HostError(f"reading the units failed: {facts[0].error}", result)
    return facts


def decide(facts: UnitFacts) -> tuple[str, str]:
    """Pure: what ensure-healthy does about one unit: ("none" | "start" | "restart", why)."""
    healthy, why = facts.verdict()
    if healthy:
        return "none", f"{facts.unit} is healthy ({why})"
    if facts.starting:
        return "none", f"{facts.unit} is still starting ({why}); left alone"
    if facts.active_state in ("inactive", "failed", "deactivating"):
        return "start", f"{facts.unit} is {why}"
    return "restart", f"{facts.unit} is not healthy: {why}"


def step_command(step: str, unit: str) -> str:
    return STEP_COMMANDS[step](shlex.quote(unit))


def gave_up(now: UnitFacts, before: UnitFacts) -> bool:
    """Started anew and then stopped, failed, or crashed (systemd waits to restart it): not worth
    waiting on until the deadline."""
    if not now.restarted_since(before):
        return False
    return now.active_state in ("failed", "inactive") or now.sub_state == "auto-restart"


def wait_until_healthy(read: Callable[[], UnitFacts], before: UnitFacts, timeout: float) -> UnitFacts:
    """Poll until the unit started anew and is healthy, gave up (`gave_up`), or `timeout` passed:
    the last facts read either way."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=poll_wait(),
        retry=retry_if_result(lambda now: not ((now.restarted_since(before) and now.healthy)
                                               or gave_up(now, before))),
        retry_error_callback=_last_read,
        sleep=interrupt.sleep,
    )  # fmt: skip
    current: UnitFacts = retrying(read)
    return current


def _last_read(state: RetryCallState) -> UnitFacts:
    assert state.outcome is not None  # the deadline is looked at only after a read
    last: UnitFacts = state.outcome.result()
    return last


def journal(ctx: HostContext, facts: UnitFacts, lines: int = JOURNAL_LINES) -> list[str]:
    """The unit's last journal lines, masked (see the module docstring)."""
    for value in facts.secret_values():
        ctx.redactor.add_value(value)
    result = ctx.remote.run(journal_command(facts.unit, lines), timeout=30)
    text = result.stdout.strip() or result.stderr.strip()
    return [ctx.redactor.text(mask_line(line)) for line in text.splitlines()[-lines:]]


def recover(ctx: HostContext, settings: UnitSettings, before: UnitFacts, action: str,
            step_prefix: str = "") -> bool:  # fmt: skip
    """`restart` (through the unit's escalation) or `start` (an inactive or failed unit), each step
    waited on. Records its steps; True when healthy at the end, else the last step failed with the
    journal."""
    unit = settings.unit
    steps = list(settings.escalate) if action == "restart" else ["start"]
    for value in before.secret_values():
        ctx.redactor.add_value(value)

    def read() -> UnitFacts:
        return gather(ctx.remote, [settings])[0]

    current = before
    for index, step_name in enumerate(steps):
        last = index == len(steps) - 1
        with ctx.step(f"{step_prefix}{step_name}") as step:
            start = time.monotonic()
            done = ctx.remote.run(step_command(step_name, unit), timeout=settings.health_timeout + 120)
            # systemd refused or failed the job (a start limit hit, a failed start of a oneshot or
            # notify unit): its state says so now, waiting would not change it
            current = wait_until_healthy(read, current, settings.health_timeout) if done.ok else read()
            waited = time.monotonic() - start
            ok, why = current.verdict()
            said = "" if done.ok else f" (systemctl exit {done.exit_code}: {done.tail(2)})"
            if ok and current.restarted_since(before):
                step.done(Status.CHANGED, f"{_done(step_name)} {unit}; healthy after {waited:.1f}s "
                          f"(MainPID {before.main_pid} → {current.main_pid}; {why})",
                          before=before.summary(), after=current.summary())  # fmt: skip
                return True
            if not last:
                step.done(Status.CHANGED, f"{_done(step_name)} {unit}; not healthy after {waited:.1f}s "
                          f"({why}){said}; escalating to {steps[index + 1]}")  # fmt: skip
                continue
            lines = journal(ctx, current)
            tried = " and ".join(steps)
            step.done(Status.FAILED,
                      f"{unit} not healthy after {tried} ({waited:.0f}s): {why}{said}; last "
                      f"{len(lines)} journal lines (journalctl -u {unit} -n {JOURNAL_LINES}):\n"
                      + "\n".join(lines),
                      journal=lines, after=current.summary())  # fmt: skip
    return False


def _done(step: str) -> str:
    return {"restart": "restarted", "stop-start": "stopped and started", "start": "started"}[step]
