"""The disk facts of a host, in one round trip, and their pure parser (disk-cleanup, health).

`facts_command` prints, in marked sections: the filesystems that matter (`stat -f` of /, Docker's
data root, the backup directory, the WAL archive, /var/log), the biggest users (`du -sxb` of the
same places), every regular file under the backup directory (`find -P`: symlinks are never
followed) with its mtime and size, and journald's archived journal files. `check_backup_dir` is the
one rule for a usable backup directory (absolute, plain, never a system directory).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remote import Remote
from remediations.facts.fs import FsUsage, fs_snippet
from remediations.facts.sections import MARK, Section, parse_sections

DEFAULT_BACKUP_GLOB = "*"
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
LOG_DIR = "/var/log"
FACTS_TIMEOUT = 300.0

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
