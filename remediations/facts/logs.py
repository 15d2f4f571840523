"""Log lines of a compose service's containers (`docker logs`) and of a systemd unit (`journalctl -u`),
filtered and bounded ON the host, in one round trip.

The host runs the source, then the filter (`grep -F` or `grep -E`, case-insensitive unless asked),
then a ring buffer in awk that keeps only the last `tail` lines (each cut to LINE_LIMIT characters)
and counts the ones it dropped: however long the log, at most `tail` lines per source travel back.
Every kept line is printed behind a `|`, so that no log line can pass for a section marker.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from remediations.core.errors import CommandResult
from remediations.facts.compose import Project, ServiceFacts, facts_command, parse_facts
from remediations.facts.sections import MARK, Section, parse_sections

DEFAULT_TAIL = 200
MAX_TAIL = 5000
LINE_LIMIT = 2000  # characters of one line that are kept; the rest is cut with CUT_MARK
CUT_MARK = " [line cut]"

# The ring buffer: keeps the last n lines (each at most w characters), prints how many it saw, then
# the kept ones, each behind a "|".
_RING = (
    '{ if (length($0) > w) $0 = substr($0, 1, w) c; b[NR % n] = $0 } '
    'END { print NR + 0; s = NR - n + 1; if (s < 1) s = 1; for (i = s; i <= NR; i++) print "|" b[i % n] }'
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class LogQuery:
    """What to read: how far back, which lines, how many."""

    since: float | None = None  # seconds back; None: the whole log
    grep: str | None = None
    regex: bool = False  # grep is a POSIX extended regular expression, not a fixed string
    match_case: bool = False
    tail: int = DEFAULT_TAIL
    timestamps: bool = False  # docker's own timestamp before each container line

    def since_arg(self) -> str | None:
        """The --since value docker and journalctl both take: whole seconds back (rounded up)."""
        return None if self.since is None else f"{math.ceil(self.since)}s"

    def grep_argv(self) -> list[str]:
        """grep's arguments after `grep $ga` (`-a` where grep has it): the pattern after -e."""
        if self.grep is None:
            return []
        return ["-E" if self.regex else "-F", *([] if self.match_case else ["-i"]), "-e", self.grep]


def filter_text(query: LogQuery) -> str:
    """The shell pipeline a source's output goes through on the host: grep (when asked), then the ring."""
    ring = shlex.join(["awk", "-v", f"n={query.tail}", "-v", f"w={LINE_LIMIT}", "-v", f"c={CUT_MARK}", _RING])
    if query.grep is None:
        return ring
    return f"grep $ga {shlex.join(query.grep_argv())} | {ring}"


def _grep_check(query: LogQuery) -> list[str]:
    """Shell lines: whether grep takes -a (GNU grep does, busybox's does not need it), and whether it
    accepts the pattern (a bad --regex is grep's own exit 2, said in section `greperror`)."""
    if query.grep is None:
        return []
    probe = shlex.join(["grep", *query.grep_argv()])
    return [
        "ga=-a; printf '' | grep -a -e x >/dev/null 2>&1; [ $? -eq 2 ] && ga=",
        f'gerr=$(printf "" | {probe} 2>&1); [ $? -eq 2 ] && {{ echo "{MARK}greperror"; '
        'printf "%s\\n" "$gerr" | head -c 500; exit 0; }',
    ]


def bounded(name: str, arg: str, command: str, query: LogQuery, stderr: str = "2>&1") -> str:
    """Shell text: section `name ARG` (`arg`: shell text, quoted by the caller), the command's
    output (`stderr`: where its stderr goes)
    through the filter, then section `rc name` with the command's own exit status (the pipeline's
    is awk's). Needs "$lt", a temp directory (see `logs_command`)."""
    return (
        f'echo {MARK}{name} {arg}; '
        f'{{ {command} {stderr}; echo $? >"$lt/rc"; }} | {filter_text(query)}; '
        f'echo "{MARK}rc {name} $(cat "$lt/rc" 2>/dev/null || echo 1)"'
    )


TEMP_DIR = ['lt=$(mktemp -d) || exit 1', 'trap \'rm -rf "$lt"\' EXIT']  # "$lt" for `bounded`


def journal_lines(unit: str, query: LogQuery) -> list[str]:
    """Shell lines reading the unit's journal (or saying the host has no journalctl)."""
    since = query.since_arg()
    argv = ["journalctl", "-u", unit, "--no-pager", "-q", "-o", "short-iso",
            *([f"--since=-{since}"] if since else [])]  # fmt: skip
    return [
        "if command -v journalctl >/dev/null 2>&1; then",
        "  " + bounded("journal", shlex.quote(unit), shlex.join(argv), query),
        f'else echo "{MARK}nojournal"; fi',
    ]


