"""core.startup: the collector's pause during start-up ends once, and only a pause it took itself.
Each case in a fresh interpreter (a freeze would stay in this one)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.test_startup import ROOT


def run(code: str) -> dict[str, object]:
    program = "import gc, json\nfrom remediations.core import startup\n" + code
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_pause_then_done_freezes_what_exists_and_collects_again() -> None:
    seen = run("startup.pause(); paused = gc.isenabled(); before = gc.get_freeze_count()\n"
               "startup.done(); after = gc.get_freeze_count(); startup.done()\n"
               "again = gc.get_freeze_count()\n"
               "print(json.dumps([paused, before, after, again, gc.isenabled()]))")  # fmt: skip
    paused, before, after, again, enabled = seen  # type: ignore[misc]
    assert paused is False and before == 0
    assert after > 1000 and again == after  # a second done() freezes nothing more
    assert enabled is True


def test_a_program_that_turned_the_collector_off_itself_is_left_as_it_was() -> None:
    seen = run("gc.disable(); startup.pause(); startup.done()\n"
               "print(json.dumps([gc.isenabled(), gc.get_freeze_count()]))")  # fmt: skip
    assert seen == [False, 0]


def test_done_without_a_pause_changes_nothing() -> None:
    seen = run("startup.done(); print(json.dumps([gc.isenabled(), gc.get_freeze_count()]))")
    assert seen == [True, 0]
