"""Invoke's own bad-input answers, made this project's: one line, exit 2, a JSON error with --json.

Invoke parses the command line in `Program.run`, after it has imported tasks.py and before any task
body runs; its `ParseError` ("No idea what '--hots' is!") is printed raw and ends in exit 1. Users
type `inv` (Invoke's own binary), so a Program subclass of ours would never be the one running.
`install()`, called by tasks.py, wraps the two Program steps that come after tasks.py was loaded
(`parse_tasks`: the task names and their flags; `parse_cleanup`: --help TASK and --list), so that
their ParseError becomes Invoke's own `Exit(message, code=2)`, and a reader that closed the pipe
(`inv --list | head -1`) ends the listing quietly. The task step parses against the tasks the
command line names (`_parse_named`), so that `inv TASK` imports TASK's remediation module alone.
Errors Invoke meets before tasks.py is imported (a bad core flag such as `-r` without its folder, no
tasks.py at all) stay Invoke's.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from remediations.reporting.output import USAGE_EXIT_CODE, error_document

_UNKNOWN = re.compile(r"No idea what '(?P<token>.*)' is!", re.DOTALL)
_NEEDS_VALUE = re.compile(r"Flag <Argument: (?P<name>[\w-]+)[^>]*> needed value")
_POSITIONAL = re.compile(r"'(?P<task>[\w-]+)' did not receive required positional arguments: '(?P<name>\w+)'")
_NO_VALUE = re.compile(r"Flag '(?P<flag>[^']+)' doesn't take any value")


def install() -> None:
    """Wrap Invoke's Program steps once per process (idempotent: tasks.py may be imported twice)."""
    if getattr(Program, "_one_line_errors", False):
        return
    parse_tasks, parse_cleanup = Program.parse_tasks, Program.parse_cleanup

    def tasks_step(self: Program) -> None:
        listing_runbooks(self.core.unparsed)
        _remember_remainder(self.argv)
        _guarded(self, lambda: _parse_named(self, parse_tasks))

    def cleanup_step(self: Program) -> None:
        _guarded(self, lambda: parse_cleanup(self))

    Program.parse_tasks = tasks_step  # type: ignore[method-assign]
    Program.parse_cleanup = cleanup_step  # type: ignore[method-assign]
    Program._one_line_errors = True  # type: ignore[attr-defined]


def listing_runbooks(tokens: list[str]) -> None:
    """`inv runbook --list` / `--show NAME`: the runbook's NAME is positional, which Invoke always
    requires; a listing gives it an empty value (`--name=`) so that it parses."""
    if not tokens or tokens[0] != "runbook" or any(t == "--name" or t.startswith("--name=") for t in tokens):
        return
    if "--list" in tokens or any(t == "--show" or t.startswith("--show=") for t in tokens):
        tokens.insert(1, "--name=")
_REMAINDER: list[list[str]] = []  # the words after `--` of the command line Invoke parsed last


def _remember_remainder(argv: Iterable[str] | None) -> None:
    words = list(argv or ())
    _REMAINDER[:] = [words[words.index("--") + 1 :] if "--" in words else []]


def remainder() -> list[str]:
    """The words after `--` on the command line, each one as typed: Invoke itself keeps only their
    space-joined text (`core.remainder`), which loses the quoting of `-- sh -c 'echo a b'`. Read from
    the argv Invoke parsed (recorded by `install`), else from this process's own argv."""
    if _REMAINDER:
        return list(_REMAINDER[0])
    words = sys.argv[1:]
    return words[words.index("--") + 1 :] if "--" in words else []


