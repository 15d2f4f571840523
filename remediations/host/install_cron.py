"""install-cron: one crontab entry per cron-safe task (`cron_safe = True` on its class), installed
idempotently.

check   before any host is touched, every value that goes into the entry (schedule, --log, --user,
        --name, --args tokens, the inventory, project folder, inv and lock paths): no control
        characters and no `%` (cron turns `%` into a line break and feeds the rest to stdin), paths
        absolute and normalised, --args split like a shell and every token quoted again;
facts   `crontab -l` of the user (the connection's, or --user), exactly as bytes (with its sha256),
        and whether crontab and flock exist;
decide  pure: the entry is found by its marker comment (`# remediations: NAME …`, the line above
        it); add it, replace it when it differs, remove it (--remove), or nothing to do; every
        other line is kept byte for byte, and the entry is there exactly once;
apply   one host-side script: re-read the crontab and write only if it is still the one read
        (same sha256), make the log folder, `crontab FILE`, read it back; if it is not exactly the
        text written, put the previous crontab back and fail saying so;
verify  re-read `crontab -l`: the whole crontab is the text written.

The entry runs `cd PROJECT && PYTHON -m remediations.reporting.cronlog --name NAME --lock LOCK --
INV TASK --inventory FILE ARGS >> LOG 2>&1`: the runner takes the entry's lock (a run that finds the
previous one still holding it writes one `skipped` line and exits 0, so runs never overlap) and
writes a start line, each output line and an end line with the exit status, all timestamped (UTC).
Refused before anything is written (exit code 2, one line; see cron_entry.py): --args `inv TASK`
would reject, a task that needs --host without one, and on the controller an entry whose inv,
lock folder or inventory is not there (the inventory must parse and hold the --host given). On
another host the same preflight runs there, with the entry's interpreter: the host fails, nothing
written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.validate import shown
from remediations.facts.crontab import (
    FACTS,
    Crontab,
    Job,
    edit,
    find,
    lines_of,
    parse_facts,
    sha256,
    unsafe_char,
)
from remediations.host.cron_entry import (
    check_task_flags,
    job_command,
    preflight_command,
    preflight_problem,
    task_flags,
)

# Used with fullmatch: "$" alone would also match before a trailing line break.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")
USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
PROJECT_DIR = str(Path(__file__).resolve().parents[2])  # the project folder (remediations/host/..)
DEFAULT_LOG = "/var/log/remediations/cron.log"  # every line names its entry: one log can take them all

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


def cron_safe_tasks() -> list[str]:
    """The tasks install-cron may schedule: every registered remediation with `cron_safe = True`."""
    from remediations.core import registry

    return [name for name, cls in registry.discover().items() if cls.cron_safe]


# --------------------------------------------------------------------------------------------
# Cron expressions and the values spliced into an entry (pure)
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
        elif slash:  # "5/15": cronie takes it as 5-59/15, Debian's cron refuses the crontab
            hint = f"{first}-{high}/{step}"
            raise ValueError(f"{field} {item!r}: a step needs '*' or a range before it ({hint})")


def validate_schedule(schedule: str) -> str:
    """The schedule, normalised to single spaces; UsageError when it is not a cron expression."""
    check_text("--schedule", schedule)
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


def check_text(what: str, value: str) -> str:
    r"""`value` when it can be spliced into a crontab line as it is; UsageError when not.

    `%` is refused, not escaped: cron turns an unescaped `%` into a line break and feeds the rest
    to the command's stdin, and `\%` is undone by Vixie cron and cronie but kept by others (busybox
    crond), so no escaping means the same everywhere.
    """
    bad = unsafe_char(value)
    if bad is not None:
        raise UsageError(
            f"{what} {shown(value)} has the control character {bad!r}: a crontab entry is one line; remove it"
        )
    if "%" in value:
        raise UsageError(
            f"{what} {shown(value)} has '%', which cron turns into a line break (the rest of the entry "
            "becomes the command's stdin): give it without '%'"
        )
    return value


def check_path(what: str, value: str) -> str:
    """`value` when it is a crontab-safe, absolute, normalised path; UsageError when not."""
    check_text(what, value)
    if not value.startswith("/"):
        raise UsageError(f"{what} {shown(value)} must be an absolute path")
    normal = os.path.normpath(value)
    if normal != value or ".." in value.split("/"):
        raise UsageError(f"{what} {shown(value)} is not a normalised path: give {shown(normal)}")
    return value


def parse_args(args: str) -> list[str]:
    """The --args text split as a shell would, each token checked; they are quoted again (never
    spliced as given) when the entry is built."""
    check_text("--args", args)  # before the split, which would take a newline or a tab for a space
    try:
        tokens = shlex.split(args)
    except ValueError as exc:
        raise UsageError(f"--args {shown(args)}: {exc}") from None
    for token in tokens:
        check_text("--args token", token)
        if token in ("--inventory", "-i") or token.startswith("--inventory="):
            raise UsageError("--args: the entry passes --inventory itself (the inventory of this run)")
    return tokens


# --------------------------------------------------------------------------------------------
# Host-side scripts
# --------------------------------------------------------------------------------------------

# stdin: the new crontab ("" for none: an entry removed from a crontab that held only it leaves no
# crontab, as before it was added). Writes only when the crontab is still the one the facts read,
# then checks the whole crontab: any difference from the text written puts the previous one back.
INSTALL = """
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
state() {  # "yes|no SHA256": is there a crontab, and the sha256 of its text (left in "$dir/$1")
  if {crontab} -l >"$dir/$1" 2>"$dir/list-err"; then has=yes
  elif grep -q "no crontab for" "$dir/list-err"; then has=no; : >"$dir/$1"
  else echo error; return
  fi
  echo "$has $(sha256sum <"$dir/$1" | cut -c1-64)"
}
cat >"$dir/new"
[ "$(sha256sum <"$dir/new" | cut -c1-64)" = {new_sha} ] || { echo "@@short-input"; exit 1; }
before=$(state before)
[ "$before" != error ] || { echo "@@error"; cat "$dir/list-err"; exit 1; }
[ "$before" = {before} ] || { echo "@@moved"; exit 1; }
{mkdir}
if [ -s "$dir/new" ]; then {crontab} "$dir/new" 2>"$dir/err"; else {crontab} -r 2>"$dir/err"; fi
after=$(state after)
[ "$after" = {after} ] && { echo "@@installed"; exit 0; }
[ "$after" = "$before" ] && { echo "@@unchanged"; cat "$dir/err"; exit 1; }
case $before in
  yes*) {crontab} "$dir/before" 2>>"$dir/err" ;;
  *) {crontab} -r 2>>"$dir/err" ;;
