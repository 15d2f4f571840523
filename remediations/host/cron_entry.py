"""What an install-cron entry runs, and the checks that refuse an entry that could never work.

The entry's command (every value quoted; see remediations/reporting/cronlog.py for the log lines):

    cd PROJECT && PYTHON -m remediations.reporting.cronlog --name NAME --lock LOCK -- \
        INV TASK --inventory FILE ARGS >> LOG 2>&1

Refused before anything is written: --args Invoke would reject for the task (an unknown flag, a
flag without its value), values the task refuses (checked as under cron: restore-pitr without
--drill), a task that needs --host given none, and (`preflight`, run where cron
will run the entry, with its interpreter and cron's PATH) an inv that is not there, a lock folder
that is not writable, an inventory that does not exist or does not parse, a --host it has no host for.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from remediations.core.errors import UsageError
from remediations.reporting.cronlog import PREFLIGHT_ERROR, PREFLIGHT_OK, RUN_ID_ENV

RUNNER = "remediations.reporting.cronlog"
CRON_PATH = "/usr/bin:/bin"  # the PATH cron gives a job (Debian's cron, cronie)


def job_command(
    name: str, task: str, args: Sequence[str], *, project: str, python: str, inv: str, inventory: str,
    lock: str, log: str,
) -> str:  # fmt: skip
    runner = [python, "-m", RUNNER, "--name", name, "--lock", lock, "--"]
    run = [inv, task, "--inventory", inventory, *args]
    return f"cd {shlex.quote(project)} && {shlex.join([*runner, *run])} >> {shlex.quote(log)} 2>&1"


def preflight_command(*, project: str, python: str, inv: str, inventory: str, lock: str,
                      select: str | None) -> str:  # fmt: skip
    """Shell text: the entry's runner, in cron's environment, checking what every run needs."""
    argv = [python, "-m", RUNNER, "--preflight", "--lock", lock, "--inventory", inventory,
            *(["--select", select] if select else []), "--", inv]  # fmt: skip
    env = f'env -i PATH={CRON_PATH} HOME="$HOME" LOGNAME="$(id -un)" SHELL=/bin/sh'
    return f"cd {shlex.quote(project)} 2>&1 && {env} {shlex.join(argv)} 2>&1"


def preflight_problem(output: str, code: int, python: str) -> str:
    """"" when the preflight passed; otherwise what it found, as one line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line == PREFLIGHT_OK and code == 0:
            return ""
        if line.startswith(PREFLIGHT_ERROR):
            return line[len(PREFLIGHT_ERROR) :]
    tail = lines[-1] if lines else f"exit code {code}"
    return f"the entry's interpreter {python} cannot run the cron runner ({tail[:300]})"


def task_flags(task: str, tokens: Sequence[str]) -> dict[str, Any]:
    """The --args tokens as `inv TASK` would parse them: {flag name: value} of the flags given.

    The front end's own parser is used (the task's flags come from its declaration there), so what
    this accepts is exactly what every cron run of the entry would be given."""
    from invoke.exceptions import ParseError
    from invoke.parser import Parser
    from invoke.parser.context import ParserContext

    from remediations.cli import declared_task
    from remediations.core import registry

    made = declared_task(registry.discover()[task])
    context = ParserContext(name=made.name, args=made.get_arguments())
    try:
        parsed = Parser(contexts=[context]).parse_argv([made.name, *tokens])
    except ParseError as exc:
        raise UsageError(
            f"--args {shlex.join(tokens)!r}: inv {task} would refuse it on every run ({exc})"
        ) from None
    return {name: arg.value for name, arg in parsed[0].args.items() if arg.got_value}


@contextmanager
def as_under_cron() -> Iterator[None]:
    """The environment a cron run of the entry has (the runner sets RUN_ID_ENV), for the task's own
    checks: a task that refuses some flags only under cron (restore-pitr's switch) refuses them at
    install time too, instead of failing every run."""
    saved = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = "install-cron-check"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = saved


def check_task_flags(task: str, flags: dict[str, Any]) -> None:
    """UsageError for flags that make the entry wrong: its own --inventory, a missing --host."""
    from remediations.core import registry

    if "inventory" in flags:
        raise UsageError("--args: the entry passes --inventory itself (the inventory of this run)")
    cls = registry.discover()[task]
    from remediations.cli import COMMON_NAMES

    try:  # what the task itself checks before it connects anywhere, as cron will run it
        given = {k.replace("-", "_"): v for k, v in flags.items()}
        with as_under_cron():
            cls.from_values(dict(cls.params.parse({k: v for k, v in given.items() if k not in COMMON_NAMES})))
    except UsageError as exc:
        raise UsageError(f"--args: inv {task} would refuse it on every run: {exc}") from None
    if not flags.get("host") and not cls.runs_on_controller and not cls.default_hosts:
        raise UsageError(
            f"--task {task} needs --host: give the hosts in --args, e.g. --args '--host db1' "
            f"(inv {task} without --host refuses to run)"
        )
