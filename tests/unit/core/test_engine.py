"""The engine on hosts with `ansible_connection: local`: real subprocesses, real flock, no SSH.

Each test builds a real inventory file under tmp_path; every host's lock_dir and the audit log live there
too, so nothing outside tmp_path is touched.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from remediations.core import inventory
from remediations.core.context import HostContext
from remediations.core.engine import Engine
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Inventory
from remediations.core.options import MaxFail, RunOptions
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, must
from remediations.core.results import WARNING_EXIT_CODE, HostResult, RunResult, Status, StepResult
from remediations.reporting.audit import Actor
from remediations.reporting.redact import MASK
from tests import labkit

NOTIFY_ENV = (
    "REMEDIATIONS_SLACK_WEBHOOK",
    "REMEDIATIONS_TELEGRAM_BOT_TOKEN",
    "REMEDIATIONS_TELEGRAM_CHAT_ID",
    "REMEDIATIONS_TELEGRAM_API",
    "REMEDIATIONS_NOTIFY_ON",
)
WAIT = 20.0  # upper bound for event waits; reached only when something is broken


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(audit))
    for name in NOTIFY_ENV:
        monkeypatch.delenv(name, raising=False)
    return audit


def local_inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]], **all_vars: Any) -> Inventory:
    """A real inventory file of local hosts, each with its own target_dir under tmp_path."""
    return inventory.load(labkit.write_local_inventory(tmp_path, hosts, **all_vars))


def names(n: int) -> dict[str, dict[str, Any]]:
    return {f"h{i}": {} for i in range(1, n + 1)}


# ---- a remediation that owns one file, in the four steps -----------------------------------------


@dataclass(frozen=True)
class FilePlan:
    action: str  # "none" | "write"
    reason: str


def decide_file(current: str | None, desired: str) -> FilePlan:
    if current == desired:
        return FilePlan("none", "managed.txt already has the wanted content")
    if current is None:
        return FilePlan("write", "create managed.txt")
    return FilePlan("write", f"replace managed.txt ({len(current)} bytes differ)")


def read_file(remote: Remote, path: str) -> str | None:
    """One round trip: a marker line, then the content."""
    q = shlex.quote(path)
    result = must(remote.run(f"if [ -f {q} ]; then echo present; cat {q}; else echo absent; fi"), "read")
    marker, _, content = result.stdout.partition("\n")
    return content if marker == "present" else None


class EnsureFile(Remediation):
    task: ClassVar[str] = "ensure-file"
    required_vars: ClassVar[tuple[str, ...]] = ("target_dir",)

    def __init__(self, content: str = "managed by remediations\n") -> None:
        self.content = content

    def path(self, ctx: HostContext) -> str:
        return os.path.join(str(ctx.var("target_dir")), "managed.txt")

    def gather(self, ctx: HostContext) -> tuple[str | None]:
        with ctx.step("facts") as step:
            current = read_file(ctx.remote, self.path(ctx))
            step.done(Status.OK, "absent" if current is None else f"present, {len(current)} bytes")
        return (current,)  # absent (None) is a fact too

    def decide(self, ctx: HostContext, facts: tuple[str | None]) -> Plan:
        decision = decide_file(facts[0], self.content)
        if decision.action == "none":
            return Plan.nothing(decision.reason)
        path = self.path(ctx)

        def write(ctx: HostContext) -> str:
            directory = shlex.quote(os.path.dirname(path))
            must(
                ctx.remote.run(
                    f"mkdir -p {directory} && cat > {shlex.quote(path)}", stdin=self.content.encode()
                ),
                "write managed.txt",
            )
            return f"wrote {path}"

        return Plan.of(Change("apply", decision.reason, write, diff=f"+{self.content}"), check_step="decide")

    def verify(self, ctx: HostContext, facts: tuple[str | None], plan: Plan) -> None:
        path = self.path(ctx)
        with ctx.step("verify") as step:
            if read_file(ctx.remote, path) != self.content:
                raise HostError(f"{path} does not hold the content just written")
            step.done(Status.OK, "content verified")


def test_quartet_on_a_local_host(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"web1": {}})
    managed = tmp_path / "hosts" / "web1" / "managed.txt"

    def run(check: bool) -> HostResult:
        result = Engine(inv, RunOptions(check=check)).run(EnsureFile(), inv.select("web1"))
        assert result.exit_code == 0
        assert result.check is check
        [host] = result.hosts
        return host

    first_check = run(check=True)
    assert (first_check.status, first_check.message) == (Status.CHANGED, "would create managed.txt")
    assert not managed.exists()

    apply = run(check=False)
    assert apply.status == Status.CHANGED
    assert apply.message == f"wrote {managed}"
    assert [(s.step, s.status) for s in apply.steps] == [
        ("facts", Status.OK),
        ("apply", Status.CHANGED),
        ("verify", Status.OK),
    ]
    assert managed.read_text() == "managed by remediations\n"

    again = run(check=False)
    assert (again.status, again.message) == (Status.OK, "managed.txt already has the wanted content")
    assert [s.step for s in again.steps] == ["facts", "decide"]

    second_check = run(check=True)
    assert (second_check.status, second_check.message) == (
        Status.OK,
        "managed.txt already has the wanted content",
    )


def test_drift_is_repaired_and_diff_kept_only_with_diff(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"web1": {}})
    managed = tmp_path / "hosts" / "web1" / "managed.txt"
    managed.parent.mkdir(parents=True)
    managed.write_text("hand edited\n")
    plain = Engine(inv, RunOptions(check=True)).run(EnsureFile(), inv.select("web1")).hosts[0]
    assert plain.message == "would replace managed.txt (12 bytes differ)"
    quiet = Engine(inv, RunOptions()).run(EnsureFile("v1\n"), inv.select("web1")).hosts[0]
    assert quiet.diff == ""
    shown = Engine(inv, RunOptions(diff=True)).run(EnsureFile("v2\n"), inv.select("web1")).hosts[0]
    assert shown.diff == "+v2\n"
    assert managed.read_text() == "v2\n"


def test_results_per_host_and_step(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, names(3))
    seen: list[str] = []
    run = Engine(inv, RunOptions(), listener=lambda h: seen.append(h.host)).run(
        EnsureFile(), inv.select("all")
    )
    assert sorted(seen) == ["h1", "h2", "h3"]  # the listener hears every host once
    assert [h.host for h in run.hosts] == ["h1", "h2", "h3"]  # in inventory order, whatever finished first
    assert run.counts() == {"ok": 0, "changed": 3, "failed": 0, "skipped": 0}
    assert run.duration > 0
    for host in run.hosts:
        assert all(isinstance(s, StepResult) for s in host.steps)
        assert all(s.duration > 0 for s in host.steps)  # each step ran at least one subprocess
        assert host.duration >= sum(s.duration for s in host.steps)
        as_dict = host.to_dict()
        assert set(as_dict) == {"host", "status", "message", "duration", "warnings", "steps"}
        assert [s["step"] for s in as_dict["steps"]] == ["facts", "apply", "verify"]
        step_keys = {"step", "status", "message", "diff", "duration", "data", "warning"}
        assert set(as_dict["steps"][0]) == step_keys
    assert run.to_dict()["counts"]["changed"] == 3


# ---- a remediation that records when each host runs --------------------------------------------


class Tracker:
    """Counts hosts running at once (with a shared counter) and the order of starts and ends."""

    def __init__(self, hold_until_active: int = 0, total: int = 0) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.events: list[tuple[str, str]] = []
        self.hold_until_active = hold_until_active
        self.total = total

    def enter(self, host: str) -> None:
        with self.cond:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
            self.events.append(("start", host))
            self.cond.notify_all()
            # Hold each host until `hold_until_active` run at once (or every host has started), so a
            # bound that is too high shows up as a higher count, never as a race lost by chance.
            self.cond.wait_for(
                lambda: self.active >= self.hold_until_active or self.started >= self.total, timeout=WAIT
            )

    def leave(self, host: str) -> None:
        with self.cond:
            self.active -= 1
            self.events.append(("end", host))
            self.cond.notify_all()

    def ran(self) -> list[str]:
        return [host for kind, host in self.events if kind == "start"]


class Probe(Remediation):
    """Runs one real command; fails where the host var `fail` is set."""

    task: ClassVar[str] = "probe"
    changes_hosts: ClassVar[bool] = False

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def run(self, ctx: HostContext) -> None:
        self._tracker.enter(ctx.host.name)
        try:
            with ctx.step("work") as step:
                must(ctx.remote.run("true"), "true")
                if ctx.var("fail"):
                    raise HostError(f"{ctx.host.name} failed on purpose")
                step.done(Status.CHANGED, "worked")
        finally:
            self._tracker.leave(ctx.host.name)


@pytest.mark.parametrize(("parallel", "hosts", "expected"), [(3, 7, 3), (1, 4, 1), (10, 4, 4)])
def test_parallel_bounds_hosts_at_once(tmp_path: Path, parallel: int, hosts: int, expected: int) -> None:
    inv = local_inventory(tmp_path, names(hosts))
    tracker = Tracker(hold_until_active=parallel, total=hosts)
    run = Engine(inv, RunOptions(parallel=parallel)).run(Probe(tracker), inv.select("all"))
    assert tracker.max_active == expected
    assert sorted(tracker.ran()) == sorted(names(hosts))
    assert run.counts()["changed"] == hosts


def test_serial_batches_wait_for_earlier_batches(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, names(5))
    tracker = Tracker(hold_until_active=2, total=5)
    run = Engine(inv, RunOptions(serial=2)).run(Probe(tracker), inv.select("all"))
    assert run.exit_code == 0
    batches = [["h1", "h2"], ["h3", "h4"], ["h5"]]
    position = {event: i for i, event in enumerate(tracker.events)}
    for earlier, later in itertools.pairwise(batches):
        last_end = max(position[("end", h)] for h in earlier)
        first_start = min(position[("start", h)] for h in later)
        assert last_end < first_start, tracker.events
    assert tracker.max_active == 2


def test_rolling_run_stops_at_first_failure_and_skips_the_rest(tmp_path: Path, isolated: Path) -> None:
    inv = local_inventory(tmp_path, {"h1": {}, "h2": {"fail": True}, "h3": {}, "h4": {}, "h5": {}})
    tracker = Tracker()
    run = Engine(inv, RunOptions(serial=2)).run(Probe(tracker), inv.select("all"))
    assert sorted(tracker.ran()) == ["h1", "h2"]
    assert [(h.host, h.status) for h in run.hosts] == [
        ("h1", Status.CHANGED),
        ("h2", Status.FAILED),
        ("h3", Status.SKIPPED),
        ("h4", Status.SKIPPED),
        ("h5", Status.SKIPPED),
    ]
    assert run.hosts[1].message == "h2 failed on purpose"
    for skipped in run.hosts[2:]:
        assert [(s.step, s.status) for s in skipped.steps] == [("start", Status.SKIPPED)]
        assert skipped.message == "not started: the rollout stopped after a failure"
    assert run.stopped_early == "1 host(s) failed; 3 remaining host(s) not started"
    assert run.exit_code == 1


@pytest.mark.parametrize(
    ("max_fail", "failing", "hosts", "ran", "skipped"),
    [
        # a count: stop once MORE than N hosts failed
        ("1", {"h2", "h4"}, 6, ["h1", "h2", "h3", "h4"], ["h5", "h6"]),
        ("2", {"h2", "h4"}, 6, ["h1", "h2", "h3", "h4", "h5", "h6"], []),
        ("0", {"h1"}, 3, ["h1"], ["h2", "h3"]),
        # a percentage of all selected hosts: 1 of 4 is 25%, not more than 25%
        ("25%", {"h1", "h2"}, 4, ["h1", "h2"], ["h3", "h4"]),
        ("50%", {"h1", "h2"}, 4, ["h1", "h2", "h3", "h4"], []),
        ("0%", {"h3"}, 4, ["h1", "h2", "h3"], ["h4"]),
    ],
)
def test_max_fail(
    tmp_path: Path, max_fail: str, failing: set[str], hosts: int, ran: list[str], skipped: list[str]
) -> None:
    inv = local_inventory(tmp_path, {n: ({"fail": True} if n in failing else {}) for n in names(hosts)})
    tracker = Tracker()
    run = Engine(inv, RunOptions(serial=1, max_fail=MaxFail.parse(max_fail))).run(
        Probe(tracker), inv.select("all")
    )
    assert tracker.ran() == ran
    assert [h.host for h in run.hosts if h.status == Status.SKIPPED] == skipped
    assert bool(run.stopped_early) == bool(skipped)
    assert run.exit_code == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", MaxFail(count=0)),
        ("3", MaxFail(count=3)),
        (" 25% ", MaxFail(percent=25.0)),
        ("100%", MaxFail(percent=100.0)),
        (None, MaxFail()),
        ("", MaxFail()),
    ],
)
def test_max_fail_parse(text: str | None, expected: MaxFail) -> None:
    assert MaxFail.parse(text) == expected


@pytest.mark.parametrize("text", ["-1", "abc", "101%", "-5%", "2.5", "%"])
def test_max_fail_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--max-fail"):
        MaxFail.parse(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"parallel": 0}, "--parallel 0"), ({"serial": 0}, "--serial 0"), ({"lock_wait": -1}, "--lock-wait -1")],
)
def test_run_options_reject_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=f"^{message}"):
        RunOptions(**options)


def test_no_serial_means_one_batch_and_no_stop(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"h1": {"fail": True}, "h2": {}, "h3": {}})
    tracker = Tracker()
    run = Engine(inv, RunOptions()).run(Probe(tracker), inv.select("all"))
    assert sorted(tracker.ran()) == ["h1", "h2", "h3"]
    assert run.stopped_early == ""
    assert run.counts() == {"ok": 0, "changed": 2, "failed": 1, "skipped": 0}


class RollingProbe(Probe):
    default_serial: ClassVar[int | None] = 1


def test_default_serial_applies_to_real_runs_not_check(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"h1": {"fail": True}, "h2": {}})
    real = Engine(inv, RunOptions()).run(RollingProbe(Tracker()), inv.select("all"))
    assert [h.status for h in real.hosts] == [Status.FAILED, Status.SKIPPED]
    check_tracker = Tracker()
    Engine(inv, RunOptions(check=True)).run(RollingProbe(check_tracker), inv.select("all"))
    assert sorted(check_tracker.ran()) == ["h1", "h2"]


# ---- bad input: nothing runs ---------------------------------------------------------------------


def test_missing_required_var_is_a_usage_error_before_anything_runs(tmp_path: Path, isolated: Path) -> None:
    inv = local_inventory(tmp_path, names(2))
    data = yaml.safe_load((tmp_path / "hosts.yml").read_text())
    del data["all"]["hosts"]["h2"]["target_dir"]
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(data))
    inv = inventory.load(tmp_path / "hosts.yml")

    class Tracked(EnsureFile):
        def run(self, ctx: HostContext) -> None:
            started.append(ctx.host.name)
            super().run(ctx)

    started: list[str] = []
    with pytest.raises(UsageError) as error:
        Engine(inv, RunOptions()).run(Tracked(), inv.select("all"))
    assert str(error.value) == (
        f"{tmp_path / 'hosts.yml'}: host h2: missing required var 'target_dir' "
        "(set it in the host's vars or a group's vars, or leave the host out: --host 'GROUP:!h2')"
    )
    assert started == []
    assert not (tmp_path / "hosts").exists()
    assert not isolated.exists()  # nothing audited by the engine: the front end audits bad input


def test_rejected_ssh_options_are_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    """README: StrictHostKeyChecking=no is bad input: exit 2 and nothing run on any host."""
    hosts = {
        "h1": {},
        "remote1": {
            "ansible_connection": "ssh",
            "ansible_host": "127.0.0.1",
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no",
        },
    }
    inv = local_inventory(tmp_path, hosts)
    tracker = Tracker()
    with pytest.raises(UsageError, match="StrictHostKeyChecking=no is not honoured"):
        Engine(inv, RunOptions()).run(Probe(tracker), inv.select("all"))
    assert tracker.ran() == []


# ---- failures of one host never hide the others -----------------------------------------------


class Boom(Remediation):
    task: ClassVar[str] = "boom"
    changes_hosts: ClassVar[bool] = False

    def run(self, ctx: HostContext) -> None:
        if ctx.host.name == "h2":
            raise RuntimeError("a bug in the remediation")
        ctx.record("work", Status.OK, "fine")


def test_internal_error_fails_only_its_host(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, names(3))
    run = Engine(inv, RunOptions()).run(Boom(), inv.select("all"))
    assert [(h.host, h.status) for h in run.hosts] == [
        ("h1", Status.OK),
        ("h2", Status.FAILED),
        ("h3", Status.OK),
    ]
    assert run.hosts[1].message == "internal error: RuntimeError: a bug in the remediation"
    assert run.exit_code == 1


def test_unreachable_ssh_host_fails_at_connect_and_others_still_run(tmp_path: Path) -> None:
    # port 1 on loopback: nothing listens, the connection is refused (no packets leave the machine)
    hosts = {
        "h1": {},
        "remote1": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1},
    }
    inv = local_inventory(tmp_path, hosts)
    run = Engine(inv, RunOptions(connect_timeout=2)).run(EnsureFile(), inv.select("all"))
    local, remote = run.hosts
    assert local.status == Status.CHANGED
    assert remote.status == Status.FAILED
    assert [s.step for s in remote.steps] == ["connect"]
    assert remote.message.startswith("cannot connect to 127.0.0.1")
    assert run.exit_code == 1


def test_secrets_from_the_inventory_are_masked_in_results(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"h1": {"db_password": "s3cr3t-pw-123"}})

    class Leaky(Remediation):
        task: ClassVar[str] = "leaky"
        changes_hosts: ClassVar[bool] = False

        def run(self, ctx: HostContext) -> None:
            with ctx.step("facts") as step:
                out = must(
                    ctx.remote.run(f"echo connecting with {shlex.quote(ctx.var('db_password'))}"), "echo"
                )
                step.done(
                    Status.OK, out.stdout.strip(), dsn=f"postgres://app:{ctx.var('db_password')}@db/shop"
                )
            raise HostError(f"psql: password {ctx.var('db_password')} rejected")

    run = Engine(inv, RunOptions()).run(Leaky(), inv.select("h1"))
    facts, failure = run.hosts[0].steps
    assert facts.message == f"connecting with {MASK}"
    assert facts.data == {"dsn": MASK}
    assert failure.message == f"psql: password {MASK} rejected"
    assert "s3cr3t-pw-123" not in str(run.to_dict())


# ---- the per-host lock ---------------------------------------------------------------------------


class Hold(Remediation):
    """Holds the host (and so its lock) until told to let go."""

    task: ClassVar[str] = "hold"

    def __init__(self) -> None:
        self._entered = threading.Event()
        self._release = threading.Event()
        self._events: list[str] = []

    def run(self, ctx: HostContext) -> None:
        self._events.append("hold start")
        self._entered.set()
        assert self._release.wait(WAIT), "the test never released the hold"
        ctx.record("hold", Status.OK, "held")
        self._events.append("hold end")


@pytest.fixture
def holding(tmp_path: Path) -> Iterator[tuple[Inventory, Hold, list[RunResult]]]:
    """Engine A holds the lock of local host h1 in a thread until the test releases it."""
    inv = local_inventory(tmp_path, {"h1": {}})
    hold = Hold()
    results: list[RunResult] = []
    alice = Actor("alice", "ctl-a", "run-a")
    thread = threading.Thread(
        target=lambda: results.append(
            Engine(inv, RunOptions(lock_wait=5), actor=alice).run(hold, inv.select("h1"))
        )
    )
    thread.start()
    try:
        assert hold._entered.wait(WAIT), "engine A never got the lock"
        yield inv, hold, results
    finally:
        hold._release.set()
        thread.join(WAIT)
    assert not thread.is_alive()


def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "lock" / "remediations.lock"


def test_second_run_fails_with_lock_timeout_naming_the_holder(
    tmp_path: Path, holding: tuple[Inventory, Hold, list[RunResult]]
) -> None:
    inv, _, _ = holding
    bob = Actor("bob", "ctl-b", "run-b")
    started: list[str] = []

    class Tracked(EnsureFile):
        def run(self, ctx: HostContext) -> None:
            started.append(ctx.host.name)
            super().run(ctx)

    run = Engine(inv, RunOptions(lock_wait=1), actor=bob).run(Tracked(), inv.select("h1"))
    [host] = run.hosts
    assert host.status == Status.FAILED
    assert host.message == (
        "host is locked by another run (alice@ctl-a task=hold run=run-a); gave up after 1s. "
        "Wait for it to finish, or raise --lock-wait"
    )
    assert [step.step for step in host.steps] == ["lock"]
    assert started == []
    assert run.exit_code == 1
    assert lock_file(tmp_path).with_suffix(".lock.holder").read_text() == "alice@ctl-a task=hold run=run-a\n"


def test_check_mode_takes_no_lock(tmp_path: Path, holding: tuple[Inventory, Hold, list[RunResult]]) -> None:
    inv, _, _ = holding
    run = Engine(inv, RunOptions(check=True, lock_wait=0)).run(EnsureFile(), inv.select("h1"))
    assert run.hosts[0].status == Status.CHANGED
    assert run.hosts[0].message == "would create managed.txt"


def flock_waiters(lock: Path) -> list[int]:
    """Pids of `flock` processes waiting on `lock` (their fd 9 is the lock file)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[0] == b"flock" and os.readlink(
                proc / "fd" / "9"
            ) == str(lock):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_second_run_waits_for_the_lock_then_runs(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, {"h1": {}})
    hold = Hold()
    first: list[RunResult] = []
    second: list[RunResult] = []
    events = hold._events

    class After(EnsureFile):
        def run(self, ctx: HostContext) -> None:
            events.append("second start")
            super().run(ctx)

    a = threading.Thread(target=lambda: first.append(Engine(inv, RunOptions()).run(hold, inv.select("h1"))))
    a.start()
    assert hold._entered.wait(WAIT)
    b = threading.Thread(
        target=lambda: second.append(Engine(inv, RunOptions(lock_wait=30)).run(After(), inv.select("h1")))
    )
    b.start()
    try:
        # wait (by polling, not by sleeping a guess) until B is really blocked in flock on our lock
        found = threading.Event()
        for _ in range(400):
            if flock_waiters(lock_file(tmp_path)):
                found.set()
                break
            found.wait(0.05)
        assert found.is_set(), "the second run never waited on the lock"
        assert "second start" not in events
    finally:
        hold._release.set()
        a.join(WAIT)
        b.join(WAIT)
    assert events == ["hold start", "hold end", "second start"]
    assert first[0].hosts[0].status == Status.OK
    assert second[0].hosts[0].status == Status.CHANGED
    assert lock_file(tmp_path).with_suffix(".lock.holder").read_text() == ""  # released, no stale holder


