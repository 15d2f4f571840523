r"""Compose env files (`env_file:`), read and edited line by line: comments, blank lines and order kept.

The syntax is compose's, as `docker compose config` reads it (the tests compare the two):
- `NAME='value'` is literal but for `\'` (a quote);
- `NAME="value"` knows the escapes `\\ \" \$ \n \t \r \a \b \f \v` (any other backslash stays),
  then interpolates;
- `NAME=value` ends at ` #` (an inline comment), has no escapes, and interpolates;
- interpolation: `$$` is one `$`; `$NAME`, `${NAME}`, `${NAME:-default}` (and `-`, `:+`, `+`, `:?`, `?`)
  take a variable set earlier in the file, else from `environ` (compose's own environment and the
  project's `.env`, which only the caller knows), else nothing;
- a quoted value may run over several lines; an optional `export ` prefix; lines end at `\n` only.
Edits touch only the line of the variable they change; a new variable is appended; an unset removes
its line(s). A value is written so that compose reads it back unchanged.
"""

from __future__ import annotations

import difflib
import re
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remediations.core.errors import UsageError
from remediations.reporting.redact import MASK, is_secret_name

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
        if name in values:  # which one was meant? (on stdin, the same is refused)
            raise UsageError(f"{name} is set twice (--set {name}=…); give it once")
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


def parse_value_lines(text: str, source: str = "stdin") -> dict[str, str]:
    """Pure: `NAME=VALUE` lines (blank lines and `#` comments skipped), each value taken literally
    as `--set` takes it: no quotes, escapes or interpolation. UsageError names the bad line."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not NAME.match(name):
            raise UsageError(f"{source} line {number}: not NAME=VALUE (a name of letters, digits and _, "
                             "then =)")  # fmt: skip
        if "\0" in value:
            raise UsageError(f"{source} line {number}: {name}: a value cannot hold a NUL")
        if name in values:
            raise UsageError(f"{source} line {number}: {name} is given twice")
        values[name] = value
    if not values:
        raise UsageError(f"{source} holds no NAME=VALUE line")
    return values


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r":?[-+?]")
# Compose's escapes in double quotes (`\0` is read as a lone backslash); any other backslash stays.
_ESCAPES = {"\\": "\\", '"': '"', "$": "$$", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "0": "\\"}  # fmt: skip


def _substitute(value: str | None, operator: str, word: str) -> str:
    if operator in (":-", "-"):
        return word if value is None or (operator == ":-" and not value) else value
    if operator in (":+", "+"):
        return word if value is not None and (operator == "+" or value) else ""
    return value or ""  # `:?` and `?` make compose refuse to start when unset; the value is then moot


def _interpolate(raw: str, env: Mapping[str, str], at: int = 0, inside: bool = False) -> tuple[str, int]:
    """`raw` with `$$`, `$NAME` and `${NAME…}` read as compose reads them (a default may itself hold
    references), and where the reading stopped: at the end, or at the `}` that closes `inside`."""
    out = []
    i = at
    while i < len(raw) and not (inside and raw[i] == "}"):
        name = _VARIABLE.match(raw, i + 1) if raw[i] == "$" else None
        braced = _VARIABLE.match(raw, i + 2) if raw.startswith("${", i) else None
        if raw.startswith("$$", i):
            out.append("$")
            i += 2
        elif name:
            out.append(env.get(name.group(0), ""))
            i = name.end()
        elif braced:
            operator = _OPERATOR.match(raw, braced.end())
            word, end = (
                _interpolate(raw, env, operator.end(), inside=True) if operator else ("", braced.end())
            )
            if not raw.startswith("}", end):  # not a reference after all: compose would refuse it
                out.append("$")
                i += 1
                continue
            out.append(_substitute(env.get(braced.group(0)), operator.group(0) if operator else "", word))
            i = end + 1
        else:
            out.append(raw[i])
            i += 1
    return "".join(out), i


def _unescape(raw: str) -> str:
    """Compose's escapes in double quotes, read before it interpolates: `\\$` becomes `$$`."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw, flags=re.DOTALL)


