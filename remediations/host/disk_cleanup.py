"""disk-cleanup: the disk-full runbook, step by step, with disk use before and after.

facts   one round trip: the filesystems that matter (`stat -f` of /, Docker's data root, the backup
        directory, the WAL archive, /var/log), the biggest users (`du -sxb` of the same places),
        every regular file under the backup directory (`find -P`: symlinks are never followed) with
        its mtime and size, and journald's archived journal files;
decide  pure: backup files older than N days, never the newest K, only inside the (resolved) backup
        directory; a journal vacuum when archived journal files are older than the vacuum time;
apply   delete exactly the listed backup files (each re-checked on the host: a regular file, not a
        symlink, whose directory still resolves inside the backup directory); `journalctl
        --vacuum-time`; then prune as `inv prune` does; check mode shows each part's plan instead;
verify  re-read the disk facts: the listed files are gone; report use before and after.

The WAL archive is reported, never cleaned here: which WAL files are still needed is the database's
to say (a base backup's oldest needed segment), not a file age.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.actions.docker_prune import PruneOptions, options_from_flags, prune_host
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.inventory import Host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.core.units import check_non_negative, human_bytes
from remediations.core.validate import check_count
from remediations.facts.disk import BackupFile, DiskFacts, Places, gather

DEFAULT_MAX_AGE_DAYS = 7
DEFAULT_KEEP_NEWEST = 3
DEFAULT_JOURNAL_DAYS = 7
DAY = 86400


# --- arguments ---------------------------------------------------------------------------------


def nonnegative_option(value: object, flag: str) -> float | None:
    """A command-line number that must be 0 or more, or None when not given."""
    if value is None or value == "":
        return None
    return check_non_negative(value, flag, float)


def _keep_option(value: object, flag: str) -> int | None:
    number = nonnegative_option(value, flag)
    return None if number is None else int(number)


def _journal_days(value: object, flag: str) -> int:
    return check_count(DEFAULT_JOURNAL_DAYS if value == "" else value, flag, 0, 36500)


# --- decide --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupOptions:
    max_age_days: float | None = None  # None: the host's backup_max_age_days, else 7
    keep_newest: int | None = None  # None: the host's backup_keep_newest, else 3
    journal_days: int = DEFAULT_JOURNAL_DAYS
    prune: PruneOptions = field(default_factory=PruneOptions)


@dataclass(frozen=True)
class BackupPlan:
    delete: tuple[BackupFile, ...]
    kept: int
    reason: str

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.delete)


def decide_backups(facts: DiskFacts, max_age_days: float, keep_newest: int) -> BackupPlan:
    """Pure: the backup files to delete: older than the age, never one of the newest `keep_newest`."""
    if facts.backup_dir is None:
        return BackupPlan((), 0, facts.backup_error or "no backup_dir configured")
    newest_first = sorted(facts.backups, key=lambda f: (-f.mtime, f.path))
    protected = newest_first[:keep_newest]
    cutoff = facts.now - max_age_days * DAY
    delete = tuple(f for f in newest_first[keep_newest:] if f.mtime < cutoff)
    kept = len(facts.backups) - len(delete)
    if not delete:
        return BackupPlan(
            (),
            kept,
            f"{facts.backup_dir}: {len(facts.backups)} backup file(s), none older than "
            f"{max_age_days:g} days beyond the newest {len(protected)}",
        )
    return BackupPlan(
        delete,
        kept,
        f"{facts.backup_dir}: {len(delete)} file(s) older than {max_age_days:g} days "
        f"({human_bytes(sum(f.size for f in delete))}); keeping {kept} (the newest {len(protected)} always)",
    )


def decide_journal(facts: DiskFacts, days: int) -> tuple[bool, str]:
    """Pure: (vacuum?, why)."""
    if not facts.journal:
        return False, "no journald journal on this host"
    cutoff = facts.now - days * DAY
    old = [size for mtime, size in facts.journal_archived if mtime < cutoff]
    if not old:
        return False, f"no archived journal file older than {days} days"
    return True, f"{len(old)} archived journal file(s) older than {days} days ({human_bytes(sum(old))})"


# --- apply ---------------------------------------------------------------------------------------

# $1: the resolved backup directory; $2...: paths relative to it. Each is re-checked here, on the
# host, at the moment of deletion: a regular file (not a symlink) whose directory still resolves
# inside $1. Prints one line per file: its position in the list and what happened.
DELETE_SCRIPT = r"""
dir=$1; shift
cd -P -- "$dir" || exit 3
i=0
for f in "$@"; do
  i=$((i+1))
  parent=$(cd -P -- "$dir" && cd -P -- "$(dirname -- "$f")" 2>/dev/null && pwd -P) ||
    { echo "$i gone"; continue; }
  case "$parent/" in "$dir"/*) ;; *) echo "$i outside"; continue ;; esac
  if [ -L "$f" ] || [ ! -f "$f" ]; then echo "$i not-a-file"; continue; fi
  if rm -f -- "$f"; then echo "$i deleted"; else echo "$i failed"; fi
done
"""


def delete_backups(remote: Remote, directory: str, files: tuple[BackupFile, ...]) -> dict[str, str]:
    """Delete the listed files; returns path -> outcome (deleted, gone, outside, not-a-file, failed)."""
    command = shlex.join(["sh", "-c", DELETE_SCRIPT, "delete", directory, *(f.path for f in files)])
    result = must(remote.run(command, timeout=600), "deleting backup files")
    outcome: dict[str, str] = {}
    for line in result.stdout.splitlines():
        index, _, what = line.partition(" ")
        if index.isdigit() and 0 < int(index) <= len(files):
            outcome[files[int(index) - 1].path] = what.strip()
    return outcome


# --- the remediation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A part of the runbook with nothing to do on this host: one step, recorded as it is."""

    step: str
    status: Status
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """A part of the runbook with something to do: its plan, and what the final summary says of it."""

    plan: Plan
    note: str  # planned: "3 backup file(s)"
    done: dict[str, str] = field(default_factory=dict)  # {"note": …} once applied (the real count)


@dataclass(frozen=True)
class CleanupFacts:
    places: Places
    age: float  # days
    keep: int
    before: DiskFacts


def backups_part(facts: CleanupFacts) -> Verdict | Part:
    """Pure: the backups step: skipped, refused, nothing to delete, or the files to delete."""
    before = facts.before
    plan = decide_backups(before, facts.age, facts.keep)
    if facts.places.backup_dir is None:
        return Verdict("backups", Status.SKIPPED, plan.reason)
    if before.backup_dir is None:
        return Verdict("backups", Status.FAILED, plan.reason)
    if not plan.delete:
        return Verdict("backups", Status.OK, plan.reason)
    directory = before.backup_dir
    listing = [{"path": f.path, "bytes": f.size, "mtime": f.mtime} for f in plan.delete]
    done: dict[str, str] = {}

    def apply(ctx: HostContext) -> None:
        with ctx.step("backups") as step:
            outcome = delete_backups(ctx.remote, directory, plan.delete)
            deleted = [p for p, what in outcome.items() if what == "deleted"]
            refused = {p: what for p, what in outcome.items() if what not in ("deleted", "gone")}
            text = f"deleted {len(deleted)} of {plan.reason}"
            if refused:
                text += "; refused: " + ", ".join(f"{p} ({w})" for p, w in refused.items())
            step.done(Status.FAILED if refused else Status.CHANGED, text, files=listing, outcome=outcome)
            done["note"] = f"{len(deleted)} backup file(s)"

    change = Change("backups", f"delete {plan.reason}", apply, own_steps=True, data={"files": listing})
    return Part(Plan.of(change), f"{len(plan.delete)} backup file(s)", done)


def journal_part(before: DiskFacts, days: int) -> Verdict | Part:
    """Pure: the journal step: no journal, nothing old enough, or a vacuum."""
    vacuum, why = decide_journal(before, days)
    if not before.journal:
        return Verdict("journal", Status.SKIPPED, why)
    if not vacuum:
        return Verdict("journal", Status.OK, why)
    argv = ["journalctl", f"--vacuum-time={days}d"]

    def apply(ctx: HostContext) -> str:
        must(ctx.remote.run(shlex.join(argv), timeout=300), "journalctl --vacuum-time")
        return f"vacuumed the journal: {why}"

    change = Change("journal", f"run journalctl --vacuum-time: {why}", apply)
    return Part(Plan.of(change), "journal vacuum")


def final_part(facts: CleanupFacts, notes: list[str]) -> Verdict | Part:
    """The closing `disk` step: nothing to clean up, or (applied) re-read the disk facts and check
    that the deleted backup files are gone."""
    before = facts.before
    summary = before.disk_summary()
    if not notes:
        return Verdict("disk", Status.OK, f"nothing to clean up; disk: {summary}",
                       {"disk_before": _disk(before)})  # fmt: skip
    deleting = decide_backups(before, facts.age, facts.keep).delete if before.backup_dir else ()

    def apply(ctx: HostContext) -> None:
        with ctx.step("disk") as step:
            after = gather(ctx.remote, facts.places)
            left = []
            if deleting and after.backup_dir is not None:
                still = {f.path for f in after.backups}
                left = [f.path for f in deleting if f.path in still]
            freed = _freed(before, after)
            text = (
                f"cleaned up: {', '.join(notes)}; disk {summary} → {after.disk_summary()}"
                + (f"; {human_bytes(freed)} freed on /" if freed is not None and freed > 0 else "")
            )
            if left:
                step.done(Status.FAILED, f"{text}; backup files still present: {', '.join(left)}")
            else:
                step.done(Status.CHANGED, text, disk_before=_disk(before), disk_after=_disk(after))

    change = Change("disk", f"clean up: {', '.join(notes)}; disk: {summary}", apply, own_steps=True,
                    data={"disk_before": _disk(before)})  # fmt: skip
    return Part(Plan.of(change), "")


def carry(ctx: HostContext, part: Verdict | Part) -> list[str]:
    """Record a verdict, or show/apply a part's plan; the note it adds to the summary."""
    if isinstance(part, Verdict):
        ctx.record(part.step, part.status, part.message, **part.data)
        return []
    ctx.carry_out(part.plan)
    return [part.done.get("note", part.note)]


class DiskCleanup(Remediation):
    """The disk-full runbook: biggest users, old local backups, the journal, then a Docker prune.

    Reports the sizes of Docker's data, the backup directory, /var/log and the WAL archive; deletes
    backup files in backup_dir older than --max-age-days (never the newest --keep-newest, never outside
    that directory, never through a symlink); vacuums journald; prunes Docker as `inv prune` does.
    Disk use before and after is in the result.
    """

    task: ClassVar[str] = "disk-cleanup"
    params = args(
        Arg("max_age_days", "delete backup files older than N days (default: var backup_max_age_days, "
            "else 7)", parse=nonnegative_option),
        Arg("keep_newest", "never delete the newest K backup files (default: backup_keep_newest, else 3)",
            parse=_keep_option),
        Arg("journal_days", "journalctl --vacuum-time in days, where journald keeps a journal (default 7)",
            parse=_journal_days, default=DEFAULT_JOURNAL_DAYS),
        Arg("older_than", "only objects created before this long ago: 168h (default), 30m, 7d, 0s"),
        Arg("all", "remove every unused image, not only dangling ones (and all unused build cache)",
            kind="flag", default=False),
        Arg("volumes", "also remove volumes no container uses (their data is gone for good; listed in the "
            "result)", kind="flag", default=False),
    )  # fmt: skip

    def __init__(self, options: CleanupOptions) -> None:
        self.options = options

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        prune = options_from_flags(values["older_than"], values["all"], values["volumes"], None)
        days, keep, journal = values["max_age_days"], values["keep_newest"], values["journal_days"]
        return cls(CleanupOptions(days, keep, journal, prune))

    def validate(self, host: Host) -> None:
        super().validate(host)
        Places.from_host(host)
        self._age(host)
        self._keep(host)

    def _age(self, host: Host) -> float:
        value = self.options.max_age_days
        if value is None:
            value = host.get("backup_max_age_days", DEFAULT_MAX_AGE_DAYS)
        return check_non_negative(value, f"{host.name}: backup_max_age_days / --max-age-days", float)

    def _keep(self, host: Host) -> int:
        value = self.options.keep_newest
        if value is None:
            value = host.get("backup_keep_newest", DEFAULT_KEEP_NEWEST)
        return int(check_non_negative(value, f"{host.name}: backup_keep_newest / --keep-newest", int))

    def gather(self, ctx: HostContext) -> CleanupFacts:
        places = Places.from_host(ctx.host)
        age, keep = self._age(ctx.host), self._keep(ctx.host)
        with ctx.step("facts") as step:
            before = gather(ctx.remote, places)
            users = ", ".join(
                f"{p} {human_bytes(n)}" for p, n in sorted(before.usage.items(), key=lambda kv: -kv[1])
            )
            step.done(
                Status.OK,
                f"disk: {before.disk_summary() or 'unknown'}; biggest users: {users or 'none measured'}",
                disk_before=_disk(before),
                usage_bytes=before.usage,
                errors=list(before.errors),
            )
        return CleanupFacts(places, age, keep, before)

    def run(self, ctx: HostContext) -> None:
        """The runbook's parts in order, each shown (check mode) or applied, then the closing step."""
        facts = self.gather(ctx)
        notes = carry(ctx, backups_part(facts))
        notes += carry(ctx, journal_part(facts.before, self.options.journal_days))
        notes += self._prune(ctx, facts.before)
        carry(ctx, final_part(facts, notes))

    def _prune(self, ctx: HostContext, before: DiskFacts) -> list[str]:
        """`inv prune`'s steps, prefixed "docker " (it shows or applies its own plan)."""
        if not before.has_docker:
            ctx.record("docker prune", Status.SKIPPED, "no Docker on this host")
            return []
        outcome = prune_host(ctx, self.options.prune, prefix="docker ")
        return ["Docker prune"] if outcome is not None and not outcome.plan.empty else []


def _disk(facts: DiskFacts) -> list[dict[str, Any]]:
    return [fs.to_dict() for fs in facts.filesystems]


def _freed(before: DiskFacts, after: DiskFacts) -> int | None:
    first = next((fs for fs in before.filesystems if fs.path == "/"), None)
    second = next((fs for fs in after.filesystems if fs.path == "/"), None)
    return None if first is None or second is None else second.available - first.available
