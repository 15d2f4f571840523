"""A command's output ends at the channel's EOF, not at its exit status.

sshd may send the exit status before the last of the output (seen as a facts command whose final
`@@end` line was missing about once in 300 runs). These make that order certain: the shell exits at
once while a child it left behind writes a moment later and then closes the output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from remediations.core import connection, inventory
from tests import labkit

pytestmark = pytest.mark.lab


@pytest.fixture
def remote(lab: Any) -> Iterator[Any]:
    remote = connection.connect(inventory.load(labkit.LAB_INVENTORY).hosts["api1"])
    yield remote
    remote.close()


def test_output_written_after_the_exit_status_is_not_lost(remote: Any) -> None:
    result = remote.run("(sleep 0.5; echo late; echo late-err >&2) & echo early")
    assert result.exit_code == 0
    assert result.stdout.split() == ["early", "late"]
    assert result.stderr.strip() == "late-err"


def test_a_child_that_keeps_the_output_open_does_not_hang_the_run(remote: Any) -> None:
    started = time.monotonic()
    result = remote.run("sleep 30 & echo started", timeout=20)
    took = time.monotonic() - started
    assert result.exit_code == 0
    assert result.stdout.strip() == "started"
    assert took < connection.EXIT_GRACE + 5, took


def test_a_command_that_closes_its_output_early_still_reports_its_exit(remote: Any) -> None:
    result = remote.run("echo out; exec >&- 2>&-; sleep 1; exit 3")
    assert result.exit_code == 3
    assert result.stdout.strip() == "out"


def test_the_last_line_arrives_every_time(remote: Any) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done; echo @@end"
    missing = [n for n in range(200) if not remote.run(script).stdout.rstrip().endswith("@@end")]
    assert missing == []
