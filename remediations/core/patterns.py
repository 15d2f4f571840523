"""Host patterns (`--host`): Ansible's grammar for `ansible PATTERN` and `--limit`, stricter on mistakes.

A pattern is a list of terms, separated by `,` (or, when there is no comma at all, by `:` or
whitespace, unless the whole pattern is one host address such as `::1` or `web1:22`). A term is a
host name, a group name, a glob (`web-*`, `db?`, `api[13]`) over host and group names, or a regular
expression (`~web-\\d+`, matched from the start of a name as Python's `re.match`), optionally
followed by a subscript over what it matched: `[0]`, `[-1]`, `[1:3]` (inclusive), `[2:]`. A term
starting with `&` intersects, one starting with `!` excludes; both apply after every plain term,
wherever they are written (`!x` alone means `all` except x). `all` (and a glob matching it) is every
host; `ungrouped` the hosts in no other group; `localhost`, `127.0.0.1` and `::1` name the
controller when the inventory has no such host.

Where Ansible warns and goes on (a term that matches nothing, a subscript past the end), this
refuses with one line naming the term: a typo must not silently shrink the set of hosts. This module
knows names only (hosts in inventory order, groups to their members); `Inventory.select` turns them
into hosts.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import signal
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from remediations.core.errors import UsageError

LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_PATTERN_CHARS = 8192
REGEX_SECONDS = 2.0  # what one `~regex` term may spend over all the names (main thread)
_GLOB_CHARS = ".?*["  # a term with one of these is matched against host names as well as groups

# A term with no comma: separated by `:` or whitespace, a bracketed part kept whole.
_COLON_TERM = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
# One host address, as Ansible reads a pattern that is a single host: `[host]:port`,
# `host:port`, or a host name whose labels may hold `[1:3]`/`[a:c]` ranges.
_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_LABEL = rf"(?:\w|{_RANGE})(?:[\w-]|{_RANGE})*(?<![_-])"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z", re.IGNORECASE)
_BRACKETED_PORT = re.compile(r"\[(.+)\]:([0-9]+)\Z", re.DOTALL)
_HOST_PORT = re.compile(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)\Z", re.DOTALL)
_SUBSCRIPT = re.compile(r"(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]\Z", re.DOTALL)


class _TooSlow(Exception):
    pass


def select(
    pattern: str,
    hosts: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    source: str,
    flag: str = "--host",
) -> list[str]:
    """The host names `pattern` selects, in order: plain terms in the order given (each term's
    names in inventory order), then intersections and exclusions. A name not in `hosts` is the
    implicit controller (one of LOCALHOST_NAMES). Raises UsageError (one line) on bad input."""
    _check_text(pattern, source, flag)
    if "," not in pattern and not _one_address(pattern.strip()):
        stray = "".join(_COLON_TERM.sub("", pattern).split()).replace(":", "")
        if stray:  # Ansible would drop it silently
            raise UsageError(f"{source}: {flag} {_show(pattern)} has an unbalanced {stray[0]!r}")
    terms = split(pattern)
    if not terms:
        raise UsageError(f"{source}: {flag} is empty; give a host, a group, a list or a glob")
    for term in terms:
        _check_term(term, source, flag)
    matcher = _Matcher(hosts, groups, source, flag)
    plain = [t for t in terms if t[0] not in "&!"] or ["all"]
    chosen: dict[str, None] = {}  # insertion-ordered, each name once
    for term in plain:
        chosen.update(dict.fromkeys([term] if term in matcher.host_set else matcher.match(term)))
    for term in (t for t in terms if t[0] == "&"):
        keep = set(matcher.match(term[1:], term))
        chosen = {n: None for n in chosen if n in keep}
    for term in (t for t in terms if t[0] == "!"):
        drop = set(matcher.match(term[1:], term))
        chosen = {n: None for n in chosen if n not in drop}
    if not chosen:
        raise UsageError(f"{source}: {flag} {_show(pattern)} selects no host after"
                         " intersections and exclusions")
    return list(chosen)


def split(pattern: str) -> list[str]:
    """The terms of a pattern, as Ansible splits them (see the module's docstring)."""
    if "," in pattern:
        parts = pattern.split(",")
    elif _one_address(pattern.strip()):
        parts = [pattern]
    else:
        parts = _COLON_TERM.findall(pattern)
    return [p.strip() for p in parts if p.strip()]


def _one_address(text: str) -> bool:
    found = _BRACKETED_PORT.match(text) or _HOST_PORT.match(text)
    host = found.group(1) if found else text
    if _HOST_NAME.match(host):
        return True
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return "%" not in host


def _show(text: str) -> str:
    """A term or pattern for an error message: quoted, escaped, at most ~80 characters."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _check_text(pattern: str, source: str, flag: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UsageError(
            f"{source}: {flag} is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} "
            "(select with groups or globs rather than a list of every host)"
        )
    for position, char in enumerate(pattern):
        if unicodedata.category(char) in ("Cc", "Cf", "Cs"):
            raise UsageError(
                f"{source}: {flag} has a control character {char!a} at position {position}; "
                "give host and group names, globs or ~regex"
            )


def _check_term(term: str, source: str, flag: str) -> None:
    body = term[1:] if term[0] in "&!" else term
    if not body:
        raise UsageError(f"{source}: {flag} term {_show(term)} names nothing after {term[0]!r}")
    if body[0] == "@":
        raise UsageError(
            f"{source}: {flag} term {_show(term)}: limit files (@FILE) are not supported; "
            "list the hosts with commas"
        )
    if body[0] == "~":
        return
    depth = 0
    for char in body:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            break
    if depth != 0:
        raise UsageError(f"{source}: {flag} term {_show(term)} has an unbalanced '[' or ']'")
    found = _SUBSCRIPT.match(body)
    if found and found.group(4) == "-":
        start, end = found.group(3), found.group(5)
        raise UsageError(
            f"{source}: {flag} term {_show(term)}: the [x-y] subscript is gone from Ansible; "
            f"write [{start}:{end}] (both ends included)"
        )


class _Matcher:
    """Matches one term (without its `&`/`!`) against the inventory's group and host names."""

    def __init__(self, hosts: Sequence[str], groups: Mapping[str, Sequence[str]], source: str, flag: str):
        self.hosts = list(hosts)
        self.host_set = set(hosts)
        self.real_groups = list(groups)
        self.groups: dict[str, Sequence[str]] = dict(groups)
        if "ungrouped" not in self.groups:  # Ansible's implicit group, right after `all`
            grouped = {h for g, members in groups.items() if g != "all" for h in members}
            ordered = list(self.groups.items())
            ordered.insert(1 if "all" in self.groups else 0,
                           ("ungrouped", [h for h in self.hosts if h not in grouped]))
            self.groups = dict(ordered)
        self.source = source
        self.flag = flag
        self.memo: dict[str, tuple[list[str], list[str]]] = {}

    def match(self, term: str, written: str | None = None) -> list[str]:
        """The names `term` matches (in order); `written`: the term as given, `&` or `!` included."""
        expr, subscript = term, None
        if term[0] != "~":
            found = _SUBSCRIPT.match(term)
            if found:
                expr = found.group(1)
                subscript = found.group(2, 3, 5)
        names, matched_groups = self._enumerate(expr)
        if not names:
            raise UsageError(self._nothing(written or term, expr, matched_groups))
        if subscript is not None:
            names = self._subscript(written or term, expr, names, subscript)
        return names

    def _enumerate(self, expr: str) -> tuple[list[str], list[str]]:
        if expr not in self.memo:
            self.memo[expr] = self._names(expr)
        return self.memo[expr]

    def _names(self, expr: str) -> tuple[list[str], list[str]]:
        if expr[0] != "~" and not any(c in expr for c in "*?["):  # a plain name: no scan
            groups = [expr] if expr in self.groups else []
            names = list(self.groups[expr]) if groups else []
            if (not groups or "." in expr) and expr in self.host_set:
                names.append(expr)
        else:
            groups, names = self._scan(expr)
        if not names and expr in LOCALHOST_NAMES:
            names = [next((h for h in self.hosts if h in LOCALHOST_NAMES), expr)]
        return list(dict.fromkeys(names)), groups

    def _scan(self, expr: str) -> tuple[list[str], list[str]]:
        """Groups, then hosts, whose names a glob or `~regex` matches."""
        test = self._compile(expr)
        with _bounded(REGEX_SECONDS if expr[0] == "~" else None, self._too_slow(expr)):
            groups = [g for g in self.groups if test(g)]
            names = [h for g in groups for h in self.groups[g]]
            if not groups or expr[0] == "~" or any(c in expr for c in _GLOB_CHARS):
                names.extend(h for h in self.hosts if test(h))
        return groups, names

    def _compile(self, expr: str) -> Callable[[str], object]:
        if expr[0] != "~":
            return re.compile(fnmatch.translate(expr)).match
        try:
            return re.compile(expr[1:]).match
        except (re.error, RecursionError, OverflowError) as exc:
            raise UsageError(
                f"{self.source}: {self.flag} term {_show(expr)} is not a regular expression: {exc}"
            ) from None

    def _too_slow(self, expr: str) -> str:
        return (
            f"{self.source}: {self.flag} term {_show(expr)}: the regular expression took more than "
            f"{REGEX_SECONDS:.0f}s over {len(self.hosts) + len(self.groups)} names; simplify it"
        )

    def _subscript(self, term: str, expr: str, names: list[str], parts: tuple[str, ...]) -> list[str]:
        """`[i]` (negative from the end), `[i:j]` with both ends included, `[i:]` to the end;
        like Ansible, `[i:0]` is read as `[i]`."""
        index, start, end = parts
        count = len(names)
        if index is not None or end == "0":
            position = int(index if index is not None else start)
            picked = [names[position]] if -count <= position < count else []
        elif end == "":
            picked = names[int(start):]
        else:
            picked = names[int(start):int(end) + 1]
        if not picked:
            raise UsageError(
                f"{self.source}: {self.flag} term {_show(term)} selects no host: {expr!r} matches "
                f"{count} host{'s' if count != 1 else ''} (positions 0 to {count - 1}, or -{count} to -1)"
            )
        return picked

    def _nothing(self, term: str, expr: str, matched_groups: list[str]) -> str:
        if matched_groups:
            return f"{self.source}: {self.flag} term {_show(term)}: group {matched_groups[0]!r} has no hosts"
        hint = ""
        if _HOST_PORT.match(expr):
            hint = "; a port is not part of a host pattern"
        elif ":" in expr:
            hint = "; in a list with ',' a ':' does not separate terms: use one separator"
        where = f" in {self.flag} term {_show(term)}" if term != expr else ""
        known = sorted(self.real_groups)
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
        return (
            f"{self.source}: unknown host or group {_show(expr)}{where} (groups: {shown}); "
            f"check {self.flag} or the inventory{hint}"
        )


@contextmanager
def _bounded(seconds: float | None, message: str) -> Iterator[None]:
    """Stop the block after `seconds` (the regex engine checks for signals as it runs): only in
    the main thread, where SIGALRM is delivered; elsewhere the pattern's length is the bound."""
    if seconds is None or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow:
        raise UsageError(message) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
