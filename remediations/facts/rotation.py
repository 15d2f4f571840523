"""Secret rotation, the pure parts: the flags' values (length, alphabet, --max-age, key names) and the
rotation record each env host keeps (`{state_dir}/rotations.json`, mode 0600), parsed and rendered.

A record says what was rotated, when, how far it got and which backup rolls it back, never a value.
"""

from __future__ import annotations

import datetime as dt
import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.core.args import Arg, services
from remediations.core.errors import UsageError
from remediations.core.units import parse_duration
from remediations.facts import envfile

# --------------------------------------------------------------------------------------------
# New values: the flags
# --------------------------------------------------------------------------------------------

ALPHABETS = {
    # Letters and digits only by default: safe unquoted in env files, URLs, DSNs and shells.
    "alnum": string.ascii_letters + string.digits,
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "hex": "0123456789abcdef",
    # Punctuation without quotes, backslash, $ (compose interpolation), # (comments) or spaces.
    "symbols": string.ascii_letters + string.digits + "!%*+,-./:=?@^_~",
}
DEFAULT_ALPHABET = "alnum"
DEFAULT_LENGTH = 32
MIN_LENGTH = 16
MAX_LENGTH = 4096
DEFAULT_MAX_AGE = "1h"


def parse_length(value: int | str | None) -> int:
    if value is None or str(value).strip() == "":
        return DEFAULT_LENGTH
    text = str(value).strip()
    if not text.isdigit() or not MIN_LENGTH <= int(text) <= MAX_LENGTH:
        raise UsageError(
            f"--length {text[:20]!r}: give a number of characters from {MIN_LENGTH} to {MAX_LENGTH}"
        )
    return int(text)


def parse_alphabet(value: str | None) -> str:
    name = (value or DEFAULT_ALPHABET).strip()
    if name not in ALPHABETS:
        raise UsageError(f"--alphabet {name[:20]!r}: give one of {', '.join(ALPHABETS)}")
    return name


def parse_max_age(value: str | None) -> int:
    return parse_duration(DEFAULT_MAX_AGE if value is None or value == "" else value, "--max-age")


def check_key(name: str | None, flag: str = "--name") -> str:
    if not name or not envfile.NAME.match(name):
        raise UsageError(f"{flag} {str(name or '')[:40]!r}: give the env file's variable name "
                         "(letters, digits and _)")  # fmt: skip
    return name


# Arg parsers (`(value, flag) -> parsed`): an empty --length/--alphabet is "not given" (None), as the
# hand-written task took it, so that --value-from-stdin can refuse only a length or alphabet given.


def length_arg(value: Any, flag: str) -> int | None:
    return None if str(value).strip() == "" else parse_length(value)


def alphabet_arg(value: Any, flag: str) -> str | None:
    return None if not value else parse_alphabet(value)


def max_age_arg(value: Any, flag: str) -> int:
    return parse_max_age(value)


def key_arg(value: Any, flag: str) -> str:
    return check_key(value, flag)


# The flags the rotations share.
LENGTH = Arg("length", "characters in a generated value (16-4096, default 32)", parse=length_arg)
ALPHABET = Arg("alphabet", "alnum (default), urlsafe, hex or symbols (no quotes, $, # or spaces)",
               parse=alphabet_arg)  # fmt: skip
MAX_AGE = Arg("max_age", "leave a secret rotated less than this long ago alone (default 1h; 0 rotates now)",
              parse=max_age_arg, default=3600)  # fmt: skip
READERS = Arg("service",
              "recreate only this service (repeatable; default: every service that reads the file)",
              kind="list", parse=services, default=())  # fmt: skip



# --------------------------------------------------------------------------------------------
# The record on the env host
# --------------------------------------------------------------------------------------------

RECORD_FILE = "rotations.json"
KEEP_RECORDS = 100
UNFINISHED = ("pending", "set", "switched")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Record:
    """One rotation of one secret on one env host. Never holds a value."""

    id: str
    kind: str  # "env" | "postgres" | "aws"
    name: str  # the env key, the PostgreSQL role, the IAM user
    task: str
    env_file: str
    keys: tuple[str, ...]
    services: tuple[str, ...]
    backup: str
    started: str
    updated: str
    status: str  # pending → set → (switched →) done | rolled-back | abandoned | failed
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "task": self.task,
                "env_file": self.env_file, "keys": list(self.keys), "services": list(self.services),
                "backup": self.backup, "started": self.started, "updated": self.updated,
                "status": self.status, "message": self.message, "detail": self.detail}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(
            str(data.get("id", "")), str(data.get("kind", "")), str(data.get("name", "")),
            str(data.get("task", "")), str(data.get("env_file", "")),
            tuple(str(k) for k in data.get("keys") or ()), tuple(str(s) for s in data.get("services") or ()),
            str(data.get("backup", "")), str(data.get("started", "")), str(data.get("updated", "")),
            str(data.get("status", "")), str(data.get("message", "")), dict(data.get("detail") or {}),
        )  # fmt: skip

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    def age(self, now: dt.datetime | None = None) -> float:
        try:
            at = dt.datetime.fromisoformat(self.updated or self.started)
        except ValueError:
            return float("inf")
        return ((now or dt.datetime.now(dt.UTC)) - at).total_seconds()

    def same_secret(self, kind: str, name: str, env_file: str) -> bool:
        return self.kind == kind and self.name == name and self.env_file == env_file


def parse_records(text: str) -> list[Record]:
    """Pure: the record file's text, oldest first; an empty or unreadable file is no record."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return [Record.from_dict(r) for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def render_records(records: Sequence[Record]) -> str:
    return json.dumps([r.to_dict() for r in records[-KEEP_RECORDS:]], indent=1, sort_keys=True) + "\n"


def latest(records: Iterable[Record], kind: str, name: str, env_file: str) -> Record | None:
    found = [r for r in records if r.same_secret(kind, name, env_file)]
    return found[-1] if found else None


def recent_enough(record: Record | None, max_age: int) -> bool:
    return record is not None and record.status == "done" and record.age() < max_age


def newest_each(records: Iterable[Record]) -> list[Record]:
    """The newest record of each secret (kind, name, env file), in first-seen order."""
    newest: dict[tuple[str, str, str], Record] = {}
    for record in records:
        newest[(record.kind, record.name, record.env_file)] = record
    return list(newest.values())


def healthy(record: Record) -> bool:
    """False for a rotation that is unfinished, rolled back or failed: rotation-status fails the host."""
    return not (record.unfinished or record.status in ("rolled-back", "failed"))


def status_line(record: Record) -> str:
    what = {"env": "env secret", "postgres": "PostgreSQL role", "aws": "IAM user"}.get(
        record.kind, record.kind
    )
    line = f"{what} {record.name} ({', '.join(record.keys)} in {record.env_file}): {record.status}"
    line += f" at {record.updated}"
    if record.unfinished:
        line += " - UNFINISHED: re-run the rotation to finish it or roll it back"
    elif record.status in ("rolled-back", "failed") and record.message:
        line += f" ({record.message})"
    if record.backup:
        line += f"; backup {record.backup}"
    retired = record.detail.get("old_key")
    if retired:
        line += f"; old key {retired} {record.detail.get('old_key_state', '')}".rstrip()
    return line
