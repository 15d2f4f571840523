"""systemd services: each unit's settings (from `systemd_units`), the one facts command and its pure parser.

The command prints, in marked sections: `systemctl show` of every unit asked about (the properties
below, one `Key=Value` a line, a blank line between units, in the order asked), and each unit's own
HTTP health URL fetched on the host. `systemctl show` is systemd's machine-readable form: nothing
here reads `systemctl status`'s text for people.

A unit is healthy when it is loaded, `ActiveState=active` and its URL (when it has one) answers;
`activating` with a start job (SubState `start`, `start-pre`, …) is still starting; `auto-restart`
(systemd waiting to start it again after a crash) is not healthy.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.core import validate
from remediations.core.inventory import Host
from remediations.facts.sections import MARK, parse_sections
from remediations.reporting.redact import MASK, is_secret_name

PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "NRestarts",
    "InvocationID",
    "ExecMainStartTimestamp",
    "ExecMainStartTimestampMonotonic",
    "ExecMainStatus",
    "Environment",
)
PROBE_TIMEOUT = 5
JOURNAL_LINES = 50
STARTING = ("start-pre", "start", "start-post", "condition", "reload")


@dataclass(frozen=True)
class UnitSettings:
    """One unit as the inventory describes it (`systemd_units`), validated by core/validate."""

    unit: str  # the full name, NAME.service
    health_url: str | None = None
    escalate: tuple[str, ...] = ("restart", "stop-start")
    health_timeout: float = 60.0

    @classmethod
    def of(cls, host: Host, unit: str) -> UnitSettings:
        """The settings of `unit` on `host` (a unit not listed: no URL, the default escalation)."""
        listed = units_of(host).get(unit) or {}
        timeout = listed.get("health_timeout") or float(validate.value(host, "health_timeout"))
        escalate = tuple(listed.get("escalate") or cls.escalate)
        return cls(unit, listed.get("health_url"), escalate, float(timeout))


def units_of(host: Host) -> dict[str, dict[str, Any]]:
    """`systemd_units` of `host`: full unit name → its settings (UsageError when malformed)."""
    units: dict[str, dict[str, Any]] = validate.value(host, "systemd_units") or {}
    return units


def listed_units(host: Host) -> list[UnitSettings]:
    return [UnitSettings.of(host, unit) for unit in units_of(host)]


@dataclass(frozen=True)
class UnitFacts:
    """What `systemctl show` says of one unit, and whether its health URL answered."""

    unit: str
    props: Mapping[str, str] = field(default_factory=dict)
    http: tuple[int, str] | None = None  # (exit code, output) of fetching its URL; None: no URL
    error: str = ""  # systemctl could not be asked (no systemd, no permission)

    def get(self, name: str) -> str:
        return self.props.get(name, "")

    @property
    def load_state(self) -> str:
        return self.get("LoadState")

    @property
    def active_state(self) -> str:
        return self.get("ActiveState")

    @property
    def sub_state(self) -> str:
        return self.get("SubState")

    @property
    def main_pid(self) -> int:
        text = self.get("MainPID")
        return int(text) if text.isdigit() else 0

    @property
    def invocation(self) -> str:
        return self.get("InvocationID")

    @property
    def started_at(self) -> str:
        return self.get("ExecMainStartTimestamp")

    @property
    def restarts(self) -> int:
        text = self.get("NRestarts")
        return int(text) if text.isdigit() else 0

    @property
    def exists(self) -> bool:
        return self.load_state not in ("", "not-found")

    @property
    def starting(self) -> bool:
        return self.active_state in ("activating", "reloading") and self.sub_state in STARTING

    @property
    def healthy(self) -> bool:
        return self.verdict()[0]

    def verdict(self) -> tuple[bool, str]:
        """(healthy, why) in a few words."""
        if self.error:
            return False, self.error
        if not self.exists:
            return False, f"{self.unit} is not a unit on this host (LoadState={self.load_state or 'none'})"
        if self.load_state != "loaded":
            return False, f"LoadState={self.load_state}"
        state = f"{self.active_state}/{self.sub_state}"
        if self.active_state != "active":
            result = self.get("Result")
            return False, state + (f", Result={result}" if result and result != "success" else "")
        if self.http is not None:
            code, body = self.http
            if code != 0:
                return False, f"{state} but its health URL fails: {body[:150] or f'exit {code}'}"
            return True, f"{state}, MainPID {self.main_pid}, health URL answers"
        return True, f"{state}, MainPID {self.main_pid}"

    def restarted_since(self, before: UnitFacts) -> bool:
        """Started anew since `before`: another invocation (systemd gives each start its own id), or
        another main process when the ids are not known."""
        if self.invocation and before.invocation:
            return self.invocation != before.invocation
        return self.main_pid != before.main_pid or self.started_at != before.started_at

    def secret_values(self) -> list[str]:
        """Values of the unit's `Environment=` whose names look secret: masked wherever they show up."""
        found = []
        for word in shlex_split(self.get("Environment")):
            name, sep, value = word.partition("=")
            if sep and value and is_secret_name(name):
                found.append(value)
        return found

    def summary(self) -> dict[str, Any]:
        """The facts for --json and audit (never the environment)."""
        return {
            "unit": self.unit,
            "active_state": self.active_state,
            "sub_state": self.sub_state,
            "main_pid": self.main_pid,
            "restarts": self.restarts,
            "started_at": self.started_at,
        }