# ---- exit codes ----------------------------------------------------------------------------------


def host_with(name: str, *statuses: Status) -> HostResult:
    return HostResult(name, [StepResult(f"s{i}", s, "") for i, s in enumerate(statuses)])


def warned(name: str, status: Status) -> HostResult:
    """A host whose run went `status` with one warning step (ok, so the host's status is unchanged)."""
    host = host_with(name, status)
    host.add(StepResult("archiver", Status.OK, "archiver is FAILING", warning=True))
    return host


@pytest.mark.parametrize(
    ("hosts", "code"),
    [
        ([], 0),
        ([host_with("a", Status.OK)], 0),
        ([host_with("a", Status.OK, Status.CHANGED), host_with("b", Status.SKIPPED)], 0),
        ([host_with("a", Status.CHANGED), host_with("b", Status.OK, Status.FAILED, Status.OK)], 1),
        ([host_with("a", Status.FAILED), host_with("b", Status.SKIPPED)], 1),
        ([warned("a", Status.OK)], WARNING_EXIT_CODE),
        ([warned("a", Status.CHANGED), host_with("b", Status.OK)], WARNING_EXIT_CODE),
        ([warned("a", Status.OK), host_with("b", Status.FAILED)], 1),  # a failure wins
    ],
)
def test_run_result_exit_code(hosts: list[HostResult], code: int) -> None:
    assert RunResult("t", False, hosts).exit_code == code