esac
[ "$(state again)" = "$before" ] && echo "@@restored" || echo "@@not-restored"
cat "$dir/err"; exit 1
"""


INSTALL_FAILURES = {
    "@@short-input": "the new crontab did not reach the host whole; nothing written",
    "@@error": "crontab -l failed; nothing written",
    "@@moved": "the crontab changed since this run read it (another edit?); nothing written: run again",
    "@@unchanged": "crontab refused the new crontab; nothing changed",
    "@@restored": "crontab -l did not show exactly the crontab written; the previous crontab is restored",
    "@@not-restored": "crontab -l did not show exactly the crontab written, and restoring the previous "
    "crontab failed too: check `crontab -l` on the host by hand",
}


# --------------------------------------------------------------------------------------------
# The remediation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronFacts:
    crontab: str  # the crontab command (with -u USER)
    before: Crontab
    job: Job | None  # None: remove the entry


class InstallCron(Remediation):
    """Install (or --remove) a crontab entry that runs a cron-safe task under its lock; idempotent.

    Without --host the crontab is the controller's. The entry is found by its marker comment, runs
    `inv TASK --inventory THIS-INVENTORY ARGS` from the project folder under the entry's lock (runs
    never overlap: a run that finds the previous one still going logs `skipped` and exits 0) and
    appends to --log a start line, the task's output and an end line (UTC time, the entry's name,
    exit=N and ok/failed/…). Installing it again: ok. Bad input (exit code 2, nothing written): a
    value with a control character or '%', a path that is not absolute and normalised, --args the
    task would refuse, a task that needs --host without one in --args, an inventory that is not
    there or does not parse (checked where cron will run it). The whole crontab is read back after
    writing; if it is not exactly what was written, the previous one is put back and the host fails.
    """

    task: ClassVar[str] = "install-cron"
    params = args(
        Arg("task", "the cron-safe task to schedule: restore-test, backup-check, wal-cleanup, "
            "ensure-healthy, health, unblock-expired"),
        Arg("schedule", "cron expression, e.g. '0 4 * * 0' (or @daily, @hourly, …)"),
        Arg("args", "extra arguments for the task, e.g. '--host db1' (split like a shell; each token checked "
            "and quoted into the entry)", default=""),
        Arg("name", "the entry's name in its marker comment (default: the task); one entry per name"),
        Arg("remove", "remove the entry instead", kind="flag", default=False),
        Arg("user", "whose crontab (crontab -u; default: the connection's user)"),
        Arg("log", "file the runs' log lines are appended to, an absolute normalised path (default "
            "/var/log/remediations/cron.log)"),
    )  # fmt: skip
    runs_on_controller: ClassVar[bool] = True

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
        safe = cron_safe_tasks()
        if not task or task not in safe:
            raise UsageError(f"--task {task!r}: give one of the cron-safe tasks: {', '.join(safe)}")
        self.cron_task = task
        self.name = name or task
        if not NAME_RE.fullmatch(self.name):
            raise UsageError(f"--name {self.name!r}: lower-case letters, digits and '-', up to 48")
        self.remove = remove
        self.schedule = "" if remove else validate_schedule(schedule or "")
        self.args = parse_args(args or "")
        if user is not None and not USER_RE.fullmatch(user):
            raise UsageError(f"--user {user!r} is not a user name")
        self.user = user
        self.log = check_path("--log", log or DEFAULT_LOG)
        self.inventory = inventory
        # Last: every value is checked for what it is before the task is asked what it makes of them.
        self.task_flags = {} if remove else task_flags(task, self.args)
        if not remove:
            check_task_flags(task, self.task_flags)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        given = dict(values)
        return cls(given.pop("task"), given.pop("schedule"), **given)

    @classmethod
    def controller_name(cls, values: dict[str, Any]) -> str:
        return "localhost"

    def prepare(self, inventory: Inventory) -> None:
        """The entry runs the task with the inventory of this run."""
        if not self.inventory:
            self.inventory = os.path.abspath(inventory.source)

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.remove:
            return
        self.job(host)  # UsageError for a bad path in the host's vars, before any host is touched
        if is_controller(host):  # cron runs the entry here: what it needs is checked here, now
            problem = self.preflight_local(host)
            if problem:
                raise UsageError(f"the entry would fail on every run: {problem}; nothing written")

    def paths(self, host: Host) -> dict[str, str]:
        """project, python, inv, inventory and lock of the entry on `host`, each checked."""
        where = f"host {host.name}:"
        project = check_path(
            f"{where} cron_project_dir" if host.get("cron_project_dir") else "the project folder",
            str(host.get("cron_project_dir") or PROJECT_DIR),
        )
        inv = check_path(
            f"{where} cron_inv" if host.get("cron_inv") else "the inv of this Python",
            str(host.get("cron_inv") or default_inv(project, bool(host.get("cron_project_dir")))),
        )
        python = check_path(
            f"{where} cron_python" if host.get("cron_python") else "the python beside inv",
            str(host.get("cron_python") or f"{os.path.dirname(inv)}/python"),
        )
        inventory = check_path(
            f"{where} cron_inventory" if host.get("cron_inventory") else "--inventory",
            str(host.get("cron_inventory") or self.inventory),
        )
        lock_dir = str(host.get("lock_dir") or "/run/lock").rstrip("/")
        lock = check_path(f"{where} lock_dir", f"{lock_dir}/remediations-cron-{self.name}.lock")
        return {"project": project, "python": python, "inv": inv, "inventory": inventory, "lock": lock}

    def job(self, host: Host) -> Job:
        paths = self.paths(host)
        command = job_command(self.name, self.cron_task, self.args, log=self.log, **paths)
        return Job(self.name, self.schedule, command)

    def preflight_script(self, host: Host) -> str:
        select = self.task_flags.get("host")
        return preflight_command(**self.paths(host), select=str(select) if select else None)

    def preflight_local(self, host: Host) -> str:
        """The preflight on the controller, as cron would run it; "" when it passed."""
        try:
            done = subprocess.run(["/bin/sh", "-c", self.preflight_script(host)], capture_output=True,
                                  text=True, errors="replace", timeout=60, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the preflight did not finish ({exc})"
        return preflight_problem(done.stdout + done.stderr, done.returncode, self.paths(host)["python"])

    def gather(self, ctx: HostContext) -> CronFacts:
        crontab = shlex.join(["crontab", *(["-u", self.user] if self.user else [])])
        job = None if self.remove else self.job(ctx.host)
        if job is not None and not is_controller(ctx.host):
            with ctx.step("preflight") as step:
                done = ctx.remote.run(self.preflight_script(ctx.host), timeout=60)
                python = self.paths(ctx.host)["python"]
                problem = preflight_problem(done.stdout + done.stderr, done.exit_code, python)
                if problem:
                    raise HostError(f"the entry would fail on every run on {ctx.host.name}: {problem}; "
                                    "nothing written")
                step.done(Status.OK, "the entry's interpreter, inv, lock folder and inventory are there")
        with ctx.step("facts") as step:
            before = read_crontab(ctx, crontab)
            at = find(lines_of(before.text), self.name)
            step.done(Status.OK, f"entry {self.name!r} " + ("present" if at is not None else "absent"))
        return CronFacts(crontab, before, job)

    def decide(self, ctx: HostContext, facts: CronFacts) -> Plan:
        new_text, action = edit(facts.before.text, self.name, facts.job)
        if action == "none":
            state = "absent" if facts.job is None else "up to date"
            return Plan.nothing(f"entry {self.name!r} is {state}")
        diff = "\n".join(
            [f"- {line}" for line in _entry(facts.before.text, self.name)]
            + [f"+ {line}" for line in _entry(new_text, self.name)]
        )
        done = {"add": "added", "replace": "replaced", "remove": "removed"}[action]
        job = facts.job

        def apply(ctx: HostContext) -> str:
            install(ctx, facts, new_text, self.log)
            return f"{done} crontab entry {self.name!r}" + (f": {job.line}" if job else "")

        change = Change("apply", f"{action} crontab entry {self.name!r}", apply, diff=diff)
        return Plan.of(change, check_step="decide")

    def verify(self, ctx: HostContext, facts: CronFacts, plan: Plan) -> None:
        new_text, _ = edit(facts.before.text, self.name, facts.job)  # what apply wrote
        with ctx.step("verify") as step:
            after = read_crontab(ctx, facts.crontab)
            if after != Crontab(new_text, exists=bool(new_text)):
                raise HostError("crontab -l changed after it was installed and checked (another edit?)")
            step.done(
                Status.OK, "crontab -l is exactly the crontab written" if new_text else "no crontab is left"
            )


def is_controller(host: Host) -> bool:
    """Whether the crontab is the controller's own (no --host: the local connection)."""
    return bool(host.get("ansible_connection") == "local")


