"""The runbook format: YAML read node by node, so that every error names its file and line.

    name: api-down                      # the file's stem
    description: The API does not answer its health URL.
    seeds: ["Ringo: API down, steps 1-3"]   # the seed runbook steps it covers (README's table)
    steps:
      - id: probe                       # [a-z][a-z0-9-]*, unique
        check: health                   # a read-only task: runs for real, in check mode too
        args: {}                        # the task's arguments, by name (as its flags take them)
      - id: restart
        run: ensure-healthy             # a task that changes things: check mode shows its plan
        when: {probe: failed}           # every named earlier step has one of the statuses
        retries: 1                      # re-run a failed step (remediations are idempotent)
        retry_delay: 5s
        timeout: 5m                     # caps the task's own deadline on each host (the wait
                                        # for the host's lock, --lock-wait, comes on top)
        on_failure: rollback            # stop (default) | continue | escalate | a later step's id
        approve: true                   # a real run asks a person first (or --yes)
        hosts: runbook                  # runbook (default): the host the runbook runs on;
                                        # controller: the task's own targets (S3); or a pattern
      - id: tell
        notify: "API on {host}: {restart.status}, {restart.message}"

Nothing here touches a host: `load` checks the tasks exist, that check steps name read-only tasks,
and that each step's arguments parse as the task's own flags would.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remediations.core import registry
from remediations.core.errors import UsageError
from remediations.core.located import FileError, Located, known_keys, line_of, read
from remediations.core.units import parse_seconds

STEP_ID = re.compile(r"[a-z][a-z0-9-]{0,39}")
NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
STATUSES = ("ok", "changed", "failed", "skipped")
ON_FAILURE = ("stop", "continue", "escalate")
MAX_RETRIES = 5
MAX_STEPS = 50
TOP_KEYS = {"name", "description", "seeds", "vars", "steps"}
STEP_KEYS = {"id", "description", "check", "run", "notify", "args", "when", "on_failure", "on_success",
             "retries", "retry_delay", "timeout", "approve", "hosts", "mode"}  # fmt: skip
VAR_KEYS = {"help", "default", "required"}
# ${name}: a runbook var (--var name=VALUE); ${host.name}: the host's inventory var of that name
VAR_REF = re.compile(r"\$\{((?:host\.)?[A-Za-z_][A-Za-z0-9_]{0,63})\}")
KINDS = ("check", "run", "notify")


class RunbookError(FileError):
    """A runbook that does not read: `file:line: what is wrong`."""


@dataclass(frozen=True)
class Step:
    id: str
    kind: str  # check | run | notify
    target: str  # the task's name, or the notify step's text
    line: int
    description: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    when: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    on_failure: str = "stop"
    on_success: str = "next"  # next | end | a later step's id
    mode: str = "auto"  # auto: the run's mode; check: always in check mode (a preview step)
    retries: int = 0
    retry_delay: float = 5.0
    timeout: float | None = None
    approve: bool = False
    hosts: str = "runbook"

    @property
    def task(self) -> str:
        return self.target if self.kind != "notify" else "notify"

    def condition(self) -> str:
        """The `when` in words: "probe is failed, restart is failed or skipped"."""
        return ", ".join(f"{name} is {' or '.join(wanted)}" for name, wanted in self.when.items())


@dataclass(frozen=True)
class Var:
    help: str
    default: str | None = None
    required: bool = False


@dataclass(frozen=True)
class Runbook:
    name: str
    description: str
    steps: tuple[Step, ...]
    source: str
    seeds: tuple[str, ...] = ()
    variables: Mapping[str, Var] = field(default_factory=dict)

    def values(self, given: Mapping[str, str]) -> dict[str, str]:
        """The runbook's vars: --var NAME=VALUE over the defaults; UsageError for unknown or missing."""
        unknown = sorted(set(given) - set(self.variables))
        if unknown:
            known = ", ".join(self.variables) or "none"
            raise UsageError(f"--var {unknown[0]}: runbook {self.name} has no such var (its vars: {known})")
        out: dict[str, str] = {}
        for name, var in self.variables.items():
            if name in given:
                out[name] = given[name]
            elif var.default is not None:
                out[name] = var.default
            elif var.required:
                raise UsageError(f"--var {name}=VALUE is required by runbook {self.name}: {var.help}")
        return out

    def index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        known = ", ".join(s.id for s in self.steps)
        raise UsageError(f"runbook {self.name} has no step {step_id!r}; its steps: {known}")


