"""A user's crontab as text: the marker-comment entries install-cron manages, read and edited (pure).

`FACTS` is the host-side script that prints `crontab -l` exactly as bytes with its sha256;
`parse_facts` reads its output; `edit` adds, replaces or removes one named entry and keeps every
other line byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

MARKER = "# remediations: "
MARKER_NOTE = " (managed by inv install-cron; do not edit)"


def unsafe_char(value: str) -> str | None:
    """The first character that must not be in a crontab line: C0 and C1 controls and DEL (a line
    break would start a new crontab line), and the Unicode line and paragraph separators."""
    for char in value:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or char in "\u2028\u2029":
            return char
    return None


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
        line = f"{self.schedule} {self.command}"
        # Every part was checked (check_text); this guards the splice itself.
        if unsafe_char(line) is not None or "%" in line:
            raise ValueError(f"crontab entry {line!r} is not one plain line")
        return line


def lines_of(text: str) -> list[str]:
    r"""The crontab's lines as cron splits them: on "\n" only (str.splitlines also splits on
    \x0b, \x1c, \x85, \u2028, …, which would change other entries when the text is joined again)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def find(lines: Sequence[str], name: str) -> int | None:
    """Index of the (first) marker line of `name`, or None."""
    wanted = marker(name)
    for index, line in enumerate(lines):
        if line.rstrip() == wanted:
            return index
    return None


def edit(current: str, name: str, job: Job | None) -> tuple[str, str]:
    """Pure: (new crontab text, action) with action one of add, replace, remove, none.

    `job` None removes the entry. Every other line is kept as it is; the entry (marker and the
    line under it) is there exactly once, where its first copy was: copies of it are dropped.
    """
    lines = lines_of(current)
    wanted = marker(name)
    ours = {i for i, line in enumerate(lines) if line.rstrip() == wanted}
    if not ours:
        if job is None:
            return current, "none"
        return _text([*lines, wanted, job.line]), "add"
    first = min(ours)
    kept = [line for i, line in enumerate(lines) if i not in ours and i - 1 not in ours]
    if job is None:
        return _text(kept), "remove"
    new = _text([*kept[:first], wanted, job.line, *kept[first:]])
    return (current, "none") if new == current else (new, "replace")


def _text(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# The crontab exactly as bytes (no $(...), which drops trailing newlines), with its sha256, so the
# decoded text can be checked to be those bytes before anything is written back.
FACTS = """
for tool in crontab flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || echo "@@missing $tool"
done
dir=$(mktemp -d) || exit 1
{crontab} -l >"$dir/out" 2>"$dir/err"; rc=$?
echo "@@crontab $rc $(sha256sum <"$dir/out" | cut -c1-64)"
if [ "$rc" = 0 ]; then cat "$dir/out"; else cat "$dir/err"; fi
rm -rf "$dir"
"""


@dataclass(frozen=True)
class Crontab:
    """A user's crontab as `crontab -l` gave it; `exists` False when the user has none."""

    text: str
    exists: bool

    @property
    def state(self) -> str:
        """What the install script compares before it writes."""
        return f"{'yes' if self.exists else 'no'} {sha256(self.text)}"


def parse_facts(stdout: str) -> tuple[list[str], Crontab | None, str]:
    """Pure: (missing tools, the crontab or None when `crontab -l` failed, its error text)."""
    head, found, rest = stdout.partition("@@crontab ")
    missing = [line.split()[1] for line in head.splitlines() if line.startswith("@@missing ")]
    if not found:
        return missing, None, stdout.strip()
    status, _, body = rest.partition("\n")
    code, _, digest = status.partition(" ")
    if code != "0":
        if "no crontab for" in body:
            return missing, Crontab("", exists=False), ""
        return missing, None, body.strip()
    if sha256(body) != digest.strip():
        return missing, None, "its text is not UTF-8 (it would not be written back as it is)"
    return missing, Crontab(body, exists=True), ""