def _closing(raw: str) -> int | None:
    """Where the quote that opens `raw` closes: the first one not escaped by a backslash."""
    end = 1
    while end < len(raw) and raw[end] != raw[0]:
        end += 2 if raw[end] == "\\" else 1
    return end if end < len(raw) else None


def _value(raw: str, env: Mapping[str, str]) -> str:
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        body = raw[1 : _closing(raw)]
        return body.replace("\\'", "'") if raw[0] == "'" else _interpolate(_unescape(body), env)[0]
    comment = raw.find(" #")  # a space, not any blank, starts an inline comment
    return _interpolate((raw[:comment] if comment >= 0 else raw).strip(), env)[0]


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


@dataclass(frozen=True)
class _Entry:
    lines: list[str]  # with their endings
    name: str | None = None  # None: a comment, a blank line, or a line compose would not read
    raw: str = ""  # what follows `=`, its lines joined


def _entries(text: str) -> list[_Entry]:
    """The file cut into assignments and other lines. Only `\n` ends a line (str.splitlines would also
    split at a form feed inside a value), and a quoted value runs on to its closing quote, over lines
    if need be, as compose reads it. A quote that never closes makes compose refuse the file; here it
    is read to the end of its line."""
    lines = _LINE.findall(text)
    out: list[_Entry] = []
    i = 0
    while i < len(lines):
        match = None if lines[i].lstrip().startswith("#") else _ASSIGNMENT.match(lines[i].removesuffix("\n"))
        if not match:
            out.append(_Entry(lines[i : i + 1]))
            i += 1
            continue
        raw, last = match.group(2), i
        if raw.lstrip()[:1] in ("'", '"'):
            joined = raw
            for j in range(i + 1, len(lines) + 1):
                if _closing(joined.lstrip()) is not None:
                    raw, last = joined, j - 1
                    break
                if j < len(lines):
                    joined += "\n" + lines[j].removesuffix("\n")
        out.append(_Entry(lines[i : last + 1], match.group(1), raw))
        i = last + 1
    return out


def parse(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Pure: the variables an env file sets, as compose reads them (the last assignment wins)."""
    found: dict[str, str] = {}
    lookup = ChainMap(found, dict(environ or {}))  # what the file set so far comes first
    for entry in _entries(text):
        if entry.name is not None:
            found[entry.name] = _value(entry.raw, lookup)
    return found


def render_value(value: str) -> str:
    """A value written so that compose reads it back unchanged."""
    if _PLAIN.match(value):
        return value
    if "'" not in value and "\\" not in value:  # in single quotes, `\'` is a quote
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\r", "\\r")
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
    entries = _entries(text)
    out: list[str] = []
    written: set[str] = set()
    # Rewrite the last assignment of each name (the one compose uses); drop earlier duplicates of it.
    last = {entry.name: i for i, entry in enumerate(entries)}
    for i, entry in enumerate(entries):
        if entry.name in to_drop:
            continue
        if entry.name in to_set:
            if last[entry.name] == i:
                ending = "\r\n" if entry.lines[-1].endswith("\r\n") else "\n"
                out.append(f"{entry.name}={render_value(to_set[entry.name] or '')}{ending}")
                written.add(entry.name)
            continue
        out += entry.lines
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out += [f"{n}={render_value(v or '')}\n" for n, v in to_set.items() if n not in written]
    return "".join(out), changes


def masked_diff(path: str, old: str, new: str, secret_names: Sequence[str] = ()) -> str:
    """A unified diff of the file in which every secret-looking variable's value, all its lines, is
    masked."""
    secret = {s.lower() for s in secret_names}

    def mask(text: str) -> list[str]:
        lines = []
        for entry in _entries(text):
            if entry.name is not None and (is_secret_name(entry.name) or entry.name.lower() in secret):
                lines.append(f"{entry.name}={MASK}\n")
            else:
                lines += [line if line.endswith("\n") else line + "\n" for line in entry.lines]
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
