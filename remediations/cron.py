"""install-cron: one crontab entry per cron-safe task, installed idempotently.

facts   `crontab -l` of the user (the connection's, or --user) and whether crontab and flock exist;
decide  pure: the entry is found by its marker comment (`# remediations: NAME …`, the line above
        it); add it, replace it when it differs, remove it (--remove), or nothing to do;
apply   make the log folder, then install the edited crontab with `crontab -` (text on stdin);
verify  re-read `crontab -l`: the entry is exactly as wanted (or gone).

The entry runs `cd PROJECT && flock -n LOCK INV TASK --inventory FILE ARGS >> LOG 2>&1`: flock -n
skips a run while the previous one still holds the lock, so runs never overlap.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from remediations.engine import HostContext, Remediation
from remediations.errors import HostError, UsageError
from remediations.inventory import Host
from remediations.results import Status

CRON_SAFE_TASKS = (
    "restore-test",
    "backup-check",
    "wal-cleanup",
    "ensure-healthy",
    "health",
    "unblock-expired",
)
MARKER = "# remediations: "
MARKER_NOTE = " (managed by inv install-cron; do not edit)"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
PROJECT_DIR = str(Path(__file__).resolve().parent.parent)
DEFAULT_LOG = "/var/log/remediations/cron-{name}.log"

MACROS = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELDS = (  # name, lowest, highest, names (index + offset = value)
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day of month", 1, 31, (), 0),
    ("month", 1, 12, MONTHS, 1),
    ("day of week", 0, 7, DAYS, 0),
)


# --------------------------------------------------------------------------------------------
# Cron expressions and crontab text (pure)
# --------------------------------------------------------------------------------------------


def _value(text: str, field: str, low: int, high: int, names: Sequence[str], offset: int) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + offset
    if not text.isdigit():
        raise ValueError(f"{field} {text!r} is not a number" + (f" or a name ({names[0]}…)" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{field} {value} is outside {low}-{high}")
    return value


def _check_field(text: str, field: str, low: int, high: int, names: Sequence[str], offset: int) -> None:
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"{field} step {step!r} must be a positive number")
        if base == "*":
            continue
        first, dash, last = base.partition("-")
        start = _value(first, field, low, high, names, offset)
        if dash:
            end = _value(last, field, low, high, names, offset)
            if end < start:
                raise ValueError(f"{field} range {base!r} runs backwards")
        elif slash:
            continue  # "5/15": from 5 every 15 (Vixie cron)


def validate_schedule(schedule: str) -> str:
    """The schedule, normalised to single spaces; UsageError when it is not a cron expression."""
    text = " ".join(schedule.split())
    if text in MACROS:
        return text
    fields = text.split(" ")
    if len(fields) != 5:
        raise UsageError(
            f"--schedule {schedule!r} is not a cron expression: give 5 fields (minute hour day-of-month "
            f"month day-of-week, e.g. '0 4 * * 0') or one of {', '.join(MACROS)}"
        )
    for value, (field, low, high, names, offset) in zip(fields, FIELDS, strict=True):
        try:
            if not re.fullmatch(r"[A-Za-z0-9*,/-]+", value) or ",," in value or value.startswith(","):
                raise ValueError(f"{field} {value!r} has characters cron does not accept")
            _check_field(value, field, low, high, names, offset)
        except ValueError as exc:
            raise UsageError(f"--schedule {schedule!r} is not a cron expression: {exc}") from None
    return text


def marker(name: str) -> str:
    return f"{MARKER}{name}{MARKER_NOTE}"


@dataclass(frozen=True)
class Job:
    """A wanted crontab entry."""

    name: str
    schedule: str
    command: str

    @property
    def line(self) -> str:
        # In a crontab command, % ends the command (the rest goes to stdin): escape it.
        return f"{self.schedule} {self.command.replace('%', chr(92) + '%')}"


def job_command(
    task: str, args: Sequence[str], *, project: str, inv: str, inventory: str, lock: str, log: str
) -> str:
    run = [inv, task, "--inventory", inventory, *args]
    return (
        f"cd {shlex.quote(project)} && flock -n {shlex.quote(lock)} {shlex.join(run)} "
        f">> {shlex.quote(log)} 2>&1"
    )


def find(lines: Sequence[str], name: str) -> int | None:
    """Index of the marker line of `name`, or None."""
    wanted = marker(name)
    for index, line in enumerate(lines):
        if line.rstrip() == wanted:
            return index
    return None


def edit(current: str, name: str, job: Job | None) -> tuple[str, str]:
    """Pure: (new crontab text, action) with action one of add, replace, remove, none.

    `job` None removes the entry. Every other line is kept as it is.
    """
    lines = current.splitlines()
    at = find(lines, name)
    existing = lines[at + 1] if at is not None and at + 1 < len(lines) else None
    if job is None:
        if at is None:
            return current, "none"
        del lines[at : at + 2]
        return _text(lines), "remove"
    if at is not None and existing == job.line:
        return current, "none"
    if at is not None:
        lines[at : at + 2] = [marker(name), job.line]
        return _text(lines), "replace"
    return _text([*lines, marker(name), job.line]), "add"


def _text(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


# --------------------------------------------------------------------------------------------
# The remediation
# --------------------------------------------------------------------------------------------

FACTS = """
for tool in crontab flock; do command -v "$tool" >/dev/null 2>&1 || echo "@@missing $tool"; done
out=$({crontab} -l 2>&1); rc=$?
echo "@@crontab $rc"; printf '%s\\n' "$out"
"""


class InstallCron(Remediation):
    task: ClassVar[str] = "install-cron"

    def __init__(
        self,
        task: str | None,
        schedule: str | None,
        *,
        args: str = "",
        name: str | None = None,
        remove: bool = False,
        user: str | None = None,
        log: str | None = None,
        inventory: str = "",
    ) -> None:
        if not task or task not in CRON_SAFE_TASKS:
            raise UsageError(
                f"--task {task!r}: give one of the cron-safe tasks: {', '.join(CRON_SAFE_TASKS)}"
            )
        self.cron_task = task
        self.name = name or task
        if not NAME_RE.match(self.name):
            raise UsageError(f"--name {self.name!r}: lower-case letters, digits and '-', up to 48")
        self.remove = remove
        self.schedule = "" if remove else validate_schedule(schedule or "")
        try:
            self.args = shlex.split(args or "")
        except ValueError as exc:
            raise UsageError(f"--args {args!r}: {exc}") from None
        if any("\n" in a or "\r" in a for a in self.args):
            raise UsageError("--args: no line breaks")
        if any(a in ("--inventory", "-i") for a in self.args):
            raise UsageError("--args: the entry passes --inventory itself (the inventory of this run)")
        if user is not None and not USER_RE.match(user):
            raise UsageError(f"--user {user!r} is not a user name")
        self.user = user
        self.log = log or DEFAULT_LOG.replace("{name}", self.name)
        if not self.log.startswith("/"):
            raise UsageError(f"--log {self.log!r} must be an absolute path")
        self.inventory = inventory

    def job(self, host: Host) -> Job:
        project = str(host.get("cron_project_dir") or PROJECT_DIR)
        inv = str(host.get("cron_inv") or f"{project.rstrip('/')}/.venv/bin/inv")
        inventory = str(host.get("cron_inventory") or self.inventory)
        lock_dir = str(host.get("lock_dir") or "/run/lock").rstrip("/")
        command = job_command(
            self.cron_task,
            self.args,
            project=project,
            inv=inv,
            inventory=inventory,
            lock=f"{lock_dir}/remediations-cron-{self.name}.lock",
            log=self.log,
        )
        return Job(self.name, self.schedule, command)

    def run(self, ctx: HostContext) -> None:
        crontab = shlex.join(["crontab", *(["-u", self.user] if self.user else [])])
        job = None if self.remove else self.job(ctx.host)

        def current() -> str:
            result = ctx.remote.run(FACTS.replace("{crontab}", crontab), timeout=30)
            missing = [
                line.split()[1] for line in result.stdout.splitlines() if line.startswith("@@missing ")
            ]
            if missing:
                raise HostError(
                    f"{' and '.join(missing)} not installed on the host (Debian: apt install cron util-linux)"
                )
            _, _, body = result.stdout.partition("@@crontab ")
            code, _, text = body.partition("\n")
            if code.strip() != "0":
                if "no crontab for" in text:
                    return ""
                raise HostError(f"crontab -l failed: {text.strip()}", result)
            return text

        with ctx.step("facts") as step:
            before = current()
            at = find(before.splitlines(), self.name)
            step.done(Status.OK, f"entry {self.name!r} " + ("present" if at is not None else "absent"))
        new_text, action = edit(before, self.name, job)
        if action == "none":
            ctx.record(
                "decide", Status.OK, f"entry {self.name!r} is " + ("absent" if job is None else "up to date")
            )
            return
        diff = "\n".join(
            [f"- {line}" for line in _entry(before, self.name)]
            + [f"+ {line}" for line in _entry(new_text, self.name)]
        )
        verb = {"add": "add", "replace": "replace", "remove": "remove"}[action]
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would {verb} crontab entry {self.name!r}", diff=diff)
            return
        with ctx.step("apply") as step:
            log_dir = self.log.rsplit("/", 1)[0] or "/"
            install = f"mkdir -p -- {shlex.quote(log_dir)} && {crontab} -" if job else f"{crontab} -"
            result = ctx.remote.run(install, stdin=new_text.encode(), timeout=30)
            if not result.ok:
                raise HostError(f"installing the crontab failed: {result.tail()}", result)
            step.done(
                Status.CHANGED,
                f"{verb}d crontab entry {self.name!r}" + (f": {job.line}" if job else ""),
                diff=diff,
            )
        with ctx.step("verify") as step:
            _, again = edit(current(), self.name, job)
            if again != "none":
                raise HostError(
                    f"crontab -l does not show the {'removal' if job is None else 'entry'} as written"
                )
            step.done(Status.OK, "crontab -l shows it as wanted")


def _entry(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    at = find(lines, name)
    return [] if at is None else lines[at : at + 2]
