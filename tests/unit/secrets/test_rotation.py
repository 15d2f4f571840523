"""The pure parts of secret rotation: new values, input checks, records, which services use a key."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediations.actions import remote_write
from remediations.actions import rotation as actions
from remediations.actions.env_files import env_file_write
from remediations.core.errors import UsageError
from remediations.facts import envfile, rotation
from remediations.secrets.rotate_aws_key import check_user, parse_env_keys
from remediations.secrets.rotate_db_password import check_role


@pytest.mark.parametrize("alphabet", sorted(rotation.ALPHABETS))
def test_generated_values_have_the_length_and_alphabet_asked(alphabet: str) -> None:
    values = {actions.generate(40, alphabet) for _ in range(50)}
    assert len(values) == 50  # no repeats
    for value in values:
        assert len(value) == 40 and set(value) <= set(rotation.ALPHABETS[alphabet])


def test_no_alphabet_holds_what_breaks_an_env_file_or_compose() -> None:
    for chars in rotation.ALPHABETS.values():
        assert not set(chars) & set("'\"\\$# \t\n`")


@given(st.sampled_from(sorted(rotation.ALPHABETS)), st.integers(min_value=16, max_value=80), st.data())
def test_every_generated_value_survives_the_env_file(alphabet: str, length: int, data: st.DataObject) -> None:
    value = "".join(data.draw(st.lists(st.sampled_from(rotation.ALPHABETS[alphabet]), min_size=length,
                                       max_size=length)))  # fmt: skip
    text, changes = envfile.edit(
        "APP_ENV=lab\nDATABASE_PASSWORD=old-value-here\n", {"DATABASE_PASSWORD": value}, []
    )
    assert changes and envfile.parse(text) == {"APP_ENV": "lab", "DATABASE_PASSWORD": value}


@pytest.mark.parametrize(("length", "expected"), [(None, 32), ("", 32), ("16", 16), (4096, 4096), ("64", 64)])
def test_length(length: object, expected: int) -> None:
    assert rotation.parse_length(length) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("length", ["15", "4097", "-20", "ten", "1e3", "32.5"])
def test_bad_length_is_one_line(length: str) -> None:
    with pytest.raises(UsageError, match=r"^--length .*: give a number of characters from 16 to 4096$"):
        rotation.parse_length(length)


def test_alphabet_and_max_age() -> None:
    assert rotation.parse_alphabet(None) == "alnum"
    assert rotation.parse_alphabet("hex") == "hex"
    with pytest.raises(UsageError, match="give one of alnum, urlsafe, hex, symbols"):
        rotation.parse_alphabet("base64")
    assert rotation.parse_max_age(None) == 3600
    assert rotation.parse_max_age("0") == 0
    assert rotation.parse_max_age("30d") == 30 * 86400
    with pytest.raises(UsageError, match="--max-age"):
        rotation.parse_max_age("a while")


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_value_from_stdin() -> None:
    assert actions.value_from_stdin(Pipe("s3cr3t-value\n")) == "s3cr3t-value"
    assert actions.value_from_stdin(Pipe("s3cr3t-value\r\n")) == "s3cr3t-value"
    assert actions.value_from_stdin(Pipe("  spaces kept  ")) == "  spaces kept  "
    with pytest.raises(UsageError, match="stdin was empty"):
        actions.value_from_stdin(Pipe("\n"))
    with pytest.raises(UsageError, match="holds a newline"):
        actions.value_from_stdin(Pipe("one\ntwo\n"))
    with pytest.raises(UsageError, match="not from a terminal"):
        actions.value_from_stdin(Terminal("typed"))


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "A;rm -rf /", None])
def test_bad_key_names(name: str | None) -> None:
    with pytest.raises(UsageError, match="give the env file's variable name"):
        rotation.check_key(name)


def test_records_round_trip_and_never_a_broken_file() -> None:
    record = rotation.Record(
        id="20261123T180000Z-env-K", kind="env", name="K", task="rotate-secret", env_file="/srv/a/.env",
        keys=("K",), services=("api",), backup="/srv/a/.env.20261123T180000Z.bak",
        started="2026-11-23T18:00:00+00:00", updated="2026-11-23T18:00:01+00:00", status="done",
        detail={"old_key": "AKIA1"},
    )  # fmt: skip
    assert rotation.parse_records(rotation.render_records([record])) == [record]
    assert rotation.parse_records("") == [] and rotation.parse_records("{not json") == []
    assert rotation.parse_records('{"a": 1}') == []
    many = [rotation.Record.from_dict({**record.to_dict(), "id": str(i)}) for i in range(150)]
    kept = rotation.parse_records(rotation.render_records(many))
    assert len(kept) == rotation.KEEP_RECORDS and kept[-1].id == "149"
    assert rotation.latest(kept, "env", "K", "/srv/a/.env") == kept[-1]
    assert rotation.latest(kept, "env", "K", "/srv/b/.env") is None


def test_status_line_flags_unfinished_rotations() -> None:
    base = rotation.Record("1", "postgres", "shop_app", "rotate-db-password", "/srv/shop/.env",
                           ("DATABASE_PASSWORD",), ("api",), "/b.bak", "t0", "t1", "set")  # fmt: skip
    line = rotation.status_line(base)
    assert line.startswith("PostgreSQL role shop_app (DATABASE_PASSWORD in /srv/shop/.env): set at t1")
    assert "UNFINISHED" in line and "backup /b.bak" in line
    assert "UNFINISHED" not in rotation.status_line(
        rotation.Record.from_dict({**base.to_dict(), "status": "done"})
    )


def test_services_interpolating_a_key() -> None:
    compose = """