def test_warnings_are_shown_in_text_and_json() -> None:
    import io

    from remediations.reporting.output import Reporter

    host = warned("db1", Status.OK)
    assert host.status == Status.OK and host.warnings == ["archiver is FAILING"]
    run = RunResult("wal-cleanup", False, [host, host_with("db2", Status.OK)])
    text = io.StringIO()
    reporter = Reporter(text)
    for h in run.hosts:
        reporter.host_done(h)
    reporter.summary(run, [])
    lines = text.getvalue().splitlines()
    assert lines[lines.index(next(x for x in lines if x.startswith("ok      db1:"))) + 1] == (
        "    warning: archiver is FAILING"
    )
    assert sum("warning:" in x for x in lines) == 1
    assert f"2 ok (1 with warnings: exit code {WARNING_EXIT_CODE})" in text.getvalue()
    as_json = io.StringIO()
    Reporter(as_json, as_json=True).summary(run, [])
    hosts = json.loads(as_json.getvalue())["hosts"]
    assert hosts[0]["warnings"] == ["archiver is FAILING"] and hosts[1]["warnings"] == []
    assert hosts[0]["steps"][-1]["warning"] is True


def test_host_status_is_the_worst_step_and_its_message() -> None:
    host = HostResult(
        "a",
        [
            StepResult("facts", Status.OK, "read"),
            StepResult("apply", Status.CHANGED, "first change"),
            StepResult("apply2", Status.CHANGED, "second change"),
            StepResult("verify", Status.OK, "verified"),
        ],
    )
    assert (host.status, host.message) == (Status.CHANGED, "second change")
    assert HostResult("empty").status == Status.SKIPPED
    assert UsageError.exit_code == 2


def test_facts_under_lock_come_with_the_lock_and_the_lock_still_holds(tmp_path: Path) -> None:
    from remediations.core.errors import LockTimeout
    from remediations.core.inventory import Host
    from remediations.core.lock import HostLock
    from remediations.core.remote import LocalRemote

    host = Host("here", {"ansible_connection": "local"}, (), "test")
    lock_dir = str(tmp_path / "lock")
    then = "echo one; echo 'two words'; echo oops >&2; exit 3"
    with HostLock(LocalRemote(host), "me", wait=5, lock_dir=lock_dir, then=then) as lock:
        assert lock.output == "one\ntwo words\noops\n"  # stderr too; the exit status ends the output
        with pytest.raises(LockTimeout, match=r"locked by another run \(me\)"):
            HostLock(LocalRemote(host), "other", wait=0, lock_dir=lock_dir).acquire()
    with HostLock(LocalRemote(host), "other", wait=0, lock_dir=lock_dir) as again:
        assert again.output is None  # nothing asked, nothing read
