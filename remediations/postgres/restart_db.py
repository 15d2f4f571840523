"""restart-db: bring the host's PostgreSQL cluster back to accepting connections, as the inventory runs it.

facts   one round trip (`facts.pg_server`): pg_isready, `pg_ctl status` (postgres_data_dir), the
        postmaster's start time; with postgres_unit, also `systemctl show` of the unit;
decide  pure (`decide`): nothing when it accepts connections (unless --force); wait (no restart)
        when it is starting up or in crash recovery; start when no postmaster runs; restart when one
        runs but does not answer (or --force); nothing, and the host fails, when there is no
        data directory or the inventory does not say how the cluster is run;
apply   the way the inventory says (`Cluster.how`): the systemd unit through restart-service's own
        action (`actions.systemd_unit.recover`: restart/stop-start or start, waited on);
        `postgres_start_command` / `postgres_stop_command` (restore-pitr's vars); else pg_ctl on
        postgres_data_dir (`start -l LOG -w`, a start refused while the dead postmaster's
        backends still hold its shared memory retried; a restart is `stop -m fast`, then
        `-m immediate` if that does not finish); then wait until it accepts connections;
verify  it accepts connections and answers a query, with a new postmaster start time; else the host
        fails with the server log's last lines (secrets masked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay

from remediations.actions import systemd_unit
from remediations.actions.compose_service import poll_wait
from remediations.core import interrupt
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.pg_server import Cluster, ServerFacts, facts_command, parse_facts
from remediations.facts.postgres import script
from remediations.facts.systemd import UnitFacts, UnitSettings, mask_line

FACTS_TIMEOUT = 90.0
START_ATTEMPTS = 3  # a start refused by the dead postmaster's leftover shared memory: tried again
START_PAUSE = 2.0
Facts = tuple[Cluster, ServerFacts, "UnitFacts | None"]


@dataclass(frozen=True)
class Decision:
    action: str  # none | wait | start | restart | fail
    reason: str


def decide(facts: ServerFacts, port: int, force: bool, unit: UnitFacts | None = None) -> Decision:
    """Pure: what to do about the cluster, and why."""
    said = facts.describe(port)
    state = facts.state
    if state == "unknown":
        return Decision("fail", f"cannot tell the server's state: {said}; nothing done")
    if state == "no-cluster":
        return Decision("fail", f"{said}: check postgres_data_dir; nothing done")
    if state == "up":
        return Decision("restart", f"{said}; --force") if force else Decision("none", f"{said}; left alone")
    if state == "starting":
        return Decision("wait", f"{said}: left to finish, not restarted")
    if unit is not None and unit.active_state == "active" and state == "down":
        return Decision("restart", f"{said}, yet {unit.unit} is active")
    if state == "hung":
        return Decision("restart", said)
    return Decision("start", said)


def start_command(cluster: Cluster) -> str:
    """pg_ctl start, waited on, its output to the log (a postmaster must not hold the SSH session's
    pipes); tried again while the start fails and no postmaster runs."""
    start = cluster.ctl("-l", cluster.server_log(), "-w", "-t", str(int(cluster.start_timeout)), "start")
    status = cluster.ctl("status")
    return (
        f"( i=0; while :; do i=$((i + 1)); {start} >/dev/null 2>&1 && exit 0; "
        f"if [ $i -ge {START_ATTEMPTS} ] || {status} >/dev/null 2>&1; then exit 1; fi; "
        f"sleep {START_PAUSE:g}; done )"
    )


def stop_command(cluster: Cluster) -> str:
    fast = cluster.ctl("-m", "fast", "-w", "-t", "60", "stop")
    immediate = cluster.ctl("-m", "immediate", "-w", "-t", "60", "stop")
    return f"{{ {fast} >/dev/null 2>&1 || {immediate} >/dev/null 2>&1; }}"


def commands(cluster: Cluster, action: str) -> list[str]:
    """The shell text of `action` (start | restart) for a cluster run by start/stop commands or
    pg_ctl (a unit goes through actions.systemd_unit); each runs after facts.postgres's `as_user`."""
    if cluster.how == "command":
        stop = cluster.stop_command or (stop_command(cluster) if cluster.data_dir else "")
        if action == "restart" and not stop:
            raise HostError("a restart needs postgres_stop_command (or postgres_data_dir); nothing done")
        return [*([stop] if action == "restart" else []), cluster.start_command]
    return [*([stop_command(cluster)] if action == "restart" else []), start_command(cluster)]