services:
  api: {image: x, environment: {DB_PASS: "${DATABASE_PASSWORD}"}}
  worker: {image: x, command: ["sh", "-c", "echo $DATABASE_PASSWORD"]}
  cron: {image: x, environment: ["PW=${DATABASE_PASSWORD:-none}"]}
  other: {image: x, environment: {X: "${DATABASE_PASSWORD_OLD}"}}
  plain: {image: x}
"""
    assert actions.interpolating("DATABASE_PASSWORD", [compose]) == ["api", "cron", "worker"]
    assert actions.interpolating("NOPE", [compose, "not: [yaml"]) == []


def test_backup_of_a_rotation_is_never_readable_by_others() -> None:
    job = env_file_write("/srv/shop/.env", "A=1\n", "0:0", "600", "/srv/shop/.env.X.bak", backup_mode="600")
    assert (job.mode, job.owner, job.backup, job.backup_mode) == ("600", "0:0", "/srv/shop/.env.X.bak", "600")
    script = remote_write.SCRIPT
    assert "cp -p" not in script.split('if [ -n "$backup_mode" ]')[1].split("else")[0]  # cp -p: 0644 first
    assert script.index("umask 077") < script.index('cp -- "$path" "$backup"')


def test_aws_and_db_input() -> None:
    assert parse_env_keys(None) == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert parse_env_keys("S3_KEY, S3_SECRET") == ("S3_KEY", "S3_SECRET")
    for bad in ("ONE", "A,A", "A,B,C", "A,B C"):
        with pytest.raises(UsageError, match="--env-keys"):
            parse_env_keys(bad)
    assert check_user("shop-app+ci@example.com") == "shop-app+ci@example.com"
    for bad in ("", "x" * 65, "a b", "a/b", None):
        with pytest.raises(UsageError, match="give an IAM user name"):
            check_user(bad)
    assert check_role("shop_app") == "shop_app"
    for bad in ("", "x" * 64, None):
        with pytest.raises(UsageError, match="--role"):
            check_role(bad)


def test_env_files_and_their_readers_as_compose_merges_them() -> None:
    from remediations.actions.env_files import env_file_of, services_reading

    base = """
services:
  api: {image: x, env_file: .env}
  worker: {image: x, env_file: [.env, {path: ./worker.env, required: false}]}
  db: {image: x}
"""
    override = "services:\n  api: {env_file: [conf/api.env]}\n"
    assert env_file_of("api", [base], "/srv/shop") == ["/srv/shop/.env"]
    assert env_file_of("api", [base, override, "not: [yaml"], "/srv/shop") == ["/srv/shop/conf/api.env"]
    assert env_file_of("worker", [base], "/srv/shop") == ["/srv/shop/.env", "/srv/shop/worker.env"]
    assert env_file_of("db", [base], "/srv/shop") == []
    assert services_reading("/srv/shop/.env", [base], "/srv/shop") == ["api", "worker"]
    assert services_reading("/srv/shop/.env", [base, override], "/srv/shop") == ["worker"]