# ---------------------------------------------------------------------------------------- checking


def parse(text: str, source: str, expected_name: str | None = None) -> Runbook:
    data = read(text, source, "a runbook has a name and steps", RunbookError)
    if not isinstance(data, Located):
        raise RunbookError(f"{source}:1: a runbook is a mapping with name, description and steps")
    known_keys(data, TOP_KEYS, source, "a runbook", RunbookError)
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RunbookError(f"{source}:{line_of(data, 'name')}: name must be lowercase letters, digits and "
                           f"'-', starting with a letter (got {name!r})")  # fmt: skip
    if expected_name is not None and name != expected_name:
        raise RunbookError(f"{source}:{line_of(data, 'name')}: name {name!r} differs from the file's "
                           f"name {expected_name!r}")  # fmt: skip
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RunbookError(f"{source}:{line_of(data, 'steps')}: steps must be a non-empty list")
    if len(raw_steps) > MAX_STEPS:
        raise RunbookError(f"{source}:{line_of(data, 'steps')}: at most {MAX_STEPS} steps")
    variables = _vars(data, source)
    steps: list[Step] = []
    for raw in raw_steps:
        steps.append(_step(raw, source, steps, data.line, variables))
    _check_jumps(steps, source)
    seeds = data.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, str) for s in seeds):
        raise RunbookError(f"{source}:{line_of(data, 'seeds')}: seeds must be a list of text")
    description = data.get("description", "")
    return Runbook(name, str(description), tuple(steps), source, tuple(seeds), variables)


def _vars(data: Located, source: str) -> dict[str, Var]:
    if data.get("vars") is None:
        return {}
    raw = data["vars"]
    if not isinstance(raw, Located):
        raise RunbookError(f"{source}:{line_of(data, 'vars')}: vars maps each name to help, default, "
                           "required")
    out: dict[str, Var] = {}
    for name, spec in raw.items():
        at = f"{source}:{raw.key_lines[name]}: var {name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
            raise RunbookError(f"{at}: a var name is lowercase letters, digits and '_'")
        if not isinstance(spec, Located):
            raise RunbookError(f"{at}: give help (and default or required: true)")
        known_keys(spec, VAR_KEYS, source, f"var {name}", RunbookError)
        default = spec.get("default")
        if default is not None and not isinstance(default, str | int | float):
            raise RunbookError(f"{at}: default is text")
        out[name] = Var(str(spec.get("help", "")), None if default is None else str(default),
                        spec.get("required") is True)  # fmt: skip
    return out


def substitute(value: Any, values: Mapping[str, str], host: Any = None) -> Any:
    """`${name}` in a step's args replaced by the runbook var's value, `${host.name}` by the host's
    inventory var (names checked at load; host vars by `host_refs` before the run starts)."""
    if isinstance(value, str):
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("host."):
                return "" if host is None else str(host.get(name[5:], ""))
            return values.get(name, "")

        return VAR_REF.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, values, host) for v in value]
    return value


def missing_host_vars(book: Runbook, host: Any) -> list[str]:
    """The `${host.VAR}` references of `book` that `host` does not set."""
    refs = {r[5:] for s in book.steps for r in _refs(list(s.args.values())) if r.startswith("host.")}
    return sorted(r for r in refs if host.get(r) in (None, ""))


