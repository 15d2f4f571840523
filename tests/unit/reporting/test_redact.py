"""Redactor: secret-looking names, declared secret vars, NAME=VALUE arguments, known values in free text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remediations.core import inventory
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.facts.envfile import Change, describe
from remediations.reporting.redact import MASK, MIN_MASKED_LENGTH, Redactor, is_secret_name


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "db_password",
        "DB_PASS",
        "passwd",
        "postgres_pwd_passwd",
        "api_key",
        "apiKey",
        "API-KEY",
        "aws_access_key_id",
        "aws_secret_access_key",
        "ssh_private_key",
        "github_token",
        "notify_telegram_bot_token",
        "client_secret",
        "credentials",
        "sentry_dsn",
        "basic_auth",
        "session_key",
        "cookie",
        "notify_slack_webhook",
    ],
)
def test_secret_looking_names(name: str) -> None:
    assert is_secret_name(name)
    assert Redactor().is_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "ansible_host",
        "ansible_user",
        "ansible_port",
        "compose_project_dir",
        "compose_files",
        "api_service",
        "api_health_url",
        "health_timeout",
        "stop_timeout",
        "lock_dir",
        "key_name",
    ],
)
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)
    assert not Redactor().is_secret(name)


def test_declared_secret_names_match_case_insensitively() -> None:
    redactor = Redactor(secret_names=["License_Blob"])
    assert redactor.is_secret("license_blob")
    assert redactor.is_secret("LICENSE_BLOB")
    assert not redactor.is_secret("license")
    assert redactor.data({"LICENSE_BLOB": "abc-123"}) == {"LICENSE_BLOB": MASK}


# (known secret values, text, expected text)
TEXT_CASES = [
    (["hunter2pw"], "login with hunter2pw failed", f"login with {MASK} failed"),
    (["hunter2pw"], "hunter2pw and hunter2pw again", f"{MASK} and {MASK} again"),
    (["hunter2pw"], "nothing secret here", "nothing secret here"),
    # a secret containing another is masked whole (longest first), not as MASK + tail
    (["abcd", "abcdef12"], "token=abcdef12;", f"token={MASK};"),
    # values shorter than MIN_MASKED_LENGTH are not searched for: "on" would eat "online"
    (["on"], "host is online", "host is online"),
    # regex metacharacters in a secret are matched literally
    (["p.ss(w)rd*+"], "DSN p.ss(w)rd*+ here; pxss(w)rd* not", f"DSN {MASK} here; pxss(w)rd* not"),
    (["s3cr3t\nline2"], "out: s3cr3t\nline2 end", f"out: {MASK} end"),
]


@pytest.mark.parametrize(("values", "text", "expected"), TEXT_CASES)
def test_known_values_masked_in_free_text(values: list[str], text: str, expected: str) -> None:
    assert Redactor(secret_values=values).text(text) == expected


def test_min_masked_length_boundary() -> None:
    just_long_enough = "x" * MIN_MASKED_LENGTH
    too_short = "y" * (MIN_MASKED_LENGTH - 1)
    redactor = Redactor(secret_values=[just_long_enough, too_short])
    assert redactor.text(f"a {just_long_enough} b {too_short}") == f"a {MASK} b {too_short}"


# (data, expected) for a Redactor that knows the value "known-secret-1"
DATA_CASES: list[tuple[Any, Any]] = [
    ({"db_password": "hunter22"}, {"db_password": MASK}),
    ({"user": "deploy", "port": 22}, {"user": "deploy", "port": 22}),
    ({"db": {"password": "x", "host": "db1"}}, {"db": {"password": MASK, "host": "db1"}}),
    # a secret-named key hides its whole value, whatever its type
    ({"credentials": {"user": "app", "pass": "x"}}, {"credentials": MASK}),
    ({"api_tokens": ["aaaa1111", "bbbb2222"]}, {"api_tokens": MASK}),
    ({"use_auth": True}, {"use_auth": MASK}),
    # empty secrets stay visibly empty: "not set" is useful and reveals nothing
    ({"password": ""}, {"password": ""}),
    ({"password": None}, {"password": None}),
    # NAME=VALUE arguments with a secret-looking NAME
    (["DB_PASSWORD=hunter22", "LOG_LEVEL=debug"], [f"DB_PASSWORD={MASK}", "LOG_LEVEL=debug"]),
    (["--password=hunter22"], [f"--password={MASK}"]),
    (["API_TOKEN=a=b=c"], [f"API_TOKEN={MASK}"]),
    (["PASSWORD="], ["PASSWORD="]),
    (["my password=not-an-assignment"], ["my password=not-an-assignment"]),
    ({"env": "SENTRY_DSN=https://k@sentry/1"}, {"env": f"SENTRY_DSN={MASK}"}),
    # known values inside ordinary strings, however deep
    ({"cmd": "mysql -p known-secret-1 shop"}, {"cmd": f"mysql -p {MASK} shop"}),
    ({"a": [{"b": ("x", "known-secret-1")}]}, {"a": [{"b": ["x", MASK]}]}),
    # keys become strings (JSON), numbers and bools pass through
    ({1: "x", "n": 3, "flag": False}, {"1": "x", "n": 3, "flag": False}),
]


@pytest.mark.parametrize(("data", "expected"), DATA_CASES)
def test_data_is_a_masked_deep_copy(data: Any, expected: Any) -> None:
    redactor = Redactor(secret_values=["known-secret-1"])
    assert redactor.data(data) == expected


def test_data_does_not_modify_its_input() -> None:
    original = {"db": {"password": "hunter22"}, "args": ["TOKEN=abcdefgh"]}
    Redactor().data(original)
    assert original == {"db": {"password": "hunter22"}, "args": ["TOKEN=abcdefgh"]}


def test_an_assignment_teaches_its_value_for_later_free_text() -> None:
    redactor = Redactor()
    assert redactor.data(["API_TOKEN=zzz999abc"]) == [f"API_TOKEN={MASK}"]
    assert redactor.text("curl -H 'X-Token: zzz999abc' failed") == f"curl -H 'X-Token: {MASK}' failed"


# (inventory vars, text that may show a value, expected)
LEARN_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"db_password": "hunter22"}, "psql: hunter22 rejected", f"psql: {MASK} rejected"),
    ({"ansible_user": "deploy"}, "ssh deploy@host", "ssh deploy@host"),
    ({"all": {"vars": {"vault_token": "tok-123456"}}}, "tok-123456", MASK),
    # numbers are secrets too when their name says so
    ({"pin_password": 12345678}, "pin 12345678", f"pin {MASK}"),
    ({"password": None, "token": ""}, "None token", "None token"),
    ({"app_api_key": "k-1", "ok": "k-1"}, "k-1", "k-1"),  # shorter than MIN_MASKED_LENGTH
]


@pytest.mark.parametrize(("variables", "text", "expected"), LEARN_CASES)
def test_learn_remembers_secret_variable_values(variables: dict[str, Any], text: str, expected: str) -> None:
    redactor = Redactor()
    redactor.learn(variables)
    assert redactor.text(text) == expected


def test_learn_honours_declared_secret_vars() -> None:
    redactor = Redactor(secret_names=["license_blob"])
    redactor.learn({"license_blob": "LIC-0042-XYZ", "region": "eu-west-1"})
    assert redactor.text("loaded LIC-0042-XYZ in eu-west-1") == f"loaded {MASK} in eu-west-1"


def test_learn_masks_each_item_of_a_list_valued_secret() -> None:
    """`db_passwords: [a, b]`: each password, not the list's repr, is what shows up in output."""
    redactor = Redactor()
    redactor.learn({"db_passwords": ["aaaa1111", "bbbb2222"]})
    assert (
        redactor.text("auth failed for aaaa1111; tried bbbb2222") == f"auth failed for {MASK}; tried {MASK}"
    )


