"""A command run inside a compose service (`compose exec -T` into its running container, or `compose
run --rm --no-deps -T` in a one-off one), its output bounded on the host, and a verify: one command
whose output must equal another's (`alembic current` and `alembic heads`), or that must exit 0.

Every word of a command is quoted: the command is an argv, never shell text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from remediations.core.errors import CommandResult
from remediations.facts.compose import Project
from remediations.facts.logs import TEMP_DIR, LogQuery, bounded, parse_block
from remediations.facts.sections import parse_sections

OUTPUT_LINES = 200  # lines of a command's output kept (the last ones; earlier ones are counted)
STDERR_BYTES = 2000
VIAS = ("auto", "exec", "run")
_KEEP = LogQuery(tail=OUTPUT_LINES)


def in_service(project: Project, variant: str, service: str, argv: Sequence[str], via: str) -> str:
    """Shell text running `argv` in the service: `exec` into its running container, or `run` a
    one-off container of it (removed after; its dependencies are not started)."""
    if via == "exec":
        words = ["exec", "-T", service, *argv]
    else:
        words = ["run", "--rm", "--no-deps", "-T", service, *argv]
    return f"{project.command(variant, *words)} </dev/null"


@dataclass(frozen=True)
class Output:
    """What a command left: its exit status, its last lines, how many earlier ones were cut."""

    exit_code: int
    lines: tuple[str, ...]
    total: int  # lines it printed
    stderr: str = ""  # when kept apart (a verify's): its first STDERR_BYTES

    @property
    def cut(self) -> int:
        return max(0, self.total - len(self.lines))

    def last(self, count: int = 3) -> str:
        text = " | ".join(line for line in self.lines[-count:] if line.strip())
        return text or " | ".join(self.stderr.strip().splitlines()[-count:]) or "no output"


def run_command(project: Project, variant: str, service: str, argv: Sequence[str], via: str) -> str:
    """Shell text: the command in the service, stdout and stderr together, bounded (section `out`)."""
    command = in_service(project, variant, service, argv, via)
    return "\n".join([*TEMP_DIR, bounded("out", "-", command, _KEEP)])


def verify_command(project: Project, variant: str, service: str, commands: Sequence[Sequence[str]],
                   via: str) -> str:  # fmt: skip
    """Shell text: each command in the service, its stdout bounded (section `out N`), its stderr
    apart (section `err N`): a verify compares stdout, and tools log to stderr."""
    lines = list(TEMP_DIR)
    for index, argv in enumerate(commands):
        text = in_service(project, variant, service, argv, via)
        lines.append(bounded("out", str(index), text, _KEEP, stderr='2>"$lt/err"'))
        lines.append(f'echo "@@err {index}"; head -c {STDERR_BYTES} "$lt/err" 2>/dev/null; echo')
    return "\n".join(lines)


def parse_outputs(result: CommandResult) -> list[Output]:
    """Pure parser of `run_command` / `verify_command` output: one Output per `out` section."""
    sections = parse_sections(result.stdout)
    found: list[Output] = []
    for index, section in enumerate(sections):
        if section.name != "out":
            continue
        rest = sections[index + 1 :]
        rc_text = rest[0].arg.partition(" ")[2] if rest and rest[0].name == "rc" else "1"
        err = next((s.body for s in rest[:2] if s.name == "err"), "")
        total, kept = parse_block(section.body)
        code = int(rc_text) if rc_text.lstrip("-").isdigit() else 1
        found.append(Output(code, kept, total, err))
    return found


def same_output(first: Output, second: Output) -> bool:
    """Pure: the two printed the same non-empty lines (in any order, surrounding blanks ignored)."""
    def lines(output: Output) -> list[str]:
        return sorted(line.strip() for line in output.lines if line.strip())

    return lines(first) == lines(second)
