"""The var schema and the shared argument checkers (remediations/validate.py), table-driven."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediations.actions.env_files import backup_name, env_file_write, prune_backups_command
from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts import envfile

ROOT = Path(__file__).resolve().parents[3]
HOSTILE = ["a\nb", "$(touch /tmp/x)", "a;reboot", "a`id`", "a b", "x" * 100_000, "", "-a", "a\0b", "é"]


def host(**variables: Any) -> Host:
    return Host("api1", variables, (), "inventories/x.yml")


def test_message_names_file_host_var_value_and_an_example() -> None:
    with pytest.raises(UsageError) as raised:
        validate.check_vars(host(health_timeout=-5))
    assert str(raised.value) == (
        "inventories/x.yml: host api1: health_timeout: -5 is not a number of seconds > 0 and at most "
        "86400 (e.g. 60)"
    )


# (var, good values, bad values)
VAR_CASES: list[tuple[str, list[Any], list[Any]]] = [
    ("health_timeout", [60, 0.5, "30", 86400], [-5, 0, "abc", "nan", "inf", "1e3", True, [], 86401, "-1"]),
    ("stop_timeout", [0, 10, "2"], [-1, 2.5, "2.5", "ten", False, {}]),
    ("ansible_port", [22, "2222", 65535, " 22 "], ["abc", 0, 70000, 22.5, True, "2_2", "0x16"]),
    ("env_backups_keep", [1, 10, "1000"], [0, -1, 1001, "ten", 1.5]),
    ("ansible_become", [True, False, "yes", "no", "True", 1, 0], ["maybe", 2, [], "sudo"]),
    ("ansible_connection", ["ssh", "local", "paramiko", "smart"], ["docker", "winrm", " "]),
    ("ansible_host", ["10.0.0.3", "api-1.example.org", 1234], ["a b", "a\nb", " ", ["x"], "x" * 300]),
    ("ansible_user", ["deploy", 1000], ["de ploy", "a\0b", {}]),
    ("api_service", ["api", "api_2", "a.b-c", "9"], [*(h for h in HOSTILE if h), "x" * 64, "_api"]),
    ("compose_project_name", ["shop", "shop_2", "9-x"], ["Shop", "my shop", "-shop", "shop;x"]),
    ("compose_files", ["compose.yaml", ["a.yaml", "b.yaml"]], [[["nested"]], {"a": 1}, "a\nb", [""]]),
    ("compose_project_dir", ["/srv/shop", "shop"], ["/srv/\nshop", ["/srv"]]),
    ("api_health_url", ["http://127.0.0.1:8080/health", "https://x/y?z=1"],
     ["127.0.0.1:8080", "ftp://x", "http://a b", "http://x\n"]),
    ("health_urls", [{"worker": "http://127.0.0.1:8081/"}, {}, {"worker": None}],
     ["http://x", ["http://x"], {"bad name": "http://x"}, {"worker": "x"}]),
    ("env_files", [{"api": ".env"}, {"api": "/srv/shop/api.env"}],
     [".env", {"api;x": ".env"}, {"api": "a\nb"}]),
    ("lock_dir", ["/run/lock"], ["run/lock", "/run/\nlock", 5]),
    ("secret_vars", [[], ["LICENSE_BLOB"]], ["LICENSE_BLOB", ["a b"], {"a": 1}]),
    ("notify_on", ["changes", "failures", "always", "never", "Always"], ["sometimes", True]),
    ("postgres_port", [5432, "5433"], ["pg", 0, 65536]),
    ("postgres_sslmode", ["prefer", "verify-full"], ["strict", "Prefer!"]),
    ("postgres_admin_user", ["postgres", "admin_1"], ["a b", "x;drop", "1abc"]),
    ("backup_s3_bucket", ["rmlab-backups", "a.b.c", "123"], ["UP", "a_b", "ab", "a..b", "-ab", "1.2.3.4"]),
    ("health_disk_warn_pct", [0, 80, "95.5", 100], [-1, 101, "95%", "nan"]),
    ("wal_keep_base_backups", [1, "2"], [0, "two", 1.5]),
    ("backup_rpo_hours", [26, 0.5], [0, -1, "day"]),
    ("dump_min_bytes", [1, 10**12], [0, "1MB"]),
    ("s3_region", ["eu-west-1", "us-gov-west-1"], ["EU-WEST-1", "eu west", "x"]),
    ("restore_test_notify_success", [True, "no"], ["perhaps"]),
    ("s3_noncurrent_retention_days", [1, "30"], [0, "month"]),
]


@pytest.mark.parametrize(("name", "good", "bad"), VAR_CASES, ids=[c[0] for c in VAR_CASES])
def test_var_kinds(name: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        validate.check_vars(host(**{name: value}))
    for value in bad:
        with pytest.raises(UsageError) as raised:
            validate.check_vars(host(**{name: value}))
        message = str(raised.value)
        assert message.startswith(f"inventories/x.yml: host api1: {name}: "), message
        assert "\n" not in message and len(message) < 300, message


def test_unset_and_unknown_vars_are_fine_and_defaults_apply() -> None:
    validate.check_vars(host(health_timeout=None, api_service="", some_team_var={"anything": [1, 2]}))
    assert validate.value(host(health_timeout=""), "health_timeout") == 60.0
    empty = host()
    assert validate.value(empty, "health_timeout") == 60.0
    assert validate.value(empty, "stop_timeout") == 10
    assert validate.value(empty, "env_backups_keep") == 10
    assert validate.value(empty, "secret_vars") == ()
    assert validate.value(host(stop_timeout="3", health_timeout=5), "stop_timeout") == 3
    assert validate.value(host(health_timeout="2.5"), "health_timeout") == 2.5
    with pytest.raises(UsageError, match="health_timeout: 'abc' is not"):
        validate.value(host(health_timeout="abc"), "health_timeout")


@pytest.mark.parametrize("name", sorted(validate.VARS))
def test_every_example_and_default_is_valid(name: str) -> None:
    var = validate.VARS[name]
    var.kind.parse(yaml.safe_load(var.example))
    if var.default is not None and var.default != ():
        var.kind.parse(var.default)


def test_every_var_the_code_reads_typed_is_in_the_schema() -> None:
    read = set()
    for path in (ROOT / "remediations").rglob("*.py"):
        read |= set(re.findall(r'validate\.value\([^,]+, "([a-z0-9_]+)"\)', path.read_text()))
    assert read, "the pattern found nothing: update it"
    assert sorted(read - set(validate.VARS)) == []


# ---------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("name", ["api", "worker-2", "a.b_c", "9", "x" * 63])
def test_service_names_compose_accepts(name: str) -> None:
    assert validate.check_service(name) == name


@pytest.mark.parametrize("name", [*HOSTILE, "x" * 64, "_api", ".api", None, 5])
def test_service_names_refused_in_one_short_line(name: Any) -> None:
    with pytest.raises(UsageError) as raised:
        validate.check_service(name)
    message = str(raised.value)
    assert message.startswith("--service ") and "not a compose service name" in message
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize(
    ("role", "admin", "fragment"),
    [
        ("shop_app", None, ""),
        ("shop-app.v2$", "postgres", ""),
        ("x; drop table users", None, "give the name of a PostgreSQL login role"),
        ("a\nb", None, "give the name"),
        ("", None, "give the name"),
        ("x" * 64, None, "give the name"),
        ("9app", None, "give the name"),
        ("postgres", None, "superuser or reserved"),
        ("Postgres", None, "superuser or reserved"),
        ("pg_monitor", None, "superuser or reserved"),
        ("public", None, "superuser or reserved"),
        ("admin", "admin", "superuser or reserved"),
    ],
)
def test_roles(role: str, admin: str | None, fragment: str) -> None:
    if not fragment:
        assert validate.check_role(role, admin) == role
        return
    with pytest.raises(UsageError, match=re.escape(fragment)) as raised:
        validate.check_role(role, admin)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 200


@pytest.mark.parametrize(
    ("bucket", "ok"),
    [
        ("rmlab-backups", True), ("a.b-c", True), ("abc", True), ("x" * 63, True), ("123", True),
        ("ab", False), ("x" * 64, False), ("Upper", False), ("a_b", False), ("bad bucket!", False),
        ("a;b", False), ("a..b", False), ("-abc", False), ("abc-", False), ("192.168.5.4", False),
        ("xn--abc", False), ("sthree-abc", False), ("abc-s3alias", False), ("abc--ol-s3", False),
        ("b" * 100_000, False), ("a\nbc", False), ("", False),
    ],
)  # fmt: skip
def test_buckets_follow_s3_naming_rules(bucket: str, ok: bool) -> None:
    if ok:
        assert validate.check_bucket(bucket) == bucket
        return
    with pytest.raises(UsageError, match=r"^--bucket .*: not an S3 bucket name") as raised:
        validate.check_bucket(bucket)
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("16", 16), ("64", 64), (0, None), ("65", None), ("100000", None), ("abc", None), ("1.5", None),
     ("", None), ("9" * 5000, None), (True, None)],
)  # fmt: skip
def test_worker_counts(value: Any, expected: int | None) -> None:
    if expected is not None:
        assert validate.check_workers(value) == expected
        return
    with pytest.raises(UsageError, match=r"^--workers .*: give a whole number from 1 to 64$"):
        validate.check_workers(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("60", 60.0), ("1.5", 1.5), (30, 30.0), ("90s", 90.0), ("abc", None), ("-1", None),
     ("nan", None), ("inf", None), ("1e9", None), ("86401", None)],
)  # fmt: skip
def test_seconds(value: Any, expected: float | None) -> None:
    """Seconds with decimals (--lock-wait) are the one duration grammar (core/units.py), bounded."""
    from remediations.core.units import parse_seconds

    if expected is not None:
        assert parse_seconds(value, "--lock-wait", high=validate.MAX_LOCK_WAIT) == expected
        return
    with pytest.raises(UsageError, match=r"^--lock-wait '.*': .*give a duration"):
        parse_seconds(value, "--lock-wait", high=validate.MAX_LOCK_WAIT)


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 1e20, validate.MAX_DURATION + 1])
def test_durations_are_bounded(seconds: float) -> None:
    with pytest.raises(UsageError, match=r"^--max-age '9+…9+': too long; give at most 36500d$"):
        validate.check_duration(seconds, "--max-age", "9" * 60)


def test_parse_duration_overflow_is_one_line() -> None:
    from remediations.core.units import parse_duration

    assert parse_duration("36500d", "--older-than") == validate.MAX_DURATION
    for text in ("36501d", "9" * 400 + "d", "100000000000000000000s"):
        with pytest.raises(UsageError, match="too long"):
            parse_duration(text, "--older-than")


# --------------------------------------------------------------------------- set-env values on stdin


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("API_TOKEN=s3cr3t\n", {"API_TOKEN": "s3cr3t"}),
        ("A=1\r\nB= two words \n\n# comment\n", {"A": "1", "B": " two words "}),
        ("A='quoted'\nB=$HOME=x", {"A": "'quoted'", "B": "$HOME=x"}),  # literally, as --set takes it
        ("A=", {"A": ""}),
    ],
)
def test_value_lines(text: str, expected: dict[str, str]) -> None:
    assert envfile.parse_value_lines(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "holds no NAME=VALUE line"),
        ("# only a comment\n", "holds no NAME=VALUE line"),
        ("hunter2-no-name\n", "stdin line 1: not NAME=VALUE"),
        ("A=1\n1BAD=x\n", "stdin line 2: not NAME=VALUE"),
        ("A=1\0x\n", "stdin line 1: A: a value cannot hold a NUL"),
        ("A=1\nA=2\n", "stdin line 2: A is given twice"),
    ],
)
def test_value_lines_refused_without_showing_a_value(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)) as raised:
        envfile.parse_value_lines(text)
    assert "hunter2" not in str(raised.value) and "1\0x" not in str(raised.value)


# ------------------------------------------------------------------------------- env backups pruned


def test_pruning_keeps_the_newest_backups_only(tmp_path: Path) -> None:
    """A real shell, on this machine: only dated backups of this file go, oldest first."""
    folder = tmp_path / "a [b] $x"  # glob and shell characters in the path are literal
    folder.mkdir()
    env = folder / ".env"
    env.write_text("A=1\n")
    stamps = ["20240101T000000Z", "20231231T235959Z", "20240103T000000Z", "20240102T000000Z"]
    for stamp in stamps:
        (folder / f".env.{stamp}.bak").write_text(stamp)
    others = [".env.other.bak", ".env.2024.bak", "x.env.20200101T000000Z.bak", ".envx.20200101T000000Z.bak"]
    for name in others:
        (folder / name).write_text("keep")
    subprocess.run(["sh", "-ec", prune_backups_command(str(env), 2)], check=True)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([".env", ".env.20240102T000000Z.bak", ".env.20240103T000000Z.bak", *others])
    with pytest.raises(ValueError):
        prune_backups_command(str(env), 0)


def test_a_write_with_a_backup_prunes_and_one_without_does_not(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\n")
    for stamp in ("20200101T000000Z", "20200102T000000Z"):
        (tmp_path / f".env.{stamp}.bak").write_text(stamp)
    backup = backup_name(str(env))
    job = env_file_write(str(env), "A=2\n", "", "600", backup, backup_mode="600", keep=2)
    subprocess.run(["sh", "-c", job.command()], input=job.stdin, check=True)
    assert env.read_text() == "A=2\n"
    assert sorted(p.name for p in tmp_path.glob(".env.*.bak")) == [".env.20200102T000000Z.bak",
                                                                   Path(backup).name]  # fmt: skip
    assert (Path(backup).stat().st_mode & 0o777) == 0o600
    assert "set --" not in env_file_write(str(env), "A=3\n", "", "600", None, keep=2).command()


def test_a_failed_write_is_not_turned_into_success_by_the_pruning(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\n")
    job = env_file_write(str(env), "A=2\n", "", "600", backup_name(str(env)), keep=2)
    cut = job.stdin[: len(job.stdin) - 2]  # the stream ends early
    done = subprocess.run(["sh", "-c", job.command()], input=cut, check=False, capture_output=True)
    assert done.returncode != 0
    assert env.read_text() == "A=1\n"
