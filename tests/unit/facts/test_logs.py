"""facts.logs: the host-side filter (grep, then the awk ring that keeps the last --tail lines) run by a
real sh, grep and awk on this machine with a real source of lines; the parser of its sections; the
journalctl arguments as the real journalctl takes them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from remediations.core.errors import CommandResult
from remediations.facts.logs import (
    CUT_MARK,
    LINE_LIMIT,
    TEMP_DIR,
    LogQuery,
    _grep_check,
    bounded,
    journal_lines,
    parse_block,
    parse_logs,
)
from remediations.facts.sections import parse_sections


def through_filter(lines: list[str], query: LogQuery) -> tuple[str, CommandResult]:
    """Run `bounded` on this machine: the source prints `lines` (from a file, so any bytes go)."""
    source = "cat \"$src\""
    script = "\n".join([*_grep_check(query), *TEMP_DIR, bounded("logs", "abc123", source, query)])
    done = subprocess.run(["sh", "-c", f'src=$1\n{script}', "sh", "/dev/stdin"],
                          input="".join(f"{line}\n" for line in lines).encode(), capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode()
    result = CommandResult(script, done.returncode, stdout, stderr)
    return script, result


def block(lines: list[str], query: LogQuery) -> tuple[int, tuple[str, ...]]:
    _, result = through_filter(lines, query)
    assert result.exit_code == 0, result.stderr
    sections = parse_sections(result.stdout)
    assert [s.name for s in sections] == ["logs", "rc"], result.stdout[:500]
    assert sections[1].arg == "logs 0"
    return parse_block(sections[0].body)


def test_the_ring_keeps_the_last_lines_and_counts_the_rest() -> None:
    lines = [f"line {i}" for i in range(1, 1001)]
    matched, kept = block(lines, LogQuery(tail=5))
    assert matched == 1000
    assert kept == ("line 996", "line 997", "line 998", "line 999", "line 1000")


def test_fewer_lines_than_the_tail_are_all_kept_and_none_is_cut() -> None:
    assert block(["a", "b"], LogQuery(tail=200)) == (2, ("a", "b"))
    assert block([], LogQuery(tail=200)) == (0, ())


def test_grep_is_a_fixed_string_in_any_case_by_default() -> None:
    lines = ["ERROR one", "error two", "fine", "a.b", "axb", "Error(3)"]
    assert block(lines, LogQuery(grep="error"))[1] == ("ERROR one", "error two", "Error(3)")
    assert block(lines, LogQuery(grep="a.b"))[1] == ("a.b",)  # not a regex: "." is a dot
    assert block(lines, LogQuery(grep="error(3)"))[1] == ("Error(3)",)
    assert block(lines, LogQuery(grep="error", match_case=True))[1] == ("error two",)


def test_regex_is_a_posix_extended_one() -> None:
    lines = ["ERROR one", "Traceback (most recent call last):", "fine", "critical: x"]
    query = LogQuery(grep="error|traceback|critical", regex=True)
    assert block(lines, query)[1] == ("ERROR one", "Traceback (most recent call last):", "critical: x")


def test_the_tail_counts_matched_lines_only() -> None:
    lines = [f"{'ERROR' if i % 2 else 'ok'} {i}" for i in range(100)]
    matched, kept = block(lines, LogQuery(grep="error", tail=3))
    assert matched == 50 and kept == ("ERROR 95", "ERROR 97", "ERROR 99")


def test_a_long_line_is_cut_on_the_host() -> None:
    (matched, kept) = block(["x" * (LINE_LIMIT * 5), "short"], LogQuery())
    assert matched == 2
    assert kept[0] == "x" * LINE_LIMIT + CUT_MARK and kept[1] == "short"


def test_a_log_line_cannot_pass_for_a_section_marker_or_a_terminal_escape() -> None:
    lines = ["@@rc logs 1", "@@error pwned", "\x1b]0;owned\x07 title", "plain"]
    matched, kept = block(lines, LogQuery())
    assert matched == 4
    assert kept == ("@@rc logs 1", "@@error pwned", "\\x1b]0;owned\\x07 title", "plain")


@pytest.mark.parametrize("pattern", ["$(touch /tmp/rm-logs-pwned)", "`id`", "'; rm -rf / #", "-e x",
                                     "--help"])  # fmt: skip
def test_a_hostile_pattern_is_text_to_grep_for(pattern: str) -> None:
    lines = [f"has {pattern} in it", "has not"]
    assert block(lines, LogQuery(grep=pattern))[1] == (f"has {pattern} in it",)
    assert not os.path.exists("/tmp/rm-logs-pwned")


def test_a_regex_grep_refuses_is_said_and_nothing_else_runs() -> None:
    _, result = through_filter(["a"], LogQuery(grep="a(", regex=True))
    facts = parse_logs(None, result)
    assert facts.error.startswith("grep refused the --grep pattern: ") and not facts.blocks


def test_the_source_exit_status_is_its_own() -> None:
    query = LogQuery()
    script = "\n".join([*TEMP_DIR, bounded("logs", "abc", "sh -c 'echo partial; exit 3'", query)])
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    facts = parse_logs(None, CommandResult(script, done.returncode, done.stdout, done.stderr))
    assert [(b.name, b.lines, b.matched) for b in facts.blocks] == [("abc", ("partial",), 1)]
    assert facts.blocks[0].error == "docker logs exited 3: partial"


def test_parse_names_containers_and_learns_their_env() -> None:
    inspect = ('[{"Id": "abcdef0123456789", "Name": "/shop-api-1", "State": {"Status": "running"}, '
               '"Config": {"Env": ["DATABASE_PASSWORD=s3cr3t-pw", "X=1"]}}]')
    stdout = (
        "@@compose v2\n@@services 0\napi\n@@cferr\n@@ps 0\nabcdef0123456789\n@@pserr\n"
        f"@@inspect\n{inspect}\n@@logs abcdef0123456789\n2\n|one\n|two\n@@rc logs 0\n"
    )
    facts = parse_logs("api", CommandResult("x", 0, stdout, ""))
    assert facts.service is not None and not facts.service.error
    got = [(b.source, b.name, b.lines, b.cut) for b in facts.blocks]
    assert got == [("container", "shop-api-1", ("one", "two"), 0)]
    assert facts.env == {"abcdef012345": {"DATABASE_PASSWORD": "s3cr3t-pw", "X": "1"}}


def test_no_journalctl_is_said() -> None:
    facts = parse_logs(None, CommandResult("x", 0, "@@nojournal\n", ""))
    assert facts.error == "no journalctl on the host (--unit needs systemd's journal)"


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="no journalctl on this machine")
def test_the_real_journalctl_takes_the_arguments() -> None:
    """The journal of this machine may be empty (no journald runs here): what is checked is that
    journalctl accepts every argument the task gives it, --since among them, and exits 0."""
    script = "\n".join([*TEMP_DIR, *journal_lines("nosuch-remediations-test.service", LogQuery(since=3600))])
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    facts = parse_logs(None, CommandResult(script, done.returncode, done.stdout, done.stderr))
    got = [(b.source, b.name, b.error) for b in facts.blocks]
    assert got == [("journal", "nosuch-remediations-test.service", "")]
