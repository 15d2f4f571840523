"""actions.service_command and facts.service_run: the verify's verdicts (a table), the command's words
(checked, split, quoted), and the host-side plumbing run by a real sh.

The plumbing test puts a `docker` on PATH that runs, on this machine, the words compose would run in
the container (everything after `-T SERVICE`): what it checks is that each word arrives as it was
given, through the shell text the task builds, and that output, stderr and exit status come back
apart. Real compose is the lab's part (tests/lab/docker/test_service_ops.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from remediations.actions.service_command import Verify, command_words, split_command, timeout_seconds
from remediations.core.errors import CommandResult, HostError, UsageError
from remediations.facts.compose import Project
from remediations.facts.service_run import (
    OUTPUT_LINES,
    Output,
    in_service,
    parse_outputs,
    run_command,
    same_output,
    verify_command,
)

SHIM = """#!/bin/sh
# compose's stand-in for the plumbing test: drop everything up to "-T SERVICE", run the rest here
while [ $# -gt 0 ]; do
  if [ "$1" = -T ]; then shift 2; exec "$@"; fi
  shift
done
exit 99
"""


@pytest.fixture
def shim(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "bin").mkdir()
    docker = tmp_path / "bin" / "docker"
    docker.write_text(SHIM)
    docker.chmod(0o755)
    (tmp_path / "project").mkdir()
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}


def project(tmp_path: Path) -> Project:
    return Project(str(tmp_path / "project"), "shop", ("compose.yaml",))


def sh(script: str, env: dict[str, str]) -> CommandResult:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env=env,
                          check=False)  # fmt: skip
    return CommandResult(script, done.returncode, done.stdout, done.stderr)


def out(code: int, *lines: str) -> Output:
    return Output(code, lines, len(lines))


ALEMBIC = Verify(("alembic", "current"), ("alembic", "heads"))
EXITS = Verify(("test", "-f", "/done"))


@pytest.mark.parametrize(("verify", "outputs", "holds", "said"), [
    (ALEMBIC, [out(0, "0002 (head)"), out(0, "0002 (head)")], True,
     "`alembic current` prints what `alembic heads` prints ('0002 (head)')"),
    (ALEMBIC, [out(0), out(0, "0002 (head)")], False,
     "`alembic current` prints nothing but `alembic heads` prints '0002 (head)'"),
    (ALEMBIC, [out(0, "0001"), out(0, "0002 (head)")], False,
     "`alembic current` prints '0001' but `alembic heads` prints '0002 (head)'"),
    (ALEMBIC, [out(0, "b (head)", "a (head)", ""), out(0, "  a (head)", "b (head)")], True, None),
    (ALEMBIC, [out(0), out(0)], True, None),  # no migrations at all: nothing to do
    (EXITS, [out(0)], True, "`test -f /done` exits 0"),
    (EXITS, [out(1)], False, "`test -f /done` exits 1 (no output)"),
])  # fmt: skip
def test_the_verify_judges(verify: Verify, outputs: list[Output], holds: bool, said: str | None) -> None:
    got = verify.judge(outputs)
    assert got[0] is holds
    if said is not None:
        assert got[1] == said


def test_a_compared_command_that_fails_cannot_tell() -> None:
    with pytest.raises(HostError, match=r"the verify cannot tell: `alembic current` exited 1: FAILED: no db"):
        ALEMBIC.judge([Output(1, (), 0, "FAILED: no db\n"), out(0, "0002 (head)")])


def test_same_output_ignores_order_and_blank_lines_only() -> None:
    assert same_output(out(0, "a", "", "b "), out(0, "b", "a"))
    assert not same_output(out(0, "a"), out(0, "a", "a"))


@pytest.mark.parametrize(("words", "why"), [
    ([], "give a command"),
    ([""], "give a command"),
    (["sh", "-c", "echo a\nrm -rf /"], "word 3"),
    (["echo", "\x1b[2J"], "word 2"),
    (["x" * 9000], "longer than 8192"),
])  # fmt: skip
def test_bad_command_words_are_refused(words: list[str], why: str) -> None:
    with pytest.raises(UsageError, match=why):
        command_words(words, "the command after --")


def test_split_command_splits_as_a_shell_would_and_never_runs_it() -> None:
    assert split_command("alembic current", "--verify") == ("alembic", "current")
    assert split_command("sh -c 'test -f /a b'", "--verify") == ("sh", "-c", "test -f /a b")
    assert split_command("echo $(id) `x` ;", "--verify") == ("echo", "$(id)", "`x`", ";")
    with pytest.raises(UsageError, match="--verify 'alembic \"current': No closing quotation"):
        split_command('alembic "current', "--verify")


def test_timeout_takes_the_one_grammar_within_1s_to_1d() -> None:
    assert timeout_seconds("10m", "--timeout") == 600
    assert timeout_seconds("1h30m", "--timeout") == 5400
    for bad in ("0", "0.5", "soon", "9" * 400 + "d"):
        with pytest.raises(UsageError, match="--timeout"):
            timeout_seconds(bad, "--timeout")


def test_the_command_line_quotes_every_word(tmp_path: Path) -> None:
    text = in_service(project(tmp_path), "v2", "api", ["sh", "-c", "echo $HOME; id", "a b"], "exec")
    assert "exec -T api sh -c 'echo $HOME; id' 'a b' </dev/null" in text
    text = in_service(project(tmp_path), "v1", "api", ["alembic", "upgrade", "head"], "run")
    assert "docker-compose -p shop -f compose.yaml run --rm --no-deps -T api alembic upgrade head" in text


HOSTILE = ["$(touch {pwned})", "`touch {pwned}`", "; touch {pwned}", "a\tb", "'\"", "--rm", "*", "-"]


def test_each_word_arrives_as_given(tmp_path: Path, shim: dict[str, str]) -> None:
    pwned = tmp_path / "pwned"
    argv = ["printf", "[%s]\\n", *(w.format(pwned=pwned) for w in HOSTILE)]
    result = sh(run_command(project(tmp_path), "v2", "api", argv, "exec"), shim)
    (output,) = parse_outputs(result)
    assert output.exit_code == 0, result.stdout + result.stderr
    assert output.lines == tuple(f"[{w.format(pwned=pwned)}]" for w in HOSTILE)
    assert not pwned.exists()


def test_output_exit_status_and_the_cut(tmp_path: Path, shim: dict[str, str]) -> None:
    argv = ["sh", "-c", "i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo out $i; done; echo err >&2; exit 7"]
    (output,) = parse_outputs(sh(run_command(project(tmp_path), "v2", "api", argv, "run"), shim))
    assert output.exit_code == 7
    assert output.total == 501 and len(output.lines) == OUTPUT_LINES and output.cut == 301
    assert output.lines[-1] == "err" and output.lines[0] == "out 302"  # stderr with stdout, in order


def test_a_verify_keeps_stdout_from_stderr(tmp_path: Path, shim: dict[str, str]) -> None:
    commands = [["sh", "-c", "echo 'INFO  [alembic] Context impl' >&2; echo '0002 (head)'"],
                ["sh", "-c", "echo '0002 (head)'; exit 0"],
                ["sh", "-c", "echo boom >&2; exit 4"]]  # fmt: skip
    outputs = parse_outputs(sh(verify_command(project(tmp_path), "v2", "api", commands, "exec"), shim))
    head = ("0002 (head)",)
    assert [(o.exit_code, o.lines) for o in outputs] == [(0, head), (0, head), (4, ())]
    assert "Context impl" in outputs[0].stderr and outputs[2].stderr.strip() == "boom"
    assert ALEMBIC.judge(outputs[:2])[0] is True
