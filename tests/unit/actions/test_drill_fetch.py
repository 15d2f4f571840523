"""The restore drill's host-side fetch script, run for real: sh, curl, tee, md5sum and wc against
an HTTP server on loopback; pg_restore and psql are small scripts here (the lab runs the real
ones) that record what they read."""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import http.server
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediations.actions import drill_fetch
from remediations.facts.postgres import PgTarget, script
from remediations.postgres import restore_db_sql

DUMP = os.urandom(3 * 1024 * 1024 + 17)


class Server(http.server.ThreadingHTTPServer):
    body = DUMP
    etag = hashlib.md5(DUMP, usedforsecurity=False).hexdigest()
    crc32 = base64.b64encode(zlib.crc32(DUMP).to_bytes(4, "big")).decode()
    status = 200
    cut_after = 0  # close the connection after this many body bytes (0: send all)
    slow = 0.0  # seconds between 64 KiB pieces of the body (0: all at once)
    asked: list[str]  # each GET's x-amz-checksum-mode header (set by the fixture)


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        server = self.server
        if server.status != 200:
            self.send_response(server.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(server.body)))
        self.send_header("ETag", f'"{server.etag}"')
        server.asked.append(self.headers.get("x-amz-checksum-mode", ""))
        if self.headers.get("x-amz-checksum-mode") == "ENABLED":  # as S3 answers
            self.send_header("x-amz-checksum-crc32", server.crc32)
        self.end_headers()
        body = server.body[: server.cut_after] if server.cut_after else server.body
        if not server.slow:
            self.wfile.write(body)
            return
        for at in range(0, len(body), 65536):
            try:
                self.wfile.write(body[at : at + 65536])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(server.slow)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server(("127.0.0.1", 0), Handler)
    made.asked = []
    threading.Thread(target=made.serve_forever, daemon=True).start()
    yield made
    made.shutdown()
    made.server_close()


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """psql (records its SQL) and pg_restore (keeps `$KEEP` bytes of its input, or all, then
    exits `$RESTORE_EXIT`) in a bin folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "psql").write_text(f'#!/bin/sh\ncat >> {tmp_path}/sql.log\nexit "${{PSQL_EXIT:-0}}"\n')
    (bin_dir / "pg_restore").write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/argv\n'
        'for last; do :; done\n'
        f'case "$last" in /*) cat "$last" > {tmp_path}/restored; exit "${{RESTORE_EXIT:-0}}";; esac\n'
        f'if [ -n "$KEEP" ]; then head -c "$KEEP" > {tmp_path}/restored; '
        f"else cat > {tmp_path}/restored; fi\n"
        'exit "${RESTORE_EXIT:-0}"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def run(
    tools: Path, url: str, hasher: str = "md5", jobs: int = 1, spool: str = "", after: str = "", **env: str
) -> tuple[subprocess.CompletedProcess[str], drill_fetch.Fetched]:
    pg = PgTarget(os_user=getpass.getuser(), bin_dir=str(tools))
    create, drop = "create database scratch;\n", "drop database scratch;\n"
    spool = spool or str(tools.parent)
    command = drill_fetch.fetch_script(
        pg, "scratch", create, drop, hasher=hasher, jobs=jobs, size=len(DUMP), spool=spool, after=after
    )
    config = drill_fetch.curl_config(url, checksum=hasher == "crc32").decode()
    done = subprocess.run(
        ["sh", "-c", command], input=config, capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60, check=False,
    )  # fmt: skip
    return done, drill_fetch.parse(done.stdout)


def url_of(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/b/dump?X-Amz-Signature=abc"


def test_the_whole_dump_reaches_pg_restore_hashed_and_counted(server: Server, tools: Path) -> None:
    done, got = run(tools, url_of(server))
    assert done.returncode == 0, done.stderr
    assert (tools.parent / "restored").read_bytes() == DUMP
    assert got.created and got.curl == 0 and got.restore == 0
    assert got.bytes == len(DUMP) == got.expected and got.sum == server.etag == got.etag_md5
    assert drill_fetch.verdict(got, "s3://b/dump") == ("", "its MD5 matches the ETag")
    assert got.mode == "stream" and server.asked == [""]
    assert "create database scratch" in (tools.parent / "sql.log").read_text()
    assert "drop database" not in (tools.parent / "sql.log").read_text()
    assert url_of(server) not in done.stdout + done.stderr


def test_a_corrupt_dump_is_hashed_whole_even_when_pg_restore_stops_early(server: Server, tools: Path) -> None:
    server.etag = hashlib.md5(b"another content", usedforsecurity=False).hexdigest()
    done, got = run(tools, url_of(server), KEEP="1000", RESTORE_EXIT="1")
    assert done.returncode == 1
    assert len((tools.parent / "restored").read_bytes()) == 1000
    assert got.restore == 1 and got.bytes == len(DUMP), "the rest was still read and counted"
    assert got.sum == hashlib.md5(DUMP, usedforsecurity=False).hexdigest()
    problem, checked = drill_fetch.verdict(got, "s3://b/dump")
    assert checked and problem.endswith("is not the ETag " + server.etag + ": the dump is corrupt")
    assert "drop database scratch" in (tools.parent / "sql.log").read_text(), "the host dropped it"


def test_a_refused_url_reaches_nothing_and_says_why(server: Server, tools: Path) -> None:
    server.status = 403
    done, got = run(tools, url_of(server))
    assert done.returncode == 1
    assert drill_fetch.not_fetched(got) and got.http_code == 403
    assert drill_fetch.why_not(got, "") == "S3 answered the host's GET with 403 Forbidden"
    assert "drop database scratch" in (tools.parent / "sql.log").read_text()


def test_an_unreachable_endpoint_reaches_nothing(tools: Path) -> None:
    done, got = run(tools, "http://127.0.0.1:9/b/dump")
    assert done.returncode == 1 and drill_fetch.not_fetched(got) and got.curl == 7
    assert drill_fetch.why_not(got, "curl: (7) Failed to connect").startswith("curl exit 7: curl: (7)")


def test_a_cut_download_fails_with_its_byte_count(server: Server, tools: Path) -> None:
    server.cut_after = 1024 * 1024
    done, got = run(tools, url_of(server))
    assert done.returncode == 1 and not drill_fetch.not_fetched(got)
    problem, _ = drill_fetch.verdict(got, "s3://b/dump")
    assert problem == (
        f"the restore host's download of s3://b/dump was cut after {1024 * 1024} of {len(DUMP)} bytes "
        "(curl exit 18)"
    )


def test_a_failed_create_stops_before_the_fetch(server: Server, tools: Path) -> None:
    done, got = run(tools, url_of(server), PSQL_EXIT="1")
    assert done.returncode == drill_fetch.CREATE_FAILED
    assert not got.created and not (tools.parent / "restored").exists()


def test_no_temporary_folder_is_left(server: Server, tools: Path, tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("restore-test.*"))
    run(tools, url_of(server))
    assert set(Path("/tmp").glob("restore-test.*")) == before


@pytest.mark.parametrize("url", ['http://x/"', "http://x/\\", "http://x/\n"])
def test_a_url_that_would_break_curls_config_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        drill_fetch.curl_config(url)


def test_parse_without_curl() -> None:
    got = drill_fetch.parse("fetch-created 1\nfetch-curl 127\nfetch-restore 1\nfetch-bytes 0\n")
    assert drill_fetch.not_fetched(got) and drill_fetch.why_not(got, "") == "no curl on the restore host"


@pytest.mark.parametrize(
    ("headers", "md5"),
    [
        ({"etag": '"' + "a" * 32 + '"'}, "a" * 32),
        ({"etag": '"' + "a" * 32 + '-3"'}, ""),  # multipart
        ({"etag": '"' + "a" * 32 + '"', "x-amz-server-side-encryption": "aws:kms"}, ""),
        ({"etag": '"' + "a" * 32 + '"', "x-amz-server-side-encryption-customer-algorithm": "AES256"}, ""),
    ],
)
def test_only_a_plain_single_part_etag_is_an_md5(headers: dict[str, str], md5: str) -> None:
    assert drill_fetch.Fetched(headers=headers).etag_md5 == md5


def test_the_presigned_url_is_sigv4_and_short_lived(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 alone would presign with SigV2 here (us-east-1, a custom endpoint)."""
    from remediations.actions.s3client import S3Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNITTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-test-secret")
    store = S3Store({"s3_endpoint_url": "http://127.0.0.1:9", "s3_region": "us-east-1"})
    assert "Signature=" in store.client.generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "k"}
    )
    url = drill_fetch.presigned_get(store, "b", "dumps/a b.dump", 120)
    assert url.startswith("http://127.0.0.1:9/b/dumps/a%20b.dump?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=120" in url
    assert "X-Amz-Signature=" in url and "AWSAccessKeyId" not in url


def test_the_crc32_s3_keeps_is_asked_for_and_checked_on_the_host(server: Server, tools: Path) -> None:
    done, got = run(tools, url_of(server), hasher="crc32")
    assert done.returncode == 0, done.stderr
    assert server.asked == ["ENABLED"] and got.crc32 == server.crc32 == got.sum
    assert drill_fetch.verdict(got, "s3://b/dump", "crc32") == (
        "",
        "its CRC32 matches S3's x-amz-checksum-crc32",
    )
    server.crc32 = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    done, got = run(tools, url_of(server), hasher="crc32")
    problem, _ = drill_fetch.verdict(got, "s3://b/dump", "crc32")
    assert problem == (
        f"s3://b/dump: the content's CRC32 {got.sum} is not S3's x-amz-checksum-crc32 {server.crc32}: "
        "the dump is corrupt"
    )


def test_with_jobs_the_dump_is_checked_as_a_file_before_pg_restore_j_reads_it(
    server: Server, tools: Path
) -> None:
    done, got = run(tools, url_of(server), hasher="crc32", jobs=2, after="echo 'fetch-checks {}'")
    assert done.returncode == 0, done.stderr
    assert got.mode == "file" and got.restore == 0 and got.checks == "{}"
    argv = (tools.parent / "argv").read_text().split()
    assert argv[-3:-1] == ["-j", "2"] and argv[-1].endswith("/dump")
    assert (tools.parent / "restored").read_bytes() == DUMP
    assert not list(tools.parent.glob("restore-test.*")), "the spooled dump is removed"


def test_with_jobs_a_corrupt_dump_never_reaches_pg_restore(server: Server, tools: Path) -> None:
    server.etag = hashlib.md5(b"another content", usedforsecurity=False).hexdigest()
    done, got = run(tools, url_of(server), jobs=2, after="echo 'fetch-checks {}'")
    assert done.returncode == 1 and got.mode == "file" and got.restore == -1 and not got.checks
    assert not (tools.parent / "restored").exists()
    assert drill_fetch.verdict(got, "s3://b/dump")[0].endswith("the dump is corrupt")
    assert "drop database scratch" in (tools.parent / "sql.log").read_text()
    assert not list(tools.parent.glob("restore-test.*"))


def test_with_jobs_and_no_room_to_spool_the_dump_streams(server: Server, tools: Path) -> None:
    done, got = run(tools, url_of(server), jobs=2, spool="/nonexistent/spool")
    assert done.returncode == 0, done.stderr
    assert got.mode == "stream (too little room in /nonexistent/spool)"
    assert "-j" not in (tools.parent / "argv").read_text().split()
    assert (tools.parent / "restored").read_bytes() == DUMP


@pytest.mark.parametrize(
    ("etag", "algorithms", "kind", "python", "hasher"),
    [
        ("a" * 32, ("CRC32",), "", True, "crc32"),
        ("a" * 32, ("CRC32",), "", False, "md5"),  # no python3 on the host
        ("a" * 32, (), "", True, "md5"),
        ("a" * 32 + "-3", ("CRC32",), "", True, ""),  # multipart, its CRC32 maybe composite
        ("a" * 32 + "-3", ("CRC32",), "FULL_OBJECT", True, "crc32"),
        ("a" * 32 + "-3", ("CRC32",), "COMPOSITE", True, ""),
        ("a" * 32, ("CRC64NVME",), "FULL_OBJECT", True, "md5"),
    ],
)
def test_choose_hash(etag: str, algorithms: tuple[str, ...], kind: str, python: bool, hasher: str) -> None:
    assert drill_fetch.choose_hash(etag, algorithms, kind, python) == hasher


def watched(tools: Path, server: Server, stop_after: int) -> tuple[int, drill_fetch.Fetched, str]:
    """restore-db's watched restore command fed as `keepalive` feeds it: the config, then a line
    a tick; the feed ends (as when the run is stopped) once pg_restore got `stop_after` bytes
    (0: never, the command ends by itself)."""
    pg = PgTarget(os_user=getpass.getuser(), bin_dir=str(tools))
    command = restore_db_sql.host_restore_command(pg, "shop_restore_x", True, "md5", watch=True)
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(drill_fetch.curl_config(url_of(server)).decode())
    proc.stdin.flush()
    restored = tools.parent / "restored"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if stop_after and restored.exists() and restored.stat().st_size >= stop_after:
            break
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            break
        time.sleep(0.05)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.stdin = None
    out, err = proc.communicate(timeout=30)
    return proc.returncode, drill_fetch.parse(out), err


def test_a_watched_fetch_runs_to_its_end_while_the_feed_goes_on(server: Server, tools: Path) -> None:
    code, got, err = watched(tools, server, 0)
    assert code == 0, err
    assert got.curl == 0 and got.restore == 0 and got.sum == server.etag
    assert (tools.parent / "restored").read_bytes() == DUMP
    log = tools.parent / "sql.log"
    assert not log.exists() or "drop database" not in log.read_text()


def test_a_watched_fetch_whose_feed_ends_kills_curl_and_drops_the_new_database(
    server: Server, tools: Path
) -> None:
    server.slow = 0.05  # 3 MiB in about 2.5 s
    started = time.monotonic()
    code, got, err = watched(tools, server, 256 * 1024)
    assert code == 1 and time.monotonic() - started < 10, err
    assert got.curl != 0 and len((tools.parent / "restored").read_bytes()) < len(DUMP)
    assert 'drop database if exists "shop_restore_x"' in (tools.parent / "sql.log").read_text()


def test_the_curl_config_is_read_from_stdin_never_a_command_line(tools: Path) -> None:
    body = drill_fetch.stream_body("cat", "", watch=True)
    assert "-K \"$d/k\"" in script(*body) and "X-Amz" not in script(*body)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), ("4", True), (0, False), (65, False), ("two", False), (True, False), (2.5, False)],
)
def test_restore_jobs_is_validated(value: object, ok: bool) -> None:
    from remediations.core.errors import UsageError

    host = {"restore_jobs": value}
    if ok:
        assert drill_fetch.jobs_and_spool(host, "inv: host h")[0] == int(str(value))
    else:
        with pytest.raises(UsageError, match="restore_jobs"):
            drill_fetch.jobs_and_spool(host, "inv: host h")


def test_restore_dbs_host_restore_keeps_the_new_database_when_it_got_none_of_the_dump(tools: Path) -> None:
    """The host's GET reached nothing (the controller then streams the dump into the database it
    made): the host does not drop it."""
    pg = PgTarget(os_user=getpass.getuser(), bin_dir=str(tools))
    command = restore_db_sql.host_restore_command(pg, "shop_restore_x", True, "md5", watch=False)
    done = subprocess.run(["sh", "-c", command], input=drill_fetch.curl_config("http://127.0.0.1:9/b/d").decode(),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    got = drill_fetch.parse(done.stdout)
    assert done.returncode == 1 and drill_fetch.not_fetched(got)
    log = tools.parent / "sql.log"
    assert not log.exists() or "drop database" not in log.read_text()
