"""A remediation's arguments, declared once as data: the CLI, validation, help, audit and masking read it.

Each `Arg` says what a flag is (its type, default, help, whether it repeats, how its text is parsed,
whether it is secret, an example). A remediation lists its `Arg`s on the class; groups that many
remediations share (a compose service, an S3 location, a duration) are defined here once.

Values arrive as the flag's text (Invoke is given no numeric defaults, so that bad text is this
module's one-line error rather than Invoke's traceback) and are parsed by `Arg.parse`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.core.errors import UsageError

Parser = Callable[[Any, str], Any]  # (the flag's value, "--flag") -> the parsed value; UsageError if bad


def _text(value: Any, flag: str) -> Any:
    return value


@dataclass(frozen=True)
class Arg:
    """One argument of a remediation task.

    name        the Python name (`if_unhealthy`); the flag is `--if-unhealthy`
    help        one line for `inv --help TASK`
    kind        "text", "flag" (a boolean switch), "list" (repeatable: `--service a --service b`) or
                "rest" (the words after `--` on the command line, as a list: a command to run; not a
                flag, so `inv --help TASK` names it only in the task's docstring)
    default     the value when the flag is not given (parsed values only: None, False, ())
    parse       turns the given text into the value the remediation receives; raises UsageError
    secret      the value is never shown: audit records and JSON say "…"
    audit       what the audit record shows instead of the value (e.g. names without values)
    example     an example value, for the README and `--help`
    required    the task refuses to run without it (one line naming the flag)
    """

    name: str
    help: str
    kind: str = "text"
    default: Any = None
    parse: Parser = _text
    secret: bool = False
    audit: Callable[[Any], Any] | None = None
    example: str = ""
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("text", "flag", "list", "rest"):
            raise ValueError(f"{self.name}: kind is text, flag, list or rest, not {self.kind!r}")

    @property
    def flag(self) -> str:
        return "the command after --" if self.kind == "rest" else "--" + self.name.replace("_", "-")

    @property
    def cli_default(self) -> Any:
        """What Invoke is told the default is: False for a switch, [] for a list, None otherwise
        (so that Invoke takes the value as text and never parses it itself)."""
        return False if self.kind == "flag" else [] if self.kind == "list" else None

    def value(self, raw: Any) -> Any:
        """The parsed value of what was given (`raw` None, [] or False: not given)."""
        if _absent(raw, self.kind):
            if self.required:
                raise UsageError(f"{self.flag} is required: {self.help}")
            if self.default is None and self.kind != "text":
                return False if self.kind == "flag" else ()
            return self.default
        if self.kind == "flag":
            return bool(raw)
        if self.kind in ("list", "rest"):
            return self.parse(list(raw), self.flag)
        return self.parse(raw, self.flag)

    def audited(self, raw: Any) -> Any:
        """What the audit record keeps of the given value (the same for bad input and a good run)."""
        if self.secret and not _absent(raw, self.kind):
            return "…"
        if self.audit is not None and not _absent(raw, self.kind):
            return self.audit(raw)
        return list(raw) if self.kind in ("list", "rest") and raw is not None else raw


def _absent(raw: Any, kind: str) -> bool:
    if raw is None:
        return True
    if kind in ("list", "rest"):
        return len(raw) == 0
    if kind == "flag":
        return raw is False
    return False


@dataclass(frozen=True)
class Args:
    """The declared arguments of one task, in flag order."""

    items: tuple[Arg, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [a.name for a in self.items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"argument(s) declared twice: {', '.join(twice)}")

    def __iter__(self) -> Any:
        return iter(self.items)

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared argument's value, parsed; UsageError for the first bad one."""
        unknown = sorted(set(raw) - {a.name for a in self.items})
        if unknown:
            raise UsageError(f"unknown argument(s): {', '.join(unknown)}")
        return {a.name: a.value(raw.get(a.name)) for a in self.items}

    def audited(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {a.name: a.audited(raw.get(a.name)) for a in self.items}

    def help(self) -> dict[str, str]:
        return {a.name.replace("_", "-"): a.help + (f" (e.g. {a.example})" if a.example else "")
                for a in self.flags()}  # fmt: skip

    def repeatable(self) -> list[str]:
        return [a.name for a in self.items if a.kind == "list"]

    def flags(self) -> list[Arg]:
        """The arguments that are flags (all but the words after `--`)."""
        return [a for a in self.items if a.kind != "rest"]

    def rest(self) -> Arg | None:
        """The argument that takes the words after `--`, if the task has one."""
        return next((a for a in self.items if a.kind == "rest"), None)


def args(*items: Arg | Sequence[Arg]) -> Args:
    """Declare a task's arguments: single `Arg`s and shared groups, in flag order."""
    flat: list[Arg] = []
    for item in items:
        flat.extend([item] if isinstance(item, Arg) else item)
    return Args(tuple(flat))


# ------------------------------------------------------------------------------------------ parsers


def one_service(value: Any, flag: str) -> str:
    from remediations.core.validate import check_service

    return check_service(value, flag)


def services(value: Any, flag: str) -> list[str]:
    from remediations.core.validate import check_services

    return check_services(value, flag)


def count(low: int = 1, high: int | None = None) -> Parser:
    def parse(value: Any, flag: str) -> int:
        from remediations.core.validate import check_count

        return check_count(value, flag, low, high)

    return parse


def seconds(value: Any, flag: str) -> float:
    """A duration kept to the fraction of a second (`--lock-wait 1.5`, `--lock-wait 2m`)."""
    from remediations.core.units import parse_seconds

    return parse_seconds(value, flag)


def one_unit(value: Any, flag: str) -> str:
    from remediations.core.validate import check_unit

    return check_unit(value, flag)


def units(value: Any, flag: str) -> list[str]:
    from remediations.core.validate import check_unit

    return list(dict.fromkeys(check_unit(v, flag) for v in value))


def duration(value: Any, flag: str) -> int:
    """A duration in the one grammar of this project: 90s, 30m, 24h, 7d, 1h30m, or plain seconds."""
    from remediations.core.units import parse_duration

    return parse_duration(str(value), flag)


def bucket(value: Any, flag: str) -> str:
    from remediations.core.validate import check_bucket

    return check_bucket(value, flag)


# ------------------------------------------------------------------------------------ shared groups

SERVICE = Arg("service", "compose service (default: the host's api_service var)", parse=one_service,
              example="api")  # fmt: skip
SERVICES = Arg("service", "compose service; repeat for several (default: all the project's services)",
               kind="list", parse=services, default=(), example="api")  # fmt: skip
UNIT = Arg("unit", "systemd service (NAME or NAME.service)", parse=one_unit, example="ringo-api")
UNITS = Arg("unit", "systemd service; repeat for several (default: all the host's systemd_units)",
            kind="list", parse=units, default=(), example="ringo-api")  # fmt: skip