class RestartDb(Remediation):
    """Bring the host's PostgreSQL cluster back: start it if it is down, restart it if it hangs.

    How is the inventory's: postgres_unit (a systemd unit: restart-service's escalation, waited on),
    postgres_start_command / postgres_stop_command, or pg_ctl on postgres_data_dir with
    postgres_log_file. A server that accepts connections is left alone (ok, nothing done) unless
    --force; one starting up or in crash recovery is waited for, never restarted. Then it waits (up
    to postgres_start_timeout, default 120 s) until the server accepts connections and answers a
    query; if it does not, the host fails with the server log's last lines.
    Exit code 0 up (changed or not), 1 not up, 2 bad input.
    """

    task: ClassVar[str] = "restart-db"
    params = args(
        Arg("force", "restart even a server that accepts connections (fast shutdown: sessions end)",
            kind="flag"),
    )  # fmt: skip
    default_serial: ClassVar[int | None] = 1

    def __init__(self, force: bool = False) -> None:
        self.force = force

    def validate(self, host: Host) -> None:
        super().validate(host)
        Cluster.of(host).require_a_way(host)

    def deadline(self, host: Host) -> float:
        cluster = Cluster.of(host)
        return 2 * FACTS_TIMEOUT + 240.0 + 2 * cluster.start_timeout

    # ----------------------------------------------------------------------------------- facts

    def gather(self, ctx: HostContext) -> Facts | None:
        cluster = Cluster.of(ctx.host)
        with ctx.step("facts") as step:
            facts = read(ctx, cluster)
            unit = None
            if cluster.unit:
                unit = systemd_unit.gather(ctx.remote, [UnitSettings.of(ctx.host, cluster.unit)])[0]
            said = facts.describe(cluster.pg.port)
            if unit is not None:
                said += f"; {unit.unit}: {unit.active_state or 'unknown'}"
            step.done(Status.FAILED if facts.error else Status.OK, said, state=facts.state,
                      started=facts.started, how=cluster.how)  # fmt: skip
        return None if facts.error else (cluster, facts, unit)

    # ----------------------------------------------------------------------------------- decide

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        cluster, before, unit = facts
        decision = decide(before, cluster.pg.port, self.force, unit)
        if decision.action == "fail":
            raise HostError(decision.reason)
        if decision.action == "none":
            return Plan.nothing(decision.reason)
        how = {"unit": f"systemd unit {cluster.unit}", "command": "postgres_start_command",
               "pg_ctl": f"pg_ctl -D {cluster.data_dir}"}[cluster.how]  # fmt: skip
        by_shell = cluster.how != "unit" and decision.action != "wait"
        shown = commands(cluster, decision.action) if by_shell else []

        def apply(ctx: HostContext) -> None:
            act(ctx, cluster, before, unit, decision.action)

        summary = f"{decision.action} the cluster with {how} ({decision.reason})"
        if decision.action == "wait":
            summary = f"wait until the server accepts connections ({decision.reason})"
        return Plan.of(Change(decision.action, summary, apply, commands=tuple(shown), own_steps=True),
                       check_step="decide")  # fmt: skip

    # ----------------------------------------------------------------------------------- verify

    def verify(self, ctx: HostContext, facts: Facts, plan: Plan) -> None:
        cluster, before, _ = facts
        with ctx.step("verify") as step:
            now = read(ctx, cluster)
            if now.state != "up" or not now.server:
                raise HostError(failure(ctx, cluster, now, "after the restart"))
            waited = plan.changes[0].step == "wait"
            if before.started is not None and now.started == before.started and not waited:
                raise HostError(f"{now.describe(cluster.pg.port)}, but the postmaster did not start anew")
            step.done(Status.OK, f"{now.describe(cluster.pg.port)}; the postmaster started at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now.started or 0))} UTC",
                      started=now.started)  # fmt: skip


