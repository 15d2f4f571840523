"""disk-cleanup: the disk-full runbook, step by step, with disk use before and after.

facts   one round trip: the filesystems that matter (`stat -f` of /, Docker's data root, the backup
        directory, the WAL archive, /var/log), the biggest users (`du -sxb` of the same places),
        every regular file under the backup directory (`find -P`: symlinks are never followed) with
        its mtime and size, and journald's archived journal files;
decide  pure: backup files older than N days, never the newest K, only inside the (resolved) backup
        directory; a journal vacuum when archived journal files are older than the vacuum time;
apply   delete exactly the listed backup files (each re-checked on the host: a regular file, not a
        symlink, whose directory still resolves inside the backup directory); `journalctl
        --vacuum-time`; then prune as `inv prune` does; all skipped in check mode;
verify  re-read the disk facts: the listed files are gone; report use before and after.

The WAL archive is reported, never cleaned here: which WAL files are still needed is the database's
to say (a base backup's oldest needed segment), not a file age.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.core.units import check_non_negative, human_bytes
from remediations.docker.prune import PruneOptions, prune_host
from remediations.facts.fs import FsUsage, fs_snippet
from remediations.facts.sections import MARK, Section, parse_sections

DEFAULT_MAX_AGE_DAYS = 7
DEFAULT_KEEP_NEWEST = 3
DEFAULT_JOURNAL_DAYS = 7
DEFAULT_BACKUP_GLOB = "*"
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
LOG_DIR = "/var/log"
FACTS_TIMEOUT = 300.0
DAY = 86400

# Top-level directories a backup directory must never be: deleting "old files" there is a disaster.
FORBIDDEN_BACKUP_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/lib/containerd",
        "/var/lib/docker",
        "/var/lib/mysql",
        "/var/lib/postgresql",
        "/var/log",
    }
)


def check_backup_dir(value: object, where: str) -> str:
    """A usable backup directory, or UsageError: absolute, plain, not a system directory."""
    text = str(value).strip()
    if not text.startswith("/"):
        raise UsageError(f"{where}: backup_dir {text!r} must be an absolute path")
    if any(part in (".", "..") for part in text.split("/")):
        raise UsageError(f"{where}: backup_dir {text!r} must be a plain path (no '.' or '..')")
    normal = "/" + posixpath.normpath(text).lstrip("/")
    if normal in FORBIDDEN_BACKUP_DIRS:
        raise UsageError(
            f"{where}: backup_dir {text!r} is a system directory; refusing to delete files in it"
        )
    return normal


# --- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupFile:
    path: str  # relative to the resolved backup directory
    mtime: float
    size: int


@dataclass(frozen=True)
class DiskFacts:
    now: float
    filesystems: tuple[FsUsage, ...]
    usage: dict[str, int]  # path -> bytes (du), for the places the runbook looks at
    backup_dir: str | None  # resolved, or None when not configured
    backup_error: str = ""  # why the backup directory cannot be used
    backups: tuple[BackupFile, ...] = ()
    journal: bool = False  # journalctl and a journal directory exist
    journal_archived: tuple[tuple[float, int], ...] = ()  # (mtime, size) of archived journal files
    has_docker: bool = False
    errors: tuple[str, ...] = ()

    def disk_summary(self) -> str:
        seen: set[tuple[int, int]] = set()
        parts = []
        for fs in self.filesystems:
            key = (fs.total, fs.used + fs.available)
            if key in seen:
                continue  # the same filesystem seen from another path
            seen.add(key)
            parts.append(f"{fs.path} {fs.percent:.0f}%")
        return ", ".join(parts)


@dataclass(frozen=True)
class Places:
    """The paths that matter on one host, from inventory vars."""

    backup_dir: str | None
    backup_glob: str
    wal_archive_dir: str | None

    @classmethod
    def from_host(cls, host: Host) -> Places:
        raw = host.get("backup_dir")
        backup = check_backup_dir(raw, f"{host.name}") if raw not in (None, "") else None
        wal = host.get("wal_archive_dir")
        if wal not in (None, "") and not str(wal).startswith("/"):
            raise UsageError(f"{host.name}: wal_archive_dir {wal!r} must be an absolute path")
        glob = str(host.get("backup_glob") or DEFAULT_BACKUP_GLOB)
        if "/" in glob:
            raise UsageError(
                f"{host.name}: backup_glob {glob!r} is a file name pattern; it cannot contain '/'"
            )
        return cls(backup, glob, str(wal) if wal not in (None, "") else None)


def facts_command(places: Places) -> str:
    """One shell command printing every disk fact, in marked sections."""
    q = shlex.quote
    lines = [
        f"echo '{MARK}now'; date +%s",
        "if command -v docker >/dev/null 2>&1 && "
        "root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null); then "
        f'echo "{MARK}docker $root"; else root=; echo "{MARK}nodocker"; fi',
    ]
    paths = ["/", LOG_DIR]
    if places.backup_dir:
        paths.append(places.backup_dir)
    if places.wal_archive_dir:
        paths.append(places.wal_archive_dir)
    for path in paths:
        lines.append(f"if [ -e {q(path)} ]; then {fs_snippet(path)}; fi")
    lines.append(f'if [ -n "$root" ]; then echo "{MARK}fs $root"; stat -f -c \'%b %f %a %S\' "$root"; fi')
    du_paths = [LOG_DIR] + [p for p in (places.backup_dir, places.wal_archive_dir) if p]
    for path in du_paths:
        lines.append(
            f"if [ -e {q(path)} ]; then echo {q(MARK + 'du ' + path)}; "
            f"du -sxb {q(path)} 2>/dev/null | cut -f1; fi"
        )
    lines.append(f'if [ -n "$root" ]; then echo "{MARK}du $root"; du -sxb "$root" 2>/dev/null | cut -f1; fi')
    if places.backup_dir:
        # The resolved directory; find -P never follows a symlink, and -type f skips symlinks
        # themselves, so nothing outside the directory is ever listed.
        lines += [
            # A backup_dir that holds a live PostgreSQL data directory (a typo away from the backups:
            # /var/lib/postgresql) is refused whatever the glob: its files are the database.
            f'if real=$(realpath -e -- {q(places.backup_dir)} 2>&1) && [ -d "$real" ]; then '
            f'live=$(find -P "$real" -type f \\( -name PG_VERSION -o -name pg_control \\) -print -quit '
            f'2>/dev/null); '
            f'if [ -n "$live" ]; then echo "{MARK}backupdir"; '
            f'echo "holds a PostgreSQL data directory ($live); refusing to delete files in it"; else '
            f'echo "{MARK}backupdir $real"; '
            f"find -P \"$real\" -type f -name {q(places.backup_glob)} -printf '%T@\\t%s\\t%P\\0'; echo; fi; "
            f"else echo '{MARK}backupdir'; echo \"${{real:-not a directory}}\"; fi",
        ]
    journal_dirs = " ".join(q(d) for d in JOURNAL_DIRS)
    lines += [
        f'jd=; for d in {journal_dirs}; do [ -d "$d" ] && jd="$jd $d"; done',
        f'if command -v journalctl >/dev/null 2>&1 && [ -n "$jd" ]; then echo "{MARK}journal"; '
        "find $jd -type f \\( -name '*@*.journal' -o -name '*@*.journal~' \\) -printf '%T@\\t%s\\n'; fi",
    ]
    return "\n".join(lines)


def parse_facts(output: str, places: Places) -> DiskFacts:
    """Pure parser of `facts_command` output."""
    sections = parse_sections(output)
    now = 0.0
    filesystems: list[FsUsage] = []
    usage: dict[str, int] = {}
    errors: list[str] = []
    backup_dir: str | None = None
    backup_error = ""
    backups: list[BackupFile] = []
    journal = False
    archived: list[tuple[float, int]] = []
    has_docker = False
    for s in sections:
        if s.name == "now":
            now = float(s.body.strip() or 0)
        elif s.name == "docker":
            has_docker = True
        elif s.name == "fs":
            try:
                filesystems.append(FsUsage.parse(s.arg, s.body))
            except ValueError as exc:
                errors.append(str(exc))
        elif s.name == "du" and s.body.strip().isdigit():
            usage[s.arg] = int(s.body.strip())
        elif s.name == "backupdir":
            backup_dir, backup_error, backups = _backups(s, places)
        elif s.name == "journal":
            journal = True
            for line in s.body.splitlines():
                mtime, _, size = line.partition("\t")
                if size.strip().isdigit():
                    archived.append((float(mtime), int(size)))
    if places.backup_dir and backup_dir is None and not backup_error:
        backup_error = "the backup directory was not examined"
    return DiskFacts(
        now,
        tuple(filesystems),
        usage,
        backup_dir,
        backup_error,
        tuple(backups),
        journal,
        tuple(archived),
        has_docker,
        tuple(errors),
    )


def _backups(section: Section, places: Places) -> tuple[str | None, str, list[BackupFile]]:
    if not section.arg:
        return None, f"backup_dir {places.backup_dir}: {section.body.strip()}", []
    real = section.arg
    if real == "/" or real in FORBIDDEN_BACKUP_DIRS:
        return None, f"backup_dir {places.backup_dir} resolves to {real}, a system directory; refusing", []
    files = []
    for record in section.body.split("\0"):
        record = record.lstrip("\n")
        if not record:
            continue
        mtime, _, rest = record.partition("\t")
        size, _, path = rest.partition("\t")
        if path and size.isdigit():
            files.append(BackupFile(path, float(mtime), int(size)))
    return real, "", files


def gather(remote: Remote, places: Places) -> DiskFacts:
    result = remote.run(facts_command(places), timeout=FACTS_TIMEOUT)
    if not result.ok:
        raise HostError(f"gathering disk facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_facts(result.stdout, places)


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


class DiskCleanup(Remediation):
    task: ClassVar[str] = "disk-cleanup"

    def __init__(self, options: CleanupOptions) -> None:
        self.options = options

    def arguments(self) -> dict[str, Any]:
        o = self.options
        return {
            "max_age_days": o.max_age_days,
            "keep_newest": o.keep_newest,
            "journal_days": o.journal_days,
            "older_than": f"{o.prune.older_than}s",
            "all": o.prune.all_images,
            "volumes": o.prune.volumes,
        }

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

    def run(self, ctx: HostContext) -> None:
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
                disk_before=[fs.to_dict() for fs in before.filesystems],
                usage_bytes=before.usage,
                errors=list(before.errors),
            )
        changed = False
        notes: list[str] = []

        plan = decide_backups(before, age, keep)
        listing = [{"path": f.path, "bytes": f.size, "mtime": f.mtime} for f in plan.delete]
        if places.backup_dir is None:
            ctx.record("backups", Status.SKIPPED, plan.reason)
        elif before.backup_dir is None:
            ctx.record("backups", Status.FAILED, plan.reason)
        elif not plan.delete:
            ctx.record("backups", Status.OK, plan.reason)
        elif ctx.check:
            ctx.record("backups", Status.CHANGED, f"would delete {plan.reason}", files=listing)
            changed = True
            notes.append(f"{len(plan.delete)} backup file(s)")
        else:
            with ctx.step("backups") as step:
                outcome = delete_backups(ctx.remote, before.backup_dir, plan.delete)
                deleted = [p for p, what in outcome.items() if what == "deleted"]
                refused = {p: what for p, what in outcome.items() if what not in ("deleted", "gone")}
                status = Status.FAILED if refused else Status.CHANGED
                text = f"deleted {len(deleted)} of {plan.reason}"
                if refused:
                    text += "; refused: " + ", ".join(f"{p} ({w})" for p, w in refused.items())
                step.done(status, text, files=listing, outcome=outcome)
                changed = True
                notes.append(f"{len(deleted)} backup file(s)")

        vacuum, why = decide_journal(before, self.options.journal_days)
        if not before.journal:
            ctx.record("journal", Status.SKIPPED, why)
        elif not vacuum:
            ctx.record("journal", Status.OK, why)
        elif ctx.check:
            ctx.record("journal", Status.CHANGED, f"would run journalctl --vacuum-time: {why}")
            changed = True
            notes.append("journal vacuum")
        else:
            with ctx.step("journal") as step:
                argv = ["journalctl", f"--vacuum-time={self.options.journal_days}d"]
                must(ctx.remote.run(shlex.join(argv), timeout=300), "journalctl --vacuum-time")
                step.done(Status.CHANGED, f"vacuumed the journal: {why}")
                changed = True
                notes.append("journal vacuum")

        if before.has_docker:
            outcome_prune = prune_host(ctx, self.options.prune, prefix="docker ")
            if outcome_prune is not None and not outcome_prune.plan.empty:
                changed = True
                notes.append("Docker prune")
        else:
            ctx.record("docker prune", Status.SKIPPED, "no Docker on this host")

        if ctx.check or not changed:
            ctx.record(
                "disk",
                Status.CHANGED if changed else Status.OK,
                (f"would clean up: {', '.join(notes)}; " if changed else "nothing to clean up; ")
                + f"disk: {before.disk_summary()}",
                disk_before=[fs.to_dict() for fs in before.filesystems],
            )
            return
        with ctx.step("disk") as step:
            after = gather(ctx.remote, places)
            left = []
            if plan.delete and after.backup_dir is not None:
                still = {f.path for f in after.backups}
                left = [f.path for f in plan.delete if f.path in still]
            freed = _freed(before, after)
            text = (
                f"cleaned up: {', '.join(notes)}; disk {before.disk_summary()} → {after.disk_summary()}"
                + (f"; {human_bytes(freed)} freed on /" if freed is not None and freed > 0 else "")
            )
            if left:
                step.done(Status.FAILED, f"{text}; backup files still present: {', '.join(left)}")
            else:
                step.done(
                    Status.CHANGED,
                    text,
                    disk_before=[fs.to_dict() for fs in before.filesystems],
                    disk_after=[fs.to_dict() for fs in after.filesystems],
                )


def _freed(before: DiskFacts, after: DiskFacts) -> int | None:
    first = next((fs for fs in before.filesystems if fs.path == "/"), None)
    second = next((fs for fs in after.filesystems if fs.path == "/"), None)
    return None if first is None or second is None else second.available - first.available


def nonnegative_option(value: object, flag: str) -> float | None:
    """A command-line number that must be 0 or more, or None when not given."""
    if value is None or value == "":
        return None
    return check_non_negative(value, flag, float)
