"""The output of a facts script: sections marked `@@ name rc` that one round trip prints."""

from __future__ import annotations

from dataclasses import dataclass

MARK = "@@"


@dataclass(frozen=True)
class Section:
    name: str
    arg: str
    body: str


def parse_sections(output: str) -> list[Section]:
    """`@@name arg` lines start sections; the lines after one, up to the next, are its body.

    Only `\n` ends a line: a body can be a file's content (an env file), and str.splitlines would
    also cut at `\r`, form feeds and other separators inside it."""
    found: list[Section] = []
    name: str | None = None
    arg = ""
    body: list[str] = []
    lines = output.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the output ends the last line, it starts none
    for line in lines:
        if line.startswith(MARK):
            if name is not None:
                found.append(Section(name, arg, "\n".join(body)))
            name, _, arg = line[len(MARK) :].partition(" ")
            body = []
        elif name is not None:
            body.append(line)
    if name is not None:
        found.append(Section(name, arg, "\n".join(body)))
    return found


def sections_by_name(output: str) -> dict[str, tuple[str, str]]:
    """name -> (arg, body) of the last section of each name (for names that occur once)."""
    return {s.name: (s.arg, s.body) for s in parse_sections(output)}


def section_map(sections: list[Section]) -> dict[str, Section]:
    """The last section of each name (for names that occur once)."""
    return {s.name: s for s in sections}