def docker_lines(query: LogQuery) -> list[str]:
    """Shell lines after `facts_command`'s (which leave the service's container ids in "$ids"): the
    log of each container."""
    since = query.since_arg()
    argv = ["docker", "logs", *(["--timestamps"] if query.timestamps else []),
            *(["--since", since] if since else [])]  # fmt: skip
    return [
        'case "$ids" in *[!0-9a-f[:space:]]*) ids= ;; esac',
        "for id in $ids; do",
        "  " + bounded("logs", '"$id"', f'{shlex.join(argv)} "$id"', query),
        "done",
    ]


def logs_command(project: Project | None, service: str | None, unit: str | None, query: LogQuery) -> str:
    """One shell command: the unit's journal (with `unit`), then the service's facts and its
    containers' logs (with `service`): the journal first, since a missing project ends the script."""
    lines = [*_grep_check(query), *TEMP_DIR]
    if unit:
        lines += journal_lines(unit, query)
    if service and project is not None:
        lines += [facts_command(project, service, None, 30), *docker_lines(query)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ parse


@dataclass(frozen=True)
class LogBlock:
    """The lines one source gave: a container of the service, or the unit's journal."""

    source: str  # "container" or "journal"
    name: str  # the container's name, or the unit
    lines: tuple[str, ...]
    matched: int  # lines that passed the filter, before the tail cut
    error: str = ""  # the source itself failed (docker logs / journalctl exit status and words)

    @property
    def cut(self) -> int:
        return max(0, self.matched - len(self.lines))


@dataclass(frozen=True)
class LogFacts:
    blocks: tuple[LogBlock, ...] = ()
    service: ServiceFacts | None = None
    error: str = ""  # the whole host: a pattern grep refuses, no journalctl
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # container id -> its env


def shown_line(text: str) -> str:
    """A log line safe for a terminal: control characters (an escape sequence, a bell) shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.rstrip("\r"))


def parse_block(body: str) -> tuple[int, tuple[str, ...]]:
    """Pure: (lines that passed the filter, the kept lines) of one source's ring output."""
    first, _, rest = body.partition("\n")
    matched = int(first) if first.strip().isdigit() else 0
    kept = tuple(shown_line(line[1:]) for line in rest.split("\n") if line.startswith("|"))
    return max(matched, len(kept)), kept


def _names(inspect_text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Pure: container id (12) -> name, and -> env, from `docker inspect` JSON."""
    try:
        data = json.loads(inspect_text) if inspect_text.strip() else []
    except ValueError:
        return {}, {}
    names: dict[str, str] = {}
    envs: dict[str, dict[str, str]] = {}
    for item in data if isinstance(data, list) else []:
        cid = str(item.get("Id", ""))[:12]
        names[cid] = str(item.get("Name", "")).lstrip("/")
        env = (item.get("Config") or {}).get("Env") or []
        envs[cid] = dict(e.split("=", 1) for e in env if isinstance(e, str) and "=" in e)
    return names, envs


def _block(section: Section, rc: str, label: str) -> LogBlock:
    matched, kept = parse_block(section.body)
    error = ""
    if rc not in ("0", ""):
        tail = " | ".join(kept[-3:]) or "no output"
        error = f"{'journalctl' if section.name == 'journal' else 'docker logs'} exited {rc}: {tail[-300:]}"
    return LogBlock("journal" if section.name == "journal" else "container", label, kept, matched, error)


def parse_logs(service: str | None, result: CommandResult) -> LogFacts:
    """Pure parser of `logs_command` output."""
    sections = parse_sections(result.stdout)
    by_name = {s.name: s for s in sections}
    if "greperror" in by_name:
        words = " ".join(by_name["greperror"].body.split())
        return LogFacts(error=f"grep refused the --grep pattern: {words[:300] or 'exit 2'}")
    facts = parse_facts(service, None, result) if service else None
    inspect = by_name["inspect"].body if "inspect" in by_name else ""
    names, envs = _names(inspect)
    blocks: list[LogBlock] = []
    for index, section in enumerate(sections):
        if section.name not in ("logs", "journal"):
            continue
        after = sections[index + 1] if index + 1 < len(sections) else None
        rc = after.arg.partition(" ")[2] if after is not None and after.name == "rc" else "1"
        label = section.arg if section.name == "journal" else names.get(section.arg[:12], section.arg[:12])
        blocks.append(_block(section, rc, label))
    error = "no journalctl on the host (--unit needs systemd's journal)" if "nojournal" in by_name else ""
    return LogFacts(tuple(blocks), facts, error, envs)
