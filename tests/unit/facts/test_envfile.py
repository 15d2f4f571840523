"""The env-file reader and writer, checked against the real thing: `docker compose config` on the
controller (the compose v2 plugin that scripts/bootstrap installs) reads every file these tests make."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from remediations.core.errors import UsageError
from remediations.facts import envfile


class ComposeRefused(Exception):
    pass


def compose_reads(tmp: Path, text: str) -> dict[str, str]:
    """The environment compose gives a service whose env_file holds `text`."""
    (tmp / "app.env").write_text(text)
    (tmp / "compose.yaml").write_text("services:\n  app:\n    image: busybox\n    env_file: app.env\n")
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp)}  # no variable of ours leaks into it
    ran = subprocess.run(
        ["docker", "compose", "--project-directory", str(tmp), "-p", "envfiletest", "config", "--format",
         "json"],
        capture_output=True, text=True, env=clean, check=False, timeout=60,
    )  # fmt: skip
    if ran.returncode != 0:
        raise ComposeRefused(ran.stderr)
    environment = json.loads(ran.stdout)["services"]["app"].get("environment") or {}
    # config prints a file compose could read again, so a literal `$` comes out as `$$`.
    return {k: (v or "").replace("$$", "$") for k, v in environment.items()}


# What compose made of each line when these were written; both compose and the parser must agree.
KNOWN = [
    ("A=bee", "bee"),
    ("U1=a$$b", "a$b"),
    ("U2=a\\$b", "a\\"),
    ("U3=a${A}c", "abeec"),
    ("U4=a${NOPE}c", "ac"),
    ("U5=a${NOPE:-dflt}c", "adfltc"),
    ("U6=x # comment", "x"),
    ("U7=x#nocomment", "x#nocomment"),
    ("U8=a$", "a$"),
    ("U9=$1x", "$1x"),
    ("U10=  spaced  ", "spaced"),
    ("U11=$A$A", "beebee"),
    ('D1="a$$b"', "a$b"),
    ('D2="a\\$b"', "a$b"),
    ('D3="a\\\\$A"', "a\\bee"),
    ('D4="a${NOPE-d}"', "ad"),
    ('D5="a\\nb"', "a\nb"),
    ('D6="a\\qb"', "a\\qb"),
    ('D7="it\'s $A"', "it's bee"),
    ('D8="a # b"', "a # b"),
    ('D9="a$"', "a$"),
    ('D10="a\\\\\\\\b"', "a\\\\b"),
    ('D11="a\\${A}"', "a${A}"),
    ('D12="a$$$$b"', "a$$b"),
    ('D13="a\\\'b"', "a\\'b"),
    ('D14="a\\tb\\rc"', "a\tb\rc"),
    ('D18="\\a\\b\\f\\v\\0\\u00e9"', "\a\b\f\v\\\\u00e9"),
    ('D15="a" # trailing', "a"),
    ('D16="a${A:+set}${NOPE:+unset}"', "aset"),
    ('D17="a$-b"', "a$-b"),
    ("S1='lit $A $$ \\n'", "lit $A $$ \\n"),
    ("S2=' a '", " a "),
    ("S3='a' b", "a"),
    ("S4='a\\'b'", "a'b"),
    ("S5='x\\\\y\\'z'", "x\\\\y'z"),
    ("S6='a\\b'", "a\\b"),
    ("U12=a'b\"c\\'d", "a'b\"c\\'d"),
    ("export E1=ex", "ex"),
    (
        'M1="-----BEGIN KEY-----\nabc$A\n# not a comment\n-----END KEY-----"',
        "-----BEGIN KEY-----\nabcbee\n# not a comment\n-----END KEY-----",
    ),
    ("M2='two\nlines' # and a comment", "two\nlines"),
    ("A=later", "later"),  # the last assignment wins, and what came before used the earlier one
]


def test_parse_reads_what_compose_reads(tmp_path: Path) -> None:
    text = "# a comment\n\n" + "\n".join(line for line, _ in KNOWN) + "\n"
    expected = {line.removeprefix("export ").split("=", 1)[0]: value for line, value in KNOWN}
    assert compose_reads(tmp_path, text) == expected
    assert envfile.parse(text) == expected


def test_parse_takes_the_environment_after_the_file() -> None:
    text = "A=${FROM_ENV}/${B:-none}\nB=file\nC=${B}\n"
    assert envfile.parse(text, {"FROM_ENV": "env", "B": "env-b"}) == {"A": "env/env-b", "B": "file",
                                                                     "C": "file"}  # fmt: skip


def test_only_a_newline_ends_a_line() -> None:
    assert envfile.parse("A='x\x0cy'\nB=\"a\rb\"\r\nC=1") == {"A": "x\x0cy", "B": "a\rb", "C": "1"}


# Values a person might pass to set-env: quotes of both kinds, `$` in every position compose cares
# about, backslashes, `#` after a space, spaces at either end, tabs and a carriage return.
hostile = st.text(alphabet=st.sampled_from(list("aZ09_-./:@ '\"$#\\{}=`!\t\r")), max_size=24)
names = st.from_regex(r"[A-Z][A-Z0-9_]{0,7}", fullmatch=True).filter(lambda n: n != "KEEP")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(names, hostile, min_size=1, max_size=12))
def test_compose_reads_every_written_value_unchanged(tmp_path: Path, values: dict[str, str]) -> None:
    base = "# kept\nKEEP=${A_REF:-x} # kept too\nA_REF=old\n"
    text, _ = envfile.edit(base, values, [])
    read = {**envfile.parse(base), **values}
    assert envfile.parse(text) == read
    assert compose_reads(tmp_path, text) == read
    assert text.startswith("# kept\nKEEP=${A_REF:-x} # kept too\n")  # untouched lines stay as they were


fragments = st.sampled_from([
    "a", " ", "\t", "#", " #", "{", "}", "'", '"', "export ",
    "$", "$$", "$A", "$_x", "${A}", "${", "${1}", "${NOPE:-d}", "${A:+x}", "${A?err}",
    "${A:-${NOPE}}", "${NOPE:-$A}",
    "\\", "\\\\", "\\$", '\\"', "\\'", "\\n", "\\a", "\\0", "\r\n",
])  # fmt: skip
lines = st.tuples(st.sampled_from(["", "'", '"']), st.lists(fragments, max_size=8)).map(
    lambda q: f"{q[0]}{''.join(q[1])}{q[0]}"
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, min_size=1, max_size=10))
def test_parse_agrees_with_compose_on_any_line_compose_accepts(tmp_path: Path, raw: list[str]) -> None:
    text = "A=bee\n" + "".join(f"K{i}={value}\n" for i, value in enumerate(raw))
    try:
        composed = compose_reads(tmp_path, text)
    except ComposeRefused:
        assume(False)  # compose rejects the file (an unterminated quote, say): nothing to agree on
    assert envfile.parse(text) == composed


@given(hostile)
def test_written_value_round_trips_through_the_parser(value: str) -> None:
    text, _ = envfile.edit("OTHER=1\n", {"V": value}, [])
    assert envfile.parse(text) == {"OTHER": "1", "V": value}
    again, changes = envfile.edit(text, {"V": value}, [])
    assert (again, changes) == (text, [])


@pytest.mark.parametrize("item", ["A=x\ny", "A=x\0y"])
def test_a_value_with_a_line_break_or_nul_is_refused(item: str) -> None:
    with pytest.raises(UsageError, match="newline"):
        envfile.parse_assignments([item], [])


def test_a_name_set_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="FOO is set twice"):
        envfile.parse_assignments(["FOO=1", "FOO=2"], [])
    assert envfile.parse_assignments(["FOO=1", "BAR=2"], []) == ({"FOO": "1", "BAR": "2"}, [])


MULTILINE = 'A=1\nTLS_KEY="-----BEGIN-----\nline-of-the-key\n-----END-----"\nB=2\n'


def test_masked_diff_hides_every_line_of_a_secret_that_spans_lines() -> None:
    new, _ = envfile.edit(MULTILINE, {"A": "3"}, [])
    diff = envfile.masked_diff("app.env", MULTILINE, new, ["TLS_KEY"])
    assert "-A=1\n+A=3\n" in diff and "TLS_KEY=*****" in diff
    assert "line-of-the-key" not in diff and "END" not in diff


def test_setting_a_value_that_spans_lines_replaces_all_its_lines() -> None:
    new, changes = envfile.edit(MULTILINE, {"TLS_KEY": "short"}, [])
    assert new == "A=1\nTLS_KEY=short\nB=2\n"
    assert [(c.old, c.new) for c in changes] == [("-----BEGIN-----\nline-of-the-key\n-----END-----", "short")]
    assert envfile.edit(MULTILINE, {}, ["TLS_KEY"])[0] == "A=1\nB=2\n"


@pytest.mark.parametrize("value", ["a\rb", "a\r\nb", "\r", "x\ry z"])
def test_a_carriage_return_reads_back_as_written(value: str) -> None:
    """A value with a CR is written and parsed back the same, so a second edit changes nothing."""
    written, changes = envfile.edit("A=1\n", {"K": value}, [])
    assert changes and envfile.parse(written)["K"] == value
    again, more = envfile.edit(written, {"K": value}, [])
    assert (again, more) == (written, [])


def test_a_file_read_back_through_sections_keeps_its_carriage_returns() -> None:
    """The facts of a host come back as `@@name` sections; an env file's content in one must not
    be cut at a CR (set-env then read `'a\\rb'` back as `'a\\nb'` and re-ran forever)."""
    from remediations.facts.sections import MARK, sections_by_name

    content = "K='a\rb'\nF='x\x0cy'\nL=1"
    sections = sections_by_name(f"{MARK}file0 0:0:600\n{content}\n{MARK}env\nX=1\n")
    assert sections["file0"] == ("0:0:600", content)
    assert envfile.parse(sections["file0"][1] + "\n")["K"] == "a\rb"
