"""Compose env files (`env_file:`), read and edited line by line: comments, blank lines and order kept.

The syntax is compose's: `NAME=value`, `NAME="value"` (backslash escapes), `NAME='value'` (literal),
an unquoted value ending at ` #` (an inline comment), an optional `export ` prefix. Edits touch only
the line of the variable they change; a new variable is appended; an unset removes its line(s).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remediations.errors import UsageError
from remediations.redact import MASK, is_secret_name

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)$")
_PLAIN = re.compile(r"[A-Za-z0-9_./:@,+%^-]*\Z")


@dataclass(frozen=True)
class Change:
    name: str
    old: str | None  # None: was not set
    new: str | None  # None: unset


def parse_assignments(items: Sequence[str], unset: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Pure: `NAME=VALUE` arguments and `--unset NAME`s, checked; UsageError names the bad one."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not NAME.match(name):
            raise UsageError(
                f"{item.split('=')[0]!r} is not NAME=VALUE (a name of letters, digits and _, then =)"
            )
        if "\n" in value or "\0" in value:
            raise UsageError(f"{name}: a value cannot hold a newline")
        values[name] = value
    names = []
    for name in unset:
        if not NAME.match(name):
            raise UsageError(f"--unset {name!r}: not a variable name (letters, digits and _)")
        if name in values:
            raise UsageError(f"{name} is both set and unset; choose one")
        names.append(name)
    if not values and not names:
        raise UsageError("nothing to change: give NAME=VALUE arguments or --unset NAME")
    return values, names


def _value(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        return raw[1:end] if end > 0 else raw[1:]
    if raw.startswith('"'):
        out = []
        i = 1
        while i < len(raw) and raw[i] != '"':
            if raw[i] == "\\" and i + 1 < len(raw):
                i += 1
                out.append({"n": "\n", "t": "\t"}.get(raw[i], raw[i]))
            else:
                out.append(raw[i])
            i += 1
        return "".join(out)
    comment = re.search(r"\s#", raw)
    return (raw[: comment.start()] if comment else raw).strip()


def parse(text: str) -> dict[str, str]:
    """Pure: the variables an env file sets (the last assignment of a name wins, as in compose)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            found[match.group(1)] = _value(match.group(2))
    return found


def render_value(value: str) -> str:
    """A value written so that compose reads it back unchanged."""
    if _PLAIN.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def edit(text: str, values: Mapping[str, str], unset: Sequence[str]) -> tuple[str, list[Change]]:
    """Pure: the file with `values` set and `unset` removed, and what changed (empty: nothing)."""
    current = parse(text)
    changes = [Change(n, current.get(n), v) for n, v in values.items() if current.get(n) != v]
    changes += [Change(n, current[n], None) for n in unset if n in current]
    if not changes:
        return text, []
    to_set = {c.name: c.new for c in changes if c.new is not None}
    to_drop = {c.name for c in changes if c.new is None}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    written: set[str] = set()
    # Rewrite the last assignment of each name (the one compose uses); drop earlier duplicates of it.
    last = {}
    for i, line in enumerate(lines):
        match = None if line.lstrip().startswith("#") else _ASSIGNMENT.match(line.rstrip("\r\n"))
        if match:
            last[match.group(1)] = i
    for i, line in enumerate(lines):
        match = None if line.lstrip().startswith("#") else _ASSIGNMENT.match(line.rstrip("\r\n"))
        name = match.group(1) if match else None
        if name in to_drop:
            continue
        if name in to_set:
            if last[name] == i:
                ending = "\r\n" if line.endswith("\r\n") else "\n"
                out.append(f"{name}={render_value(to_set[name] or '')}{ending}")
                written.add(name)
            continue
        out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out += [f"{n}={render_value(v or '')}\n" for n, v in to_set.items() if n not in written]
    return "".join(out), changes


def masked_diff(path: str, old: str, new: str, secret_names: Sequence[str] = ()) -> str:
    """A unified diff of the file in which every secret-looking variable's value is masked."""

    def mask(text: str) -> list[str]:
        lines = []
        for line in text.splitlines(keepends=True):
            match = _ASSIGNMENT.match(line.rstrip("\r\n"))
            if match and not line.lstrip().startswith("#"):
                name = match.group(1)
                if is_secret_name(name) or name.lower() in {s.lower() for s in secret_names}:
                    line = f"{name}={MASK}\n"
            lines.append(line if line.endswith("\n") else line + "\n")
        return lines

    return "".join(difflib.unified_diff(mask(old), mask(new), f"{path} (before)", f"{path} (after)"))


def describe(changes: Sequence[Change], secret_names: Sequence[str] = ()) -> str:
    """`NAME: old → new` per change, secret-looking values masked."""
    parts = []
    for change in changes:
        secret = is_secret_name(change.name) or change.name.lower() in {s.lower() for s in secret_names}

        def show(value: str | None, secret: bool = secret) -> str:
            if value is None:
                return "(unset)"
            return MASK if secret else repr(value)

        parts.append(f"{change.name}: {show(change.old)} → {show(change.new)}")
    return ", ".join(parts)
