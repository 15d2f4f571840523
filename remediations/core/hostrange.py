"""Host patterns in inventories: `name:port` keys and `[a:b]` / `[a:b:step]` ranges, as Ansible reads them.

`web[01:03]` is web01, web02, web03 (a leading zero keeps the width; both ends must then be as wide);
`db-[a:c]` is db-a, db-b, db-c (letters run a..z then A..Z, as in Ansible); `node[1:7:3]` is node1,
node4, node7; several ranges in one name multiply. `host:2201` and `[::1]:2201` carry a port; a bare
IPv6 address does not. A pattern that expands past `MAX_HOSTS` names is refused before any is made.
"""

from __future__ import annotations

import re
import string

from remediations.core.errors import UsageError

MAX_HOSTS = 10_000  # per pattern: more is a typo (`[1:100000]`), and would stall every run
_RANGE = re.compile(r"\[([^\[\]]*:[^\[\]]*)\]")
_BRACKETED_V6 = re.compile(r"\[([0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)\](?::([0-9]+))?\Z")


def _outside_brackets(text: str) -> list[int]:
    """Positions of the colons not inside a `[...]` range."""
    depth, found = 0, []
    for index, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == ":" and depth == 0:
            found.append(index)
    return found


def split_port(pattern: str) -> tuple[str, int | None]:
    """`host:2201` -> ("host", 2201); `[::1]:2201` -> ("::1", 2201); a bare IPv6 address has no port."""
    text = pattern.strip()
    bracketed = _BRACKETED_V6.match(text)
    if bracketed:
        port = bracketed.group(2)
        return bracketed.group(1), int(port) if port else None
    colons = _outside_brackets(text)
    if len(colons) != 1:
        return text, None  # no port, or a bare IPv6 address whose colons are not a port
    name, port_text = text[: colons[0]], text[colons[0] + 1 :]
    if not port_text.isdigit() or not port_text.isascii() or not name:
        return text, None
    return name, int(port_text)


def _bounds(spec: str, pattern: str, where: str) -> list[str]:
    """The values one `[begin:end(:step)]` stands for, checked before any is made."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"{where}: host range [{spec}] must be [begin:end] or [begin:end:step]")
    begin, end = parts[0] or "0", parts[1]
    step_text = parts[2] if len(parts) == 3 else "1"
    if not end:
        raise UsageError(f"{where}: host range [{spec}] has no end")
    if not step_text.isdigit() or int(step_text) < 1:
        raise UsageError(f"{where}: host range [{spec}]: the step must be a whole number >= 1")
    step = int(step_text)
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        first, last = letters.index(begin), letters.index(end)
        if first > last:
            raise UsageError(f"{where}: host range [{spec}] runs backwards")
        return list(letters[first : last + 1 : step])
    if not (begin.isdigit() and end.isdigit() and begin.isascii() and end.isascii()):
        raise UsageError(f"{where}: host range [{spec}] must run between two numbers or two letters")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise UsageError(f"{where}: host range [{spec}]: with a leading zero both ends must be as wide")
    count = max(0, (int(end) - int(begin)) // step + 1)
    if count > MAX_HOSTS:
        raise UsageError(_too_many(pattern, count, where))
    return [str(n).zfill(width) for n in range(int(begin), int(end) + 1, step)]


def _too_many(pattern: str, count: int, where: str) -> str:
    return (f"{where}: host range {pattern!r} expands to {count} hosts, more than {MAX_HOSTS}: "
            "a typo in the range? Split it into smaller ranges or list the hosts")  # fmt: skip


def expand(pattern: str, where: str) -> list[str]:
    """Every host name a pattern stands for, in Ansible's order (the first range varies slowest)."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    values = _bounds(match.group(1), pattern, where)
    rest = expand(tail, where) if _RANGE.search(tail) else [tail]
    if len(values) * len(rest) > MAX_HOSTS:
        raise UsageError(_too_many(pattern, len(values) * len(rest), where))
    return [f"{head}{value}{suffix}" for value in values for suffix in rest]
