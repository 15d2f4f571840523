"""The runbook format: every error names file:line and what to do; the shipped runbooks read; the CLI
answers bad input in one line with exit 2 and runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remediations.runbook import spec
from tests import labkit

GOOD = """\
name: toy
steps:
  - id: probe
    check: health
    on_failure: continue
  - id: fix
    run: ensure-healthy
    args: {service: api}
    when: {probe: failed}
"""


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("name: toy\nsteps:\n  - id: probe\n    chek: health\n", 4, "step probe has no key 'chek'"),
        ("name: toy\nsteps:\n  - id: probe\n    check: nosuch\n", 4, "no task 'nosuch'"),
        ("name: toy\nsteps:\n  - id: probe\n    check: restart-api\n", 4, "restart-api changes things"),
        ("name: toy\nsteps:\n  - id: x\n    run: health\n", 4, "health is read-only"),
        ("name: toy\nsteps:\n  - id: x\n    run: restart-api\n    args: {service: 'a b'}\n", 5,
         "not a compose service name"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n    when: {later: failed}\n", 5,
         "'later', which is not an earlier step"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n  - id: y\n    check: health\n"
         "    when: {x: broken}\n", 7, "give one of ok, changed, failed, skipped"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n  - id: y\n    check: health\n"
         "    on_failure: x\n", 5, "on_failure 'x' is not a later step"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n    retries: 9\n", 5, "retries is a whole number"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n    timeout: soon\n", 5, "timeout"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n  - id: x\n    check: health\n", 5,
         "the id is used by an earlier step"),
        ("name: toy\nsteps:\n  - id: x\n    notify: '{y.status}'\n", 3, "{y.status}"),
        ("name: toy\nsteps:\n  - id: x\n    notify: '{host!r}'\n", 3, "no format specs"),
        ("name: toy\nsteps:\n  - id: x\n    run: restart-api\n    args: {service: '${nope}'}\n", 5,
         "${nope} is not one of the runbook's vars"),
        ("name: toy\nname: again\nsteps: []\n", 2, "'name' is given twice"),
        ("name: toy\nsteps:\n  - id: x\n    check: health\n    run: restart-api\n", 3, "exactly one of"),
        ("name: Toy\nsteps: []\n", 1, "name must be lowercase"),
        ("name: toy\nsteps: [\n", 3, "not YAML"),
        ("name: toy\nsteps:\n  - id: x\n    check: !!python/object:os.system health\n", 4, "could not"),
        ("name: toy\nsteps:\n  - id: x\n    run: restore-s3-prefix\n    mode: dry\n", 5, "mode is auto"),
    ],
)
def test_errors_name_the_line(text: str, line: int, says: str) -> None:
    with pytest.raises(spec.RunbookError) as caught:
        spec.parse(text, "toy.yml")
    message = str(caught.value)
    assert message.startswith(f"toy.yml:{line}:"), message
    assert says in message, message
    assert "\n" not in message


def test_a_good_runbook_reads() -> None:
    book = spec.parse(GOOD, "toy.yml", "toy")
    assert [s.id for s in book.steps] == ["probe", "fix"]
    assert book.steps[1].when == {"probe": ("failed",)} and book.steps[0].on_failure == "continue"
    with pytest.raises(spec.RunbookError, match="differs from the file's name"):
        spec.parse(GOOD, "other.yml", "other")


def test_the_shipped_runbooks_read_and_cover_the_seeds() -> None:
    books = {b.name: b for b in spec.every([spec.SHIPPED])}
    assert {"api-down", "disk-full", "secret-leaked", "media-deleted"} <= set(books)
    for book in books.values():
        assert book.description and book.seeds, book.name
    assert books["media-deleted"].steps[0].mode == "check" and books["media-deleted"].steps[1].approve


def test_a_teams_folder_comes_before_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "api-down.yml").write_text(GOOD.replace("name: toy", "name: api-down"))
    book = spec.find("api-down", spec.search_path([str(tmp_path)]))
    assert book.source == str(tmp_path / "api-down.yml") and len(book.steps) == 2


def inv(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, "-m", "invoke", *argv], capture_output=True, text=True,
                          cwd=cwd or root, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("runbook", "nosuch", "--host", "h1"), "no runbook 'nosuch'"),
        (("runbook", "api-down"), "--host is required"),
        (("runbook", "secret-leaked", "--host", "h1"), "--var key=VALUE is required"),
        (("runbook", "secret-leaked", "--host", "h1", "--var", "key"), "give NAME=VALUE"),
        (("runbook", "api-down", "--host", "h1", "--var", "x=1"), "has no such var"),
        (("runbook", "api-down", "--host", "h1", "--from", "nope"), "has no step 'nope'"),
        (("runbook", "api-down", "--host", "h1", "--from", "restart"), "no recorded run of api-down"),
        (("runbook", "api-down", "--host", "nohost"), "nohost"),
        (("runbook", "../../etc/passwd", "--host", "h1"), "lowercase letters, digits"),
        (("runbook",), "runbook needs its NAME first"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: tuple[str, ...], says: str) -> None:
    path = labkit.write_local_inventory(tmp_path, {"h1": {"api_service": "api"}})
    audit = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *argv, "--inventory", str(path)] if len(argv) > 1
        else [sys.executable, "-m", "invoke", *argv],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parents[3], env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit)},
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "hosts").exists() or not any((tmp_path / "hosts").rglob("*"))


def test_list_and_show() -> None:
    listed = inv("runbook", "--list")
    assert listed.returncode == 0 and "api-down" in listed.stdout and "media-deleted" in listed.stdout
    shown = inv("runbook", "--show", "api-down", "--json")
    [doc] = json.loads(shown.stdout)
    assert doc["name"] == "api-down" and doc["steps"][0]["id"] == "probe"