# `secret_vars` lists names to treat as secret: the names stay readable (which variable changed), their
# values are masked. (inventory vars, text, expected)
SECRET_VARS_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"secret_vars": ["LICENSE_BLOB"], "LICENSE_BLOB": "LIC-0042-XYZ"},
     "LICENSE_BLOB: LIC-0042-XYZ → *****", f"LICENSE_BLOB: {MASK} → {MASK}"),
    # a name declared before or after the var it names, at any depth
    ({"LICENSE_BLOB": "LIC-0042-XYZ", "secret_vars": ["license_blob"]},
     "set LICENSE_BLOB=LIC-0042-XYZ", f"set LICENSE_BLOB={MASK}"),
    ({"secret_vars": ["ORDER_SALT", "LICENSE_BLOB"], "ORDER_SALT": "salt-9876"},
     "ORDER_SALT and LICENSE_BLOB changed", "ORDER_SALT and LICENSE_BLOB changed"),
    ({"secret_vars": []}, "secret_vars: []", "secret_vars: []"),
]  # fmt: skip


@pytest.mark.parametrize(("variables", "text", "expected"), SECRET_VARS_CASES)
def test_secret_vars_masks_values_not_names(variables: dict[str, Any], text: str, expected: str) -> None:
    redactor = Redactor()
    redactor.learn(variables)
    assert redactor.text(text) == expected
    assert redactor.data({"secret_vars": ["LICENSE_BLOB"]}) == {"secret_vars": ["LICENSE_BLOB"]}


def test_engine_keeps_the_names_of_secret_vars_in_set_env_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What set-env records for a declared secret: `LICENSE_BLOB: ***** → *****`, never `*****: *****`."""
    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    inv = inventory.parse(
        "all:\n  vars: {secret_vars: [LICENSE_BLOB, ORDER_SALT], ORDER_SALT: salt-9876}\n"
        "  hosts: {api1: {ansible_connection: local}}\n",
        "inv.yml",
    )
    engine = Engine(inv, RunOptions(check=True))
    line = describe([Change("LICENSE_BLOB", "LIC-0042-XYZ", "LIC-0043-XYZ")], ["LICENSE_BLOB"])
    assert engine.redactor.text(line) == f"LICENSE_BLOB: {MASK} → {MASK}"
    assert engine.redactor.text("ORDER_SALT=salt-9876") == f"ORDER_SALT={MASK}"