def _refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return VAR_REF.findall(value)
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _step(raw: Any, source: str, earlier: list[Step], line: int, variables: Mapping[str, Var]) -> Step:
    if not isinstance(raw, Located):
        raise RunbookError(f"{source}:{line}: each step is a mapping with an id and one of "
                           f"{', '.join(KINDS)}")  # fmt: skip
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
        raise RunbookError(f"{source}:{line_of(raw, 'id')}: a step id is lowercase letters, digits and '-' "
                           f"(at most 40), starting with a letter (got {step_id!r})")  # fmt: skip
    where = f"{source}:{raw.line}: step {step_id}"
    known_keys(raw, STEP_KEYS, source, f"step {step_id}", RunbookError)
    if any(s.id == step_id for s in earlier):
        raise RunbookError(f"{where}: the id is used by an earlier step")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise RunbookError(f"{where}: give exactly one of {', '.join(KINDS)} (got {kinds or 'none'})")
    kind = kinds[0]
    target = raw[kind]
    if not isinstance(target, str) or not target.strip():
        raise RunbookError(f"{source}:{line_of(raw, kind)}: step {step_id}: {kind} needs text")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise RunbookError(f"{source}:{line_of(raw, 'args')}: step {step_id}: args must be a mapping")
    step = Step(
        id=step_id, kind=kind, target=target, line=raw.line, description=str(raw.get("description", "")),
        args=dict(args), when=_when(raw, source, step_id, earlier),
        on_failure=_jump(raw, "on_failure", ON_FAILURE, source, step_id),
        on_success=_jump(raw, "on_success", ("next", "end"), source, step_id),
        mode=_mode(raw, source, step_id), retries=_retries(raw, source, step_id),
        retry_delay=_duration(raw, "retry_delay", source, step_id, 5.0) or 0.0,
        timeout=_duration(raw, "timeout", source, step_id, None),
        approve=_flag(raw, "approve", source, step_id), hosts=_hosts(raw, source, step_id),
    )  # fmt: skip
    for ref in _refs(list(step.args.values())):
        if ref not in variables and not ref.startswith("host."):
            raise RunbookError(f"{source}:{line_of(raw, 'args')}: step {step_id}: ${{{ref}}} is not one of "
                               f"the runbook's vars ({', '.join(variables) or 'none declared'})")  # fmt: skip
    if kind == "notify":
        _check_template(step, source, earlier)
    else:
        _check_task(step, raw, source, variables)
    return step


def _when(raw: Located, source: str, step_id: str, earlier: list[Step]) -> dict[str, tuple[str, ...]]:
    when = raw.get("when")
    if when is None:
        return {}
    at = f"{source}:{line_of(raw, 'when')}: step {step_id}: when"
    if not isinstance(when, dict) or not when:
        raise RunbookError(f"{at} is a mapping of earlier step ids to statuses, e.g. {{probe: failed}}")
    out: dict[str, tuple[str, ...]] = {}
    names = {s.id for s in earlier}
    for name, wanted in when.items():
        if name not in names:
            raise RunbookError(f"{at} names {name!r}, which is not an earlier step "
                               f"(earlier: {', '.join(sorted(names)) or 'none'})")  # fmt: skip
        statuses = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(statuses, list) or not statuses or any(s not in STATUSES for s in statuses):
            raise RunbookError(f"{at} {name}: {wanted!r}: give one of {', '.join(STATUSES)} or a list")
        out[name] = tuple(statuses)
    return out


def _jump(raw: Located, key: str, words: tuple[str, ...], source: str, step_id: str) -> str:
    value = raw.get(key, words[0])
    if not isinstance(value, str) or not (value in words or STEP_ID.fullmatch(value)):
        raise RunbookError(f"{source}:{line_of(raw, key)}: step {step_id}: {key} is "
                           f"{', '.join(words)} or a later step's id (got {value!r})")  # fmt: skip
    return value


def _mode(raw: Located, source: str, step_id: str) -> str:
    value = raw.get("mode", "auto")
    if value not in ("auto", "check"):
        raise RunbookError(f"{source}:{line_of(raw, 'mode')}: step {step_id}: mode is auto (the run's) or "
                           f"check (always a preview), not {value!r}")  # fmt: skip
    return str(value)