def shlex_split(text: str) -> list[str]:
    """`Environment=` as systemctl prints it (words, quoted where needed); never raises."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


# --- the command ---------------------------------------------------------------------------------


def _fetch(url: str) -> str:
    """Shell text setting $rc and $out from fetching `url` on the host with curl or wget."""
    q = shlex.quote(url)
    return (
        f"if command -v curl >/dev/null 2>&1; then out=$(curl -fsS -m {PROBE_TIMEOUT} {q} 2>&1); rc=$?; "
        f"elif command -v wget >/dev/null 2>&1; then out=$(wget -q -O- -T {PROBE_TIMEOUT} {q} 2>&1); rc=$?; "
        "else out='no curl or wget on the host'; rc=127; fi"
    )


def facts_command(units: Sequence[UnitSettings]) -> str:
    """One shell command: `systemctl show` of every unit, then each unit's URL, in marked sections."""
    show = ["systemctl", "show", "--no-pager", "-p", ",".join(PROPERTIES), "--", *(u.unit for u in units)]
    lines = [f'out=$({shlex.join(show)} 2>&1); echo "{MARK}unitshow $?"; printf "%s\\n" "$out"']
    for index, settings in enumerate(units):
        if settings.health_url:
            lines += [_fetch(settings.health_url),
                      f'echo "{MARK}unithttp {index} $rc"; printf "%s\\n" "$out" | head -c 300']  # fmt: skip
    return "\n".join(lines)


def parse_show(output: str) -> list[dict[str, str]]:
    """Pure: `systemctl show` output (several units: blank lines between them) → one dict per unit."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in output.split("\n"):
        if not line.strip():
            if current:
                records.append(current)
            current = {}
            continue
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            current[key] = value
    if current:
        records.append(current)
    return records


def parse_facts(units: Sequence[UnitSettings], output: str) -> list[UnitFacts]:
    """Pure parser of `facts_command` output: one UnitFacts per unit, in the order asked."""
    shown: list[dict[str, str]] = []
    error = ""
    http: dict[int, tuple[int, str]] = {}
    for section in parse_sections(output):
        if section.name == "unitshow":
            shown = parse_show(section.body)
            if section.arg != "0" or len(shown) != len(units):
                text = " ".join(section.body.split())[-300:]
                error = f"systemctl show failed (exit {section.arg}): {text or 'no output'}"
        elif section.name == "unithttp":
            position, _, code = section.arg.partition(" ")
            if position.isdigit():
                http[int(position)] = (int(code) if code.lstrip("-").isdigit() else 1, section.body.strip())
    if not shown and not error:
        error = "systemctl printed nothing"
    found = []
    for index, settings in enumerate(units):
        props = shown[index] if index < len(shown) and not error else {}
        url_answer = http.get(index, (1, "not run")) if settings.health_url else None
        found.append(UnitFacts(settings.unit, props, url_answer, error))
    return found


def journal_command(unit: str, lines: int = JOURNAL_LINES) -> str:
    """The unit's last journal lines (journalctl's short-iso form), stderr with them."""
    argv = ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(lines), "-u", unit]
    return shlex.join(argv) + " 2>&1"


SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>\s*[=:]\s*)(?P<value>[^\s,;&\"')]+)"
)


def mask_line(line: str) -> str:
    """A journal line with the values of secret-looking `name=value` / `name: value` masked
    (`DATABASE_PASSWORD=hunter2` → `DATABASE_PASSWORD=*****`)."""

    def masked(match: re.Match[str]) -> str:
        if not is_secret_name(match.group("name")):
            return match.group(0)
        return f"{match.group('name')}{match.group('sep')}{MASK}"

    return SECRET_ASSIGNMENT.sub(masked, line)
