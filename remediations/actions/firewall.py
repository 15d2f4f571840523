"""What the firewall tasks do on a host, in one round trip each: read the facts (the "facts" step),
and apply a `FirewallPlan` (its commands under `set -e`, the state file, then the facts again) in
one "apply" step that also verifies the result; `plan_of` makes the engine's `Plan` of it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from typing import Any

from remediations.actions import remote_write
from remediations.actions.firewall_rules import FirewallPlan
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.plan import Change, Plan
from remediations.core.remote import Remote
from remediations.core.results import Status
from remediations.facts.firewall import (
    COMMAND_TIMEOUT,
    DOCKER_CHAIN,
    BlockRecord,
    FirewallFacts,
    StatePath,
    facts_command,
    gather,
    parse_facts,
    render_state,
)
from remediations.facts.sections import MARK
from remediations.facts.sections import sections_by_name as sections
from remediations.facts.ufw import Target

Check = Callable[[FirewallFacts, str], str]  # (facts, apply output) -> "" when as intended, else why not
Outcome = Callable[[FirewallFacts, str], tuple[str, dict[str, Any]]]  # the result line and its data


def apply_command(plan: FirewallPlan, state: StatePath, about: Target | None = None) -> str:
    """The plan's commands under `set -e`, then the new state file from stdin, then the commands
    that need the block in place (conntrack -D), then the facts."""
    body = list(plan.commands)
    if plan.state is not None:
        body.append(state_write(plan.state, state).command())
    body += plan.after
    script = "\n".join(["set -e", *body])
    return "\n".join(
        [
            f"out=$(sh -c {shlex.quote(script)} 2>&1); rc=$?",
            f'echo "{MARK}apply $rc"; printf "%s\\n" "$out"',
            facts_command(state, about),
        ]
    )


def state_write(records: Iterable[BlockRecord], state: StatePath) -> remote_write.Write:
    """The state file as one checked write: whole or not at all, whatever happens to the stream."""
    return remote_write.Write(state.file, render_state(records).encode(), make_dir=True)


def apply(
    remote: Remote, plan: FirewallPlan, state: StatePath, about: Target | None = None
) -> tuple[FirewallFacts, str]:
    """The facts afterwards, and what the commands printed."""
    stdin = state_write(plan.state, state).stdin if plan.state is not None else b""
    result = remote.run(apply_command(plan, state, about), stdin=stdin, timeout=COMMAND_TIMEOUT)
    found = sections(result.stdout)
    code, output = found.get("apply", ("", result.stderr))
    if code != "0":
        detail = "\n".join(output.strip().splitlines()[-5:]) or result.tail()
        raise HostError(
            f"applying the firewall change failed (exit {code or result.exit_code}): {detail}", result
        )
    return parse_facts(result.stdout, state), output


def read_facts(ctx: HostContext, about: Target | None = None) -> FirewallFacts | None:
    """The "facts" step; None when the facts are not usable (the step failed and says why)."""
    with ctx.step("facts") as step:
        state = StatePath.from_host(ctx.host)
        # Under the lock the facts came with it (same round trip); in --check they are read here.
        prefetched = ctx.prefetched
        facts = gather(ctx.remote, state, about) if prefetched is None else parse_facts(prefetched, state)
        if facts.error:
            step.done(Status.FAILED, facts.error)
            return None
        ufw = "no ufw"
        if facts.ufw_installed:
            ufw = "ufw active" if facts.ufw_active else "ufw INACTIVE"
        docker = f"{DOCKER_CHAIN} present" if facts.docker4 or facts.docker6 else f"no {DOCKER_CHAIN}"
        step.done(
            Status.OK,
            f"{ufw}, {len(facts.rules4) + len(facts.rules6)} ufw rules, {docker}, "
            f"{len(facts.records)} recorded block(s)",
            controller=str(facts.controller) if facts.controller else None,
            ssh_port=facts.ssh_port,
        )
    return facts


def plan_of(
    ctx: HostContext, plan: FirewallPlan, check: Check, outcome: Outcome, about: Target | None = None
) -> Plan:
    """The engine's plan for a firewall plan: nothing (with the reason and notes), or one change
    (check mode: "would <changes>; <notes>" under "decide") whose apply runs the commands and checks
    the facts afterwards in one "apply" step. A refusal fails the host at "decide", nothing changed."""
    notes = "".join(f"; {n}" for n in plan.notes)
    if plan.refused:
        with ctx.step("decide"):
            raise HostError(plan.refused)
    if plan.nothing:
        return Plan.nothing(plan.reason + notes)
    diff = "\n".join(f"+ {c}" for c in plan.commands)
    if plan.state is not None:
        diff += f"\n+ write the state file ({len(plan.state)} block(s))"
    diff = (diff + "".join(f"\n+ {c}" for c in plan.after)).strip()
    done = "; ".join(plan.changes)

    def carry_out(ctx: HostContext) -> None:
        with ctx.step("apply") as step:
            after, output = apply(ctx.remote, plan, StatePath.from_host(ctx.host), about)
            problem = after.error or check(after, output)
            if problem:
                raise HostError(f"ran: {done}; but afterwards: {problem}")
            message, data = outcome(after, output)
            step.done(Status.CHANGED, f"{message} (done: {done}){notes}", diff=diff, **data)

    return Plan.of(Change("apply", done + notes, carry_out, diff=diff, own_steps=True), check_step="decide")