def _retries(raw: Located, source: str, step_id: str) -> int:
    value = raw.get("retries", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise RunbookError(f"{source}:{line_of(raw, 'retries')}: step {step_id}: retries is a whole number "
                           f"from 0 to {MAX_RETRIES} (got {value!r})")  # fmt: skip
    return value


def _duration(raw: Located, key: str, source: str, step_id: str, default: float | None) -> float | None:
    if key not in raw:
        return default
    at = f"{source}:{line_of(raw, key)}: step {step_id}: {key}"
    try:
        return parse_seconds(raw[key], key, high=86400.0)
    except UsageError as exc:
        raise RunbookError(f"{at}: {exc}") from None


def _flag(raw: Located, key: str, source: str, step_id: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise RunbookError(f"{source}:{line_of(raw, key)}: step {step_id}: {key} is true or false")
    return value


def _hosts(raw: Located, source: str, step_id: str) -> str:
    value = raw.get("hosts", "runbook")
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r\0"):
        raise RunbookError(f"{source}:{line_of(raw, 'hosts')}: step {step_id}: hosts is runbook, "
                           f"controller, or a host pattern (got {value!r})")  # fmt: skip
    return value


def _check_task(step: Step, raw: Located, source: str, variables: Mapping[str, Var]) -> None:
    at = f"{source}:{line_of(raw, step.kind)}: step {step.id}"
    if step.target not in registry.names():
        raise RunbookError(f"{at}: no task {step.target!r} (`inv --list` shows them)")
    cls = registry.get(step.target)
    if step.kind == "check" and cls.changes:
        raise RunbookError(f"{at}: {step.target} changes things: use `run:` for it (check is for "
                           f"read-only tasks)")  # fmt: skip
    if step.kind == "run" and not cls.changes:
        raise RunbookError(f"{at}: {step.target} is read-only: use `check:` for it")
    if step.mode == "check" and step.kind != "run":
        raise RunbookError(f"{at}: mode: check is for run steps (a check step never changes anything)")
    if any(_refs(v) for v in step.args.values()):
        return  # parsed when the run gives the vars their values
    try:
        cls.from_values(cls.params.parse(task_arguments(cls, step.args)))
    except UsageError as exc:
        where = f"{source}:{line_of(raw, 'args')}"
        raise RunbookError(f"{where}: step {step.id} ({step.target}): {exc}") from None


def task_arguments(cls: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """A step's args as the task's flags would give them: names with '-' or '_', numbers as text,
    a single value for a repeatable flag as a one-item list."""
    kinds = {a.name: a.kind for a in cls.params}
    out: dict[str, Any] = {}
    for name, value in given.items():
        key = str(name).replace("-", "_")
        kind = kinds.get(key)
        if kind == "list" and not isinstance(value, list):
            value = [value]
        if kind == "list":
            value = [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]
        elif kind == "text" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        out[key] = value
    return out


TEMPLATE_FIELDS = ("status", "message")


def _check_template(step: Step, source: str, earlier: list[Step]) -> None:
    names = {s.id for s in earlier}
    try:
        parts = list(string.Formatter().parse(step.target))
    except ValueError as exc:
        raise RunbookError(f"{source}:{step.line}: step {step.id}: notify text: {exc}") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if spec or conversion:
            raise RunbookError(f"{source}:{step.line}: step {step.id}: {{{field_name}}}: no format "
                               f"specs or conversions in notify text")  # fmt: skip
        if field_name in ("host", "runbook", "run_id"):
            continue
        ref, _, attr = field_name.partition(".")
        if ref not in names or attr not in TEMPLATE_FIELDS:
            raise RunbookError(f"{source}:{step.line}: step {step.id}: {{{field_name}}}: notify text may "
                               f"use {{host}}, {{runbook}}, {{run_id}} and {{STEP.status}} or "
                               f"{{STEP.message}} of an earlier step")  # fmt: skip


def _check_jumps(steps: list[Step], source: str) -> None:
    """`on_failure: STEP` and `on_success: STEP` jump forward only: a runbook always ends."""
    for i, step in enumerate(steps):
        later = [s.id for s in steps[i + 1 :]]
        for key, target, words in (("on_failure", step.on_failure, ON_FAILURE),
                                   ("on_success", step.on_success, ("next", "end"))):  # fmt: skip
            if target not in words and target not in later:
                raise RunbookError(f"{source}:{step.line}: step {step.id}: {key} {target!r} is not a later "
                                   f"step (later: {', '.join(later) or 'none'})")  # fmt: skip


# ------------------------------------------------------------------------------------------ finding

SHIPPED = Path(__file__).resolve().parent / "shipped"


def search_path(extra: list[str]) -> list[Path]:
    """The folders runbooks are read from, first wins: the team's own (--dir, then the inventory's
    `runbook_dirs`), then the shipped ones."""
    return [*(Path(d) for d in extra), SHIPPED]


def find(name: str, folders: list[Path]) -> Runbook:
    if not NAME.fullmatch(name):
        raise UsageError(f"runbook name {name!r}: lowercase letters, digits and '-' (`inv runbook --list`)")
    for folder in folders:
        for suffix in (".yml", ".yaml"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return parse(path.read_text(encoding="utf-8", errors="replace"), str(path), name)
    raise UsageError(f"no runbook {name!r} in {', '.join(str(f) for f in folders)} "
                     f"(`inv runbook --list` shows them)")  # fmt: skip


def every(folders: list[Path]) -> list[Runbook]:
    seen: dict[str, Runbook] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
            if path.stem not in seen and NAME.fullmatch(path.stem):
                seen[path.stem] = find(path.stem, [folder])
    return sorted(seen.values(), key=lambda r: r.name)
