"""Every duration flag of every registered task takes the one grammar of core/units.py: the same texts
are accepted (units, unit words, spaces, decimals) and the same are refused, with the same words.

The walk goes through the path the CLI takes (`params.parse`, then `from_values`), so a flag parsed
late (in `from_values`) is checked too; a flag whose help reads like a duration must be in the walk."""

from __future__ import annotations

import re
from typing import Any

import pytest

from remediations.cli import Flags
from remediations.core import registry
from remediations.core.errors import UsageError
from remediations.core.remediation import Remediation

# what each task needs besides the duration flag, to get as far as parsing it
BASE: dict[str, dict[str, Any]] = {
    "block-ip": {"ip": "203.0.113.7"},
    "restore-s3-object": {"bucket": "shop-assets", "key": "k"},
    "restore-s3-prefix": {"bucket": "shop-assets", "prefix": "p/"},
    "rotate-aws-key": {"user": "app", "env_host": "api1"},
    "rotate-db-password": {"role": "shop_app", "env_host": "db1"},
    "rotate-secret": {"name": "API_TOKEN"},
    "run-in-service": {"command": ["true"]},
}
DURATION_NAMES = {"ttl", "grace", "max_age", "older_than", "at", "since", "timeout"}
LOOKS_LIKE_A_DURATION = re.compile(r"\b\d+(?:\.\d+)?[smhdw]\b|\bago\b")
SUFFIX = {"at": " ago"}  # --at takes a duration followed by "ago" (or an ISO 8601 time)


def duration_flags() -> list[tuple[str, str]]:
    found = []
    for task, cls in sorted(registry.discover().items()):
        for arg in cls.params:
            if arg.name in DURATION_NAMES or LOOKS_LIKE_A_DURATION.search(arg.help):
                found.append((task, arg.name))
    return found


def test_the_walk_sees_every_duration_flag() -> None:
    found = duration_flags()
    assert {name for _, name in found} == DURATION_NAMES  # no duration flag outside the checked names
    assert {task for task, _ in found} >= {"block-ip", "prune", "disk-cleanup", "rotate-secret",
                                           "rotate-aws-key", "restore-s3-prefix", "restore-s3-object"}


def parsed(task: str, name: str, text: str) -> Remediation:
    cls = registry.discover()[task]
    given = {**BASE.get(task, {}), name: text + SUFFIX.get(name, "")}
    return cls.from_values(cls.params.parse(given))


ACCEPTED = ["1h30m", "1h 30m", "90 minutes", "1.5h", "2 hours", "1d 12h", "2w"]
REFUSED = {"1h30": "give a duration", "soon": "give a duration", "2 fortnights": "unknown unit 'fortnights'",
           "-1h": "give a duration", "9" * 400 + "d": "too long"}  # fmt: skip


@pytest.mark.parametrize(("task", "name"), duration_flags())
@pytest.mark.parametrize("text", ACCEPTED)
def test_every_duration_flag_accepts_the_grammar(task: str, name: str, text: str) -> None:
    parsed(task, name, text)


@pytest.mark.parametrize(("task", "name"), duration_flags())
@pytest.mark.parametrize("text", list(REFUSED))
def test_every_duration_flag_refuses_the_same_texts(task: str, name: str, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(UsageError) as refused:
        parsed(task, name, text)
    message = str(refused.value)
    assert message.startswith(f"{flag} "), message
    assert REFUSED[text] in message or (flag == "--at" and "give an ISO 8601 time" in message), message


@pytest.mark.parametrize(("text", "seconds"), [("1.5", 1.5), ("30", 30.0), ("90s", 90.0), ("2m", 120.0),
                                               ("1m 30s", 90.0), ("0", 0.0)])  # fmt: skip
def test_lock_wait_takes_decimals_and_the_grammar(text: str, seconds: float) -> None:
    assert Flags(host="x", lock_wait=text).options().lock_wait == seconds


@pytest.mark.parametrize("text", ["many", "-1", "nan", "2d", "1h30"])
def test_lock_wait_refuses_in_one_line(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--lock-wait '.*': .*give a duration from 0 to 1d"):
        Flags(host="x", lock_wait=text).options()
