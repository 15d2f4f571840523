"""The shared S3 bounds: from the inventory vars, their arithmetic, and the reports while waiting."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from remediations.actions.s3client import Bounds, S3Store, S3Unanswered
from remediations.actions.s3versions import S3, Tuning
from remediations.core.errors import HostError, UsageError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, Bounds(5, 30, 3, 10)),
        ({"s3_connect_timeout": 2, "s3_read_timeout": "7.5", "s3_max_attempts": 1}, Bounds(2, 7.5, 1, 10)),
        ({"s3_max_attempts": "4", "s3_progress_interval": 0.5}, Bounds(5, 30, 4, 0.5)),
        ({"s3_read_timeout": None, "s3_max_attempts": ""}, Bounds()),
    ],
)
def test_bounds_from_vars(given: dict[str, Any], expected: Bounds) -> None:
    assert Bounds.from_vars(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"s3_read_timeout": 0}, "s3_read_timeout: 0 is not a number of seconds from 0.1 to 3600"),
        ({"s3_connect_timeout": "soon"}, "s3_connect_timeout: 'soon' is not a number of seconds"),
        ({"s3_read_timeout": float("nan")}, "s3_read_timeout: nan is not a number"),
        ({"s3_max_attempts": 0}, "s3_max_attempts: 0 is not a whole number from 1 to 10"),
        ({"s3_max_attempts": 2.5}, "s3_max_attempts: 2.5 is not a whole number"),
        ({"s3_max_attempts": True}, "s3_max_attempts: True is not a whole number"),
        ({"s3_progress_interval": -1}, "s3_progress_interval: -1 is not a number of seconds"),
    ],
)
def test_bad_bounds_are_bad_input(given: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        Bounds.from_vars(given)


@pytest.mark.parametrize(
    ("bounds", "per_request"),
    [
        (Bounds(), 3 * (5 + 30) + 1 + 2),  # 108 s: the README's number
        (Bounds(1, 2, 2), 2 * 3 + 1),
        (Bounds(1, 1, 1), 2),
        (Bounds(1, 1, 8), 8 * 2 + 1 + 2 + 4 + 8 + 16 + 20 + 20),  # backoff capped at 20 s
    ],
)
def test_the_bound_of_one_request(bounds: Bounds, per_request: float) -> None:
    assert bounds.per_request == per_request


def test_the_config_is_bounded_with_standard_retries() -> None:
    config = Bounds(2, 7, 4).config(pool=16)
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.max_pool_connections == 16


@pytest.fixture
def silent() -> Iterator[str]:
    """A real listener on loopback that accepts and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTEST0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


FAST = {"s3_connect_timeout": 0.5, "s3_read_timeout": 0.6, "s3_max_attempts": 2, "s3_progress_interval": 0.3}


def test_a_silent_endpoint_is_reported_while_waiting_then_fails_in_one_line(creds: None, silent: str) -> None:
    s3 = S3({"s3_endpoint_url": silent, **FAST}, Tuning())
    s3.waits.stream = io.StringIO()
    s3.waits.label = "restore-s3-prefix"
    started = time.monotonic()
    with (
        pytest.raises(S3Unanswered) as caught,
        s3.failing("s3://media", UsageError),
        s3.waits.doing("ListObjectVersions page 3 of media/orders/"),
    ):
        s3.client.list_object_versions(Bucket="media", Prefix="orders/")
    took = time.monotonic() - started
    assert isinstance(caught.value, HostError) and not isinstance(caught.value, UsageError)
    assert took < Bounds.from_vars(FAST).per_request + 1
    head, within, tail = str(caught.value).partition(" s (")
    assert head.startswith(f"s3://media: S3 endpoint {silent} did not answer within ")
    assert 1 <= int(head.rsplit(" ", 1)[1]) <= round(took)  # two read timeouts of 0.6 s, and a backoff
    assert within + tail == (" s (ListObjectVersions page 3 of media/orders/: 2 attempt(s), each 0.5 s to "
                             "connect and 0.6 s to answer); nothing more was sent")  # fmt: skip
    lines = s3.waits.stream.getvalue().splitlines()
    assert lines and lines[0].startswith(
        f"restore-s3-prefix: waiting for S3 at {silent} (ListObjectVersions page 3 of media/orders/, "
    )
    bound = Bounds.from_vars(FAST).per_request  # 2 * (0.5 + 0.6) + 1
    assert all(line.endswith(f" of at most {bound:.0f} s)") for line in lines)


def test_the_backup_store_is_bounded_too(creds: None, silent: str) -> None:
    store = S3Store({"s3_endpoint_url": silent, **FAST}, label="backup-check")
    store.waits.stream = io.StringIO()
    started = time.monotonic()
    with pytest.raises(HostError, match=f"listing s3://b/p at {silent}: S3 endpoint {silent} did not answer"):
        store.list("b", "p")
    assert time.monotonic() - started < Bounds.from_vars(FAST).per_request + 1
    assert "backup-check: waiting for S3" in store.waits.stream.getvalue()


# --- one client: health and backup-check read the same endpoint with the same profile -----------


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> list[tuple[str | None, str | None, str]]:
    """Every S3 client made: (profile, endpoint, region), whoever made it."""
    import boto3

    config = tmp_path / "aws-config"
    config.write_text("[profile backups]\nregion = eu-west-1\naws_access_key_id = AKIAPROFILE0001\n"
                      "aws_secret_access_key = profile-secret\n")  # fmt: skip
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    made: list[tuple[str | None, str | None, str]] = []
    real = boto3.session.Session.client

    def client(self: Any, service: str, *args: Any, **kwargs: Any) -> Any:
        made.append((self.profile_name if self.profile_name != "default" else None,
                     kwargs.get("endpoint_url"), kwargs.get("region_name")))  # fmt: skip
        return real(self, service, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return made


@pytest.mark.parametrize(
    ("env", "host_vars", "expected"),
    [
        ({}, {"s3_endpoint_url": "http://127.0.0.1:9"}, (None, "http://127.0.0.1:9", "us-east-1")),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:8"}, {"s3_endpoint_url": "http://127.0.0.1:9"},
         (None, "http://127.0.0.1:8", "us-east-1")),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:8", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7"}, {},
         (None, "http://127.0.0.1:7", "us-east-1")),
        ({}, {"s3_endpoint_url": "http://127.0.0.1:9", "aws_profile": "backups"},
         ("backups", "http://127.0.0.1:9", "eu-west-1")),
        ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7"}, {"aws_profile": "backups", "s3_region": "eu-north-1"},
         ("backups", "http://127.0.0.1:7", "eu-north-1")),
    ],
)  # fmt: skip
def test_health_and_backup_check_resolve_the_endpoint_alike(
    creds: None, sessions: list[Any], monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
    host_vars: dict[str, Any], expected: tuple[Any, ...],
) -> None:  # fmt: skip
    from remediations.host.health import newest_s3_object

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    quick = {**host_vars, "s3_max_attempts": 1, "s3_connect_timeout": 0.5, "s3_read_timeout": 0.5}
    newest, error = newest_s3_object("s3://backups/db/", quick)  # nothing listens there: an error
    assert newest is None and error.startswith("S3: ")
    store = S3Store(quick, label="backup-check")
    restore = S3(quick, Tuning())
    assert sessions == [expected, expected, expected]  # health, backup-check, the restore tasks
    assert store.endpoint == restore.endpoint == expected[1]
    assert store.profile == restore.profile == expected[0]
