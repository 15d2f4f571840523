"""The engine owns the modes: a plan is shown in check mode and applied otherwise, in order; related
hosts are opened by the engine; the registry knows every task and refuses a name declared twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from remediations.core import inventory, registry
from remediations.core.context import HostContext
from remediations.core.engine import Engine
from remediations.core.errors import HostError
from remediations.core.options import RunOptions
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status


class Steps(Remediation):
    """Three changes that append to a list; the second fails when asked to."""

    task: ClassVar[str] = ""  # not registered: used directly

    def __init__(self, done: list[str], fail_second: bool = False) -> None:
        self.done, self.fail_second = done, fail_second

    def gather(self, ctx: HostContext) -> list[str]:
        return list(self.done)

    def decide(self, ctx: HostContext, facts: list[str]) -> Plan:
        def step(name: str) -> Change:
            def apply(ctx: HostContext) -> str:
                if name == "two" and self.fail_second:
                    raise HostError("two broke")
                self.done.append(name)
                return f"did {name}"

            return Change(name, f"do {name}", apply, diff=f"+{name}", commands=(f"echo {name}",))

        return Plan.of(step("one"), step("two"), step("three"))

    def verify(self, ctx: HostContext, facts: list[str], plan: Plan) -> None:
        ctx.record("verify", Status.OK, f"{len(self.done)} done")


def local(tmp_path: Path, *names: str) -> inventory.Inventory:
    path = tmp_path / "hosts.yml"
    hosts = "".join(f"    {n}: {{ansible_connection: local, lock_dir: {tmp_path / n}}}\n" for n in names)
    path.write_text("all:\n  vars: {audit_log: " + str(tmp_path / "audit.jsonl") + "}\n  hosts:\n" + hosts)
    return inventory.load(path)


def run(tmp_path: Path, remediation: Remediation, check: bool = False) -> Any:
    inv = local(tmp_path, "h1", "h2")
    return Engine(inv, RunOptions(check=check, diff=True)).run(remediation, inv.select("h1")).hosts[0]


def test_check_mode_shows_every_change_and_applies_none(tmp_path: Path) -> None:
    done: list[str] = []
    result = run(tmp_path, Steps(done), check=True)
    assert done == []
    assert [(s.step, s.status, s.message) for s in result.steps] == [
        (name, Status.CHANGED, f"would do {name}") for name in ("one", "two", "three")
    ]
    assert result.steps[0].diff == "+one" and result.steps[0].data["commands"] == ["echo one"]


def test_a_real_run_applies_in_order_then_verifies(tmp_path: Path) -> None:
    done: list[str] = []
    result = run(tmp_path, Steps(done))
    assert done == ["one", "two", "three"]
    assert [s.message for s in result.steps] == ["did one", "did two", "did three", "3 done"]
    assert result.status == Status.CHANGED


def test_a_failed_change_stops_the_later_ones_and_verify(tmp_path: Path) -> None:
    done: list[str] = []
    result = run(tmp_path, Steps(done, fail_second=True))
    assert done == ["one"]
    assert [(s.step, s.status) for s in result.steps] == [("one", Status.CHANGED), ("two", Status.FAILED)]
    assert "two broke" in result.steps[-1].message


def test_nothing_to_do_is_one_ok_step_with_its_reason(tmp_path: Path) -> None:
    class Nothing(Steps):
        def decide(self, ctx: HostContext, facts: list[str]) -> Plan:
            return Plan.nothing("already fine", step="decide")

    result = run(tmp_path, Nothing([]))
    assert [(s.step, s.status, s.message) for s in result.steps] == [("decide", Status.OK, "already fine")]


class Related(Remediation):
    task: ClassVar[str] = ""

    def __init__(self, seen: dict[str, bool]) -> None:
        self.seen = seen

    def run(self, ctx: HostContext) -> None:
        host = inventory.Host("h2", {"ansible_connection": "local", "lock_dir": self.seen_dir}, (), "")
        with ctx.open(host) as sub:
            self.seen["lock held"] = (Path(self.seen_dir) / "remediations.lock").exists()
            sub.record("on h2", Status.OK, "hello from h2")
        with ctx.open(ctx.host) as same:
            self.seen["same"] = same is ctx

    seen_dir = ""


@pytest.mark.parametrize("check", [False, True])
def test_related_hosts_are_opened_by_the_engine(tmp_path: Path, check: bool) -> None:
    seen: dict[str, bool] = {}
    remediation = Related(seen)
    remediation.seen_dir = str(tmp_path / "h2lock")
    result = run(tmp_path, remediation, check=check)
    assert [s.message for s in result.steps] == ["hello from h2"]  # recorded in h1's result
    assert seen["same"] is True
    assert seen["lock held"] is (not check)  # locked for a real run only


def test_the_registry_has_every_task_once_with_help() -> None:
    import tasks as front_end

    # Tests define toy remediations of their own; the product's are those of the package.
    registered = {k: v for k, v in registry.discover().items() if v.__module__.startswith("remediations.")}
    assert {"restart-api", "block-ip", "restore-s3-prefix", "rotate-secret", "wal-cleanup"} <= set(registered)
    for name, cls in registered.items():
        assert cls.task == name
        assert all(a.help for a in cls.params), f"{name}: an argument has no help"
    listed = front_end.ns.tasks
    assert set(registered) <= set(listed)  # every remediation is a task
    runners = {"runbook"}  # runs remediations by name, is none itself
    others = set(listed) - set(registered) - runners
    toys = {n for n in others if registry.get(n).__module__.startswith("tests.")}
    assert others == toys  # and nothing else is (tests' toys registered earlier)
    for name, made in listed.items():
        assert (made.body.__doc__ or "").strip(), f"{name} has no docstring for inv --help"


def test_a_task_name_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):

        class Again(Remediation):
            task: ClassVar[str] = "restart-api"


class OwnSteps(Steps):
    """One change that records two steps of its own."""

    def decide(self, ctx: HostContext, facts: list[str]) -> Plan:
        def apply(ctx: HostContext) -> None:
            ctx.record("copy", Status.CHANGED, "copied")
            ctx.record("truncate", Status.CHANGED, "truncated")

        diff = "-4053 bytes\n+0 bytes"
        return Plan.of(Change("rotate", "rotate the log", apply, diff=diff, own_steps=True))


def test_a_change_with_its_own_steps_keeps_its_diff(tmp_path: Path) -> None:
    result = run(tmp_path, OwnSteps([]))
    assert [(s.step, s.message) for s in result.steps] == [("copy", "copied"), ("truncate", "truncated"),
                                                           ("verify", "0 done")]  # fmt: skip
    assert result.steps[1].diff == "-4053 bytes\n+0 bytes"  # the real run shows what --check showed
    assert run(tmp_path, OwnSteps([]), check=True).steps[0].diff == "-4053 bytes\n+0 bytes"


class OwnDiff(Steps):
    """A change whose first own step shows the diff itself (as set-env's write does)."""

    def decide(self, ctx: HostContext, facts: list[str]) -> Plan:
        def apply(ctx: HostContext) -> None:
            ctx.record("write", Status.CHANGED, "wrote", diff="-a\n+b")
            ctx.record("recreate", Status.CHANGED, "recreated")

        return Plan.of(Change("set", "set a", apply, diff="-a\n+b", own_steps=True))


def test_a_diff_an_own_step_shows_is_not_shown_twice(tmp_path: Path) -> None:
    result = run(tmp_path, OwnDiff([]))
    assert [(s.step, s.diff) for s in result.steps[:2]] == [("write", "-a\n+b"), ("recreate", "")]
