"""YAML read node by node, so that every error in a hand-written file names its file and line.

`read` gives plain Python values, except that each mapping is a `Located` dict that remembers its
own line and each key's line; custom tags (`!!python/object…`) are text, never constructed; a key
given twice is an error. Runbooks and the alert rules are read with it.
"""

from __future__ import annotations

from typing import Any

import yaml

from remediations.core.errors import UsageError


class FileError(UsageError):
    """A hand-written file that does not read: `file:line: what is wrong`."""


class Located(dict[str, Any]):
    """A mapping read from YAML that remembers where it and each of its keys were."""

    line: int = 0
    key_lines: dict[str, int]


def line_of(data: Located, key: str) -> int:
    """The line of `key` in `data`, else of `data` itself."""
    return data.key_lines.get(key, data.line)


def known_keys(data: Located, known: set[str], source: str, what: str,
               error: type[FileError] = FileError) -> None:  # fmt: skip
    for key in data:
        if key not in known:
            raise error(f"{source}:{data.key_lines[key]}: {what} has no key {key!r} "
                        f"(known: {', '.join(sorted(known))})")  # fmt: skip


def read(text: str, source: str, empty: str, error: type[FileError] = FileError) -> Any:
    """The document in `text`; `error` with `source:line` when it is not YAML, `empty` when there is
    nothing in it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise error(f"{where}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    if node is None:
        raise error(f"{source}: empty file: {empty}")
    return _build(node, source, error)


def _build(node: yaml.Node, source: str, error: type[FileError]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = Located()
        out.line, out.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = _build(key_node, source, error)
            where = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise error(f"{source}:{where}: a key must be text, not {key!r}")
            if key in out:
                raise error(f"{source}:{where}: {key!r} is given twice (first on line {out.key_lines[key]})")
            out[key], out.key_lines[key] = _build(value_node, source, error), where
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, source, error) for item in node.value]
    if node.tag == "tag:yaml.org,2002:str" or not node.tag.startswith("tag:yaml.org,2002:"):
        return str(node.value)  # a custom tag is text here, never constructed
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{source}:{node.start_mark.line + 1}: {problem}") from None
