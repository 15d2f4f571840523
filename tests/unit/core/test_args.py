"""core.args: a task's arguments declared once; parsing, audit and help read the declaration."""

from __future__ import annotations

import pytest

from remediations.core.args import SERVICES, Arg, args, count, duration
from remediations.core.errors import UsageError

DECLARED = args(
    Arg("name", "the key", required=True),
    Arg("length", "how long", parse=count(8, 64), default=32),
    Arg("dry", "switch", kind="flag"),
    SERVICES,
    Arg("token", "a secret", secret=True),
    Arg("set", "NAME=VALUE", kind="list", audit=lambda items: [i.split("=", 1)[0] + "=…" for i in items]),
)


def test_parse_gives_defaults_for_what_was_not_given() -> None:
    values = DECLARED.parse({"name": "API_KEY"})
    assert values == {"name": "API_KEY", "length": 32, "dry": False, "service": (), "token": None, "set": ()}


def test_parse_runs_each_parser_with_its_flag() -> None:
    values = DECLARED.parse({"name": "K", "length": "12", "dry": True, "service": ["api", "worker"]})
    assert values["length"] == 12 and values["dry"] is True and values["service"] == ["api", "worker"]
    with pytest.raises(UsageError, match="--length"):
        DECLARED.parse({"name": "K", "length": "7"})
    with pytest.raises(UsageError, match="--service"):
        DECLARED.parse({"name": "K", "service": ["bad name"]})


def test_required_and_unknown_are_one_line_errors() -> None:
    with pytest.raises(UsageError, match=r"^--name is required: the key$"):
        DECLARED.parse({})
    with pytest.raises(UsageError, match="unknown argument"):
        DECLARED.parse({"name": "K", "colour": "red"})


def test_audit_never_records_a_secret_and_uses_the_declared_form() -> None:
    given = {"name": "K", "token": "hunter2" * 2, "set": ["A=1", "B=two"]}
    audited = DECLARED.audited(given)
    assert audited["token"] == "…"  # noqa: S105 - the mask, not a password
    assert audited["set"] == ["A=…", "B=…"]
    assert "hunter2" not in repr(audited) and "two" not in repr(audited)
    assert DECLARED.audited({"name": "K"})["token"] is None  # not given: nothing to hide


def test_help_flags_and_repeatable_come_from_the_declaration() -> None:
    assert DECLARED.help()["name"] == "the key"
    assert DECLARED.repeatable() == ["service", "set"]
    assert [a.flag for a in DECLARED][:3] == ["--name", "--length", "--dry"]
    assert [a.cli_default for a in DECLARED][:4] == [None, None, False, []]


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="declared twice: name"):
        args(Arg("name", "a"), Arg("name", "b"))
    with pytest.raises(ValueError, match="kind"):
        Arg("x", "y", kind="number")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("2w", 1209600), ("1h30m", 5400),
     ("1.5h", 5400), ("45", 45), ("0s", 0), (" 1D12H ", 129600), ("1 h", 3600), ("1d 12h", 129600),
     ("90 minutes", 5400), ("2 Hours 30 min", 9000), ("1.5", 1)],
)  # fmt: skip
def test_one_duration_grammar(text: str, seconds: int) -> None:
    assert duration(text, "--older-than") == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "1h30", "1.5h30m", "-1h", "1y", "h", "1 30", "1h-30m", "2 fortnights"]
)
def test_not_a_duration(text: str) -> None:
    with pytest.raises(UsageError, match=r"--max-age .*give a duration"):
        duration(text, "--max-age")
