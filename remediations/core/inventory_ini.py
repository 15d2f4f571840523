"""Ansible's INI inventory format, read into the same shape as a YAML inventory.

The rules are Ansible's: lines before any section are ungrouped hosts; `[group]` lists hosts (a host
pattern, then `key=value` words split like a shell line, `#` starting a comment); `[group:vars]` has
one `key = value` a line (no comment is stripped); `[group:children]` names one group a line, which
must itself be declared by a `[name]` or `[name:children]` section. Every value is a Python literal
when it reads as one (`5`, `True`, `[1, 2]`, `None`), else the text itself, so `"5"` on a host line
is the number 5 (the shell split removed the quotes) while `"5"` in `[group:vars]` is the text "5".
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from remediations.core.errors import UsageError

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_CHILD = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
MAX_LITERAL = 100_000  # characters: a longer value is kept as text, never evaluated


def literal(text: str) -> Any:
    """A value as Ansible's INI reader takes it: a Python literal if it is one, else the text."""
    if len(text) > MAX_LITERAL:
        return text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, dict[str, Any]] = {}
        self.declared: set[str] = {"all", "ungrouped"}
        self.pending: list[tuple[int, str, str, str]] = []  # line, kind, section, group

    def group(self, name: str) -> dict[str, Any]:
        return self.groups.setdefault(name, {"hosts": {}, "vars": {}, "children": {}})

    def fail(self, lineno: int, message: str) -> UsageError:
        return UsageError(f"{self.source}: line {lineno}: {message}")

    def host_line(self, lineno: int, line: str, group: str) -> None:
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise self.fail(lineno, f"cannot split the host line: {exc}") from None
        if not words:
            return
        pattern, assignments = words[0], words[1:]
        variables: dict[str, Any] = {}
        for word in assignments:
            key, eq, value = word.partition("=")
            if not eq or not key:
                raise self.fail(lineno, f"expected key=value after the host, got {word!r}")
            variables[key] = literal(value)
        hosts = self.group(group)["hosts"]
        hosts.setdefault(pattern, {}).update(variables)

    def vars_line(self, lineno: int, line: str, group: str) -> None:
        key, eq, value = (part.strip() for part in line.partition("="))
        if not eq or not key:
            raise self.fail(lineno, f"expected key=value in [{group}:vars], got {line!r}")
        self.group(group)["vars"][key] = literal(value)

    def child_line(self, lineno: int, line: str, group: str) -> None:
        match = _CHILD.match(line)
        if match is None:
            raise self.fail(lineno, f"expected one group name in [{group}:children], got {line!r}")
        self.group(group)["children"][match.group(1)] = None
        self.pending.append((lineno, "children", group, match.group(1)))

    def read(self, text: str) -> dict[str, Any]:
        group, state = "ungrouped", "hosts"
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            section = _SECTION.match(line)
            if section:
                group, title = section.group(1), section.group(2)
                if title not in (None, "vars", "children"):
                    raise self.fail(lineno, f"section [{group}:{title}] has an unknown type "
                                            "(use [group], [group:vars] or [group:children])")  # fmt: skip
                state = title or "hosts"
                self.group(group)
                if state == "vars":
                    self.pending.append((lineno, "vars", group, group))
                else:
                    self.declared.add(group)
                continue
            if line.startswith("[") and line.endswith("]"):
                raise self.fail(lineno, f"invalid section {line!r} (no spaces or other characters "
                                        "inside the brackets)")  # fmt: skip
            {"hosts": self.host_line, "vars": self.vars_line, "children": self.child_line}[state](
                lineno, line, group
            )
        for lineno, kind, header, name in self.pending:
            if name not in self.declared:
                what = f"[{header}:{kind}]"
                raise self.fail(lineno, f"{what} names group {name!r}, which no [{name}] section declares"
                                if kind == "children" else f"{what} is for a group no section declares")
        return self.groups


def parse_ini(text: str, source: str) -> dict[str, Any]:
    """An INI inventory as the mapping a YAML inventory would be (`{group: {hosts, vars, children}}`)."""
    groups = _Reader(source).read(text)
    if not groups:
        raise UsageError(f"{source}: inventory is empty")
    return {name: {k: v for k, v in body.items() if v} or None for name, body in groups.items()}