def _parse_named(program: Program, parse: Callable[[Program], None]) -> None:
    """Parse against the tasks the command line names, so that only their remediation modules are
    imported (remediations.cli.PendingTask); against every task when it names none, asks for
    --list, --complete or the whole --help, or does not parse: the listings and the one-line errors
    (did you mean …?) are those of the whole collection, as before."""
    from remediations.cli import every_task, only_named

    whole = program.collection
    if not _wants_all(program):
        halp = program.args.help.value
        only = only_named(whole, [*program.core.unparsed, *([halp] if isinstance(halp, str) else [])])
        if only is not None:
            program.collection = program.scoped_collection = only
            try:
                parse(program)
                if not _wants_all(program):  # a core flag after the task (inv restart-api --list)
                    return
            except ParseError:
                pass
            program.collection = program.scoped_collection = whole
    every_task(whole)
    parse(program)


def _wants_all(program: Program) -> bool:
    args, unparsed = program.args, program.core.unparsed
    halp = args.help.value
    unknown_help = isinstance(halp, str) and halp not in program.collection
    return bool(args.list.value or args.complete.value or halp is True or unknown_help
                or not (unparsed or halp))  # fmt: skip


def _guarded(program: Program, step: Callable[[], None]) -> None:
    try:
        step()
    except ParseError as exc:
        raise usage_exit(explain(exc, program), json_wanted(program.argv)) from None
    except Exit:  # --list and --help end in Exit: what they printed must reach the reader now
        _flush_or_quiet()
        raise
    except BrokenPipeError:
        reader_gone()
        raise Exit(code=0) from None


def json_wanted(argv: Iterable[str] | None) -> bool:
    return "--json" in (argv or ())


def usage_exit(line: str, as_json: bool) -> Exit:
    """Invoke's own way out, with our line on stderr (and a JSON error object on stdout with --json)."""
    if as_json:
        print(json.dumps(error_document(line)), flush=True)
    return Exit(f"error: {line}", code=USAGE_EXIT_CODE)


def explain(exc: ParseError, program: Program) -> str:
    """One line saying what was wrong and what to do, from Invoke's ParseError."""
    text = str(exc)
    context: Any = getattr(exc, "context", None)
    task = getattr(context, "name", None)
    tasks = sorted(getattr(program.collection, "task_names", {}) or ())
    unknown = _UNKNOWN.match(text)
    if unknown:
        token = unknown.group("token")
        if task and token.startswith("-"):
            flags = sorted(f for f in context.flags if f.startswith("--"))
            hint = f"(inv --help {task} lists them)"
            return f"{task} has no flag {_shown(token)}{_did_you_mean(token, flags)} {hint}"
        glued = next((a for a in program.argv or () if a.startswith("--") and a.endswith(f"={token}")), None)
        if task and glued:
            switch = glued.split("=", 1)[0]
            return f"{switch} is a switch and takes no value; leave out '={_shown(token)[1:-1]}'"
        if task:
            return (f"{_shown(token)} is neither a flag of {task} nor a task{_did_you_mean(token, tasks)}; "
                    "flags take their value after the name (--host prod)")  # fmt: skip
        return f"no task {_shown(token)}{_did_you_mean(token, tasks)} (inv --list shows every task)"
    needs = _NEEDS_VALUE.search(text)
    if needs:
        flag = "--" + needs.group("name").replace("_", "-")
        return f"{flag} needs a value" + (f" (inv --help {task})" if task else "")
    positional = _POSITIONAL.search(text)
    if positional:
        name, needing = positional.group("name"), positional.group("task")
        listing = f" (inv {needing} --list shows them)" if needing == "runbook" else ""
        return f"{needing} needs its {name.upper()} first{listing}"
    no_value = _NO_VALUE.search(text)
    if no_value:
        return f"{no_value.group('flag')} is a switch and takes no value; leave out the '=…'"
    return f"{' '.join(text.split())} (inv --list, inv --help TASK)"


def _shown(token: str) -> str:
    text = repr(token)
    return text if len(text) <= 60 else f"{text[:56]}…{text[-3:]}"


def _did_you_mean(token: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(token[:200], candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def reader_gone() -> None:
    """The reader closed the pipe: point stdout at /dev/null so that Python's exit flush (and any
    later print) does not fail on it; nothing more is shown, no traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (tests): nothing to redirect
        pass


def _flush_or_quiet() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone()
    except (OSError, ValueError):
        pass
