"""The README's "Adding a remediation" example, run as it is written there: registered from this test
module, it appears in the Invoke collection and passes the quartet on a local host."""

from __future__ import annotations

import contextlib
import io
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke import Program

from remediations.cli import collection
from remediations.core import registry
from tests.labkit import Ran
from tests.quartet import quartet

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a remediation", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the README's Adding a remediation section has no python block"
    return match.group(1)


@pytest.fixture
def example() -> Iterator[types.ModuleType]:
    module = types.ModuleType("readme_example")
    exec(compile(readme_example(), "README.md", "exec"), module.__dict__)  # noqa: S102
    yield module
    registry.unregister("ensure-line")


def run_inv(*args: str, audit: Path, inventory: Path | None = None) -> Ran:
    """`inv ARGS` in this process, on the collection as it is now (with the example registered)."""
    out, err = io.StringIO(), io.StringIO()
    program = Program(namespace=collection(), name="inv", binary="inv")
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.MonkeyPatch.context() as patch:  # fmt: skip
        patch.setenv("REMEDIATIONS_AUDIT_LOG", str(audit))
        patch.setenv("NO_COLOR", "1")
        try:
            program.run(["inv", *args, *(("--inventory", str(inventory)) if inventory else ())])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Ran(code, out.getvalue(), err.getvalue())


def local_inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yml"
    local: dict[str, Any] = {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock")}
    path.write_text(yaml.safe_dump({"all": {"hosts": {"web1": local, "web2": local}}}))
    return path


def test_the_example_is_listed_with_its_declared_flags(example: types.ModuleType, tmp_path: Path) -> None:
    listing = run_inv("--list", audit=tmp_path / "audit.jsonl")
    assert "ensure-line" in listing.stdout.split()
    helped = run_inv("--help", "ensure-line", audit=tmp_path / "audit.jsonl")
    assert "Make sure a file on each host contains a line" in helped.stdout
    assert "--path" in helped.stdout and "--line" in helped.stdout and "--check" in helped.stdout


def test_the_example_passes_the_quartet_on_a_local_host(example: types.ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    target.write_text("welcome\n")
    inventory = local_inventory(tmp_path)

    def lines() -> list[str]:
        return target.read_text().splitlines()

    runs = quartet(
        "ensure-line", "--host", "web1", "--path", str(target), "--line", "maintenance at 03:00",
        hosts=["web1"], audit=tmp_path / "audit.jsonl", state=lines, run=run_inv, inventory=inventory,
    )  # fmt: skip
    assert lines() == ["welcome", "maintenance at 03:00"]
    check = runs.check.host("web1")
    assert [s["message"] for s in check["steps"] if s["status"] == "changed"] == [
        f"would append the line to {target}"
    ]
    assert runs.again.host("web1")["steps"][-1]["message"] == f"{target} already has the line"
    audited = [yaml.safe_load(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {r.get("arguments", {}).get("line") for r in audited if r.get("task") == "ensure-line"} == {
        "maintenance at 03:00"
    }


def test_bad_input_to_the_example_is_one_line_and_changes_nothing(
    example: types.ModuleType, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    target.write_text("welcome\n")
    inventory = local_inventory(tmp_path)
    for bad, expected in (
        (("--path", "relative/motd", "--line", "x"), "--path 'relative/motd': give an absolute path"),
        (("--line", "x"), "--path is required"),
    ):
        audit = tmp_path / "audit.jsonl"
        ran = run_inv("ensure-line", "--host", "web1", *bad, audit=audit, inventory=inventory)
        assert ran.code == 2, ran
        assert ran.stderr.count("\n") == 1 and expected in ran.stderr, ran.stderr
    assert target.read_text() == "welcome\n"