def default_inv(project: str, project_given: bool) -> str:
    """The project's .venv/bin/inv when cron_project_dir names the project; else the inv beside the
    Python running install-cron (the one that has the project's packages)."""
    if project_given:
        return f"{project.rstrip('/')}/.venv/bin/inv"
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "inv"))


def read_crontab(ctx: HostContext, crontab: str) -> Crontab:
    """The user's crontab; HostError when crontab or flock is missing or `crontab -l` fails."""
    result = ctx.remote.run(FACTS.replace("{crontab}", crontab), timeout=30)
    missing, found, error = parse_facts(result.stdout)
    if missing:
        raise HostError(
            f"{' and '.join(missing)} not installed on the host (Debian: apt install cron util-linux)"
        )
    if found is None:
        raise HostError(f"crontab -l failed: {error or result.tail()}", result)
    return found


def install(ctx: HostContext, facts: CronFacts, new_text: str, log: str) -> None:
    """Write `new_text` as the crontab if it is still the one read; HostError saying why not."""
    log_dir = log.rsplit("/", 1)[0] or "/"
    mkdir = f"mkdir -p -- {shlex.quote(log_dir)} || {{ echo @@mkdir; exit 1; }}" if facts.job else ":"
    script = (  # the quoted user values go in last: no placeholder is looked for inside them
        INSTALL.replace("{crontab}", facts.crontab)
        .replace("{new_sha}", sha256(new_text))
        .replace("{before}", shlex.quote(facts.before.state))
        .replace("{after}", shlex.quote(Crontab(new_text, exists=bool(new_text)).state))
        .replace("{mkdir}", mkdir)
    )
    result = ctx.remote.run(script, stdin=new_text.encode(), timeout=30)
    if not result.ok:
        failure = _install_failure(result.stdout, log_dir)
        raise HostError(failure or f"installing the crontab failed: {result.tail()}", result)


def _install_failure(stdout: str, log_dir: str) -> str:
    """The install script's own account of a failure ("" when it gave none)."""
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if line == "@@mkdir":
            return f"cannot make the log folder {log_dir}; nothing written"
        if line in INSTALL_FAILURES:
            detail = " ".join(x.strip() for x in lines[index + 1 :] if x.strip())
            return INSTALL_FAILURES[line] + (f" ({detail})" if detail else "")
    return ""


def _entry(text: str, name: str) -> list[str]:
    lines = lines_of(text)
    at = find(lines, name)
    return [] if at is None else lines[at : at + 2]