def read(ctx: HostContext, cluster: Cluster) -> ServerFacts:
    result = ctx.remote.run(facts_command(cluster), timeout=FACTS_TIMEOUT)
    facts = parse_facts(result.stdout)
    if facts.error:
        raise HostError(f"reading the server failed: {facts.error}", result)
    return facts


def failure(ctx: HostContext, cluster: Cluster, facts: ServerFacts, when: str) -> str:
    lines = [ctx.redactor.text(mask_line(line)) for line in facts.log]
    where = f" ({facts.log_file})" if facts.log_file else ""
    tail = f"; the server log's last {len(lines)} lines{where}:\n" + "\n".join(lines) if lines else ""
    return f"not accepting connections {when}: {facts.describe(cluster.pg.port)}{tail}"


def wait_until_up(ctx: HostContext, cluster: Cluster, started: bool) -> ServerFacts:
    """Poll until the server accepts connections, or (once it was started) no postmaster runs any
    more, or postgres_start_timeout passed: the last facts read either way."""

    def settled(now: ServerFacts) -> bool:
        return now.state == "up" or (started and now.state in ("down", "no-cluster"))

    retrying = Retrying(stop=stop_after_delay(cluster.start_timeout), wait=poll_wait(),
                        retry=retry_if_result(lambda now: not settled(now)),
                        retry_error_callback=_last_read, sleep=interrupt.sleep)  # fmt: skip
    current: ServerFacts = retrying(lambda: read(ctx, cluster))
    return current


def _last_read(state: RetryCallState) -> ServerFacts:
    assert state.outcome is not None
    last: ServerFacts = state.outcome.result()
    return last


def act(ctx: HostContext, cluster: Cluster, before: ServerFacts, unit: UnitFacts | None, action: str) -> None:
    """Carry out `action`, recording its steps; HostError (with the log's last lines) when the
    server does not accept connections at the end."""
    with ctx.step(action) as step:
        begun = time.monotonic()
        if action == "wait":
            now = wait_until_up(ctx, cluster, started=False)
        elif cluster.how == "unit":
            assert unit is not None
            settings = UnitSettings.of(ctx.host, cluster.unit)
            how = "restart" if action == "restart" else "start"
            systemd_unit.recover(ctx, settings, unit, how, "systemd ")
            now = wait_until_up(ctx, cluster, started=True)
        else:
            *stops, start = commands(cluster, action)
            for stop in stops:
                if not ctx.remote.run(script(stop), timeout=300).ok:
                    # a postmaster that ignores even an immediate shutdown (stopped, stuck in the
                    # kernel) is for a person: it is never sent SIGKILL here
                    now = read(ctx, cluster)
                    raise HostError(f"the server did not stop ({now.describe(cluster.pg.port)}); not "
                                    "started again: look at the postmaster's process")  # fmt: skip
            ctx.remote.run(script(start), timeout=START_ATTEMPTS * cluster.start_timeout + 180)
            now = wait_until_up(ctx, cluster, started=True)
        waited = time.monotonic() - begun
        if now.state != "up":
            raise HostError(failure(ctx, cluster, now, f"after {waited:.0f}s ({action})"))
        did = {"wait": "waited", "start": "started", "restart": "restarted"}[action]
        step.done(Status.CHANGED if action != "wait" else Status.OK,
                  f"{did}; accepting connections after {waited:.1f}s", how=cluster.how)  # fmt: skip
