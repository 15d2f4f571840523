"""restore-test gets the dump to pg_restore on the lab, both ways: the restore host fetching it
itself (curl, a presigned URL) and the controller streaming it (S3 → controller → SSH channel →
pg_restore): real moto, sshd, curl and PostgreSQL; a real TCP proxy in front of moto slows or cuts
the S3 reply, refuses the host's presigned GET or flips a byte of it; a real SIGKILL of the host's
sshd session cuts the SSH connection mid-stream."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as labhosts
from tests import labkit, pglab

pytestmark = pytest.mark.lab

PREFIX = "drillstream/"
ROWS = 120_000  # a dump of about 4 MiB: md5 text compresses about 2:1
FILL_SQL = """create table rows (id int primary key, payload text not null);
insert into rows select g, md5(g::text) || md5((g * 7)::text) from generate_series(1, ROWS) g"""


DENIED = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: 95\r\n"
          b"Connection: close\r\n\r\n<Error><Code>AccessDenied</Code><Message>Request has expired"
          b"</Message></Error>".ljust(95))  # fmt: skip


class Proxy:
    """TCP proxy on `address` (the restore host reaches the bridge's, not the controller's
    loopback) in front of the lab's S3: each reply at most `rate` bytes/s (0: as fast as it comes),
    any connection whose reply passed `cut_after` bytes is reset; a presigned GET (its request
    line carries X-Amz-Signature) is refused with S3's 403 when `deny_presigned`, or gets the byte
    at `flip_at` of its reply flipped."""

    def __init__(self, upstream: tuple[str, int], address: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.rate = 0
        self.cut_after = 0
        self.deny_presigned = False
        self.flip_at = 0
        self.presigned = 0  # presigned GETs seen
        self.forwarded = 0  # reply bytes, all connections
        self.cuts = 0
        self.server = socket.create_server((address, 0))
        self.url = f"http://{address}:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(65536)
        presigned = b"X-Amz-Signature=" in first.split(b"\r\n", 1)[0]
        self.presigned += presigned
        if presigned and self.deny_presigned:
            client.sendall(DENIED)
            client.close()
            return
        upstream = socket.create_connection(self.upstream)
        upstream.sendall(first)
        flip = self.flip_at if presigned else 0
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        self._pipe(upstream, client, True, flip)

    def _pipe(self, source: socket.socket, sink: socket.socket, reply: bool, flip: int = 0) -> None:
        sent = 0
        try:
            while data := source.recv(16384):
                if flip and sent <= flip < sent + len(data):
                    data = data[: flip - sent] + bytes([data[flip - sent] ^ 0x20]) + data[flip - sent + 1 :]
                if reply and self.cut_after and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    for s in (source, sink):  # a reset, not a clean end
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        s.close()
                    return
                sink.sendall(data)
                if reply:
                    sent += len(data)
                    self.forwarded += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy(lab: Any) -> Iterator[Proxy]:
    host, port = labhosts.S3_ENDPOINT.removeprefix("http://").split(":")
    made = Proxy((host, int(port)))
    yield made
    made.close()


@pytest.fixture
def bridge_proxy(lab: Any) -> Iterator[Proxy]:
    """A Proxy the restore host reaches too: on the S3 endpoint's own address."""
    host, port = labhosts.S3_ENDPOINT.removeprefix("http://").split(":")
    made = Proxy((host, int(port)), address=host)
    yield made
    made.close()


@pytest.fixture(scope="module")
def big_dump(lab: Any) -> Iterator[tuple[str, int]]:
    """A pg_dump -Fc of a database of incompressible-ish rows on db1, in S3 under its own prefix
    (single-part: its ETag is its MD5). Returns (key, size)."""
    pglab.sql("db1", "drop database if exists drillstream")
    pglab.sql("db1", "create database drillstream")
    pglab.sql("db1", FILL_SQL.replace("ROWS", str(ROWS)), db="drillstream")
    data = labhosts.exec_on(
        "db1", ["runuser", "-u", "postgres", "--", f"{pglab.BIN}/pg_dump", "-Fc", "-d", "drillstream"],
        timeout=120,
    ).stdout  # fmt: skip
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{PREFIX}drillstream-{stamp}.dump"
    etag = pglab.put_object(key, data)
    assert "-" not in etag
    yield key, len(data)
    pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)
    pglab.sql("db1", "drop database if exists drillstream")


def inventory(tmp_path: Path, **more: Any) -> Path:
    return labkit.write_inventory(
        tmp_path / "stream.yml",
        host_vars={"dbrestore": {"dump_s3_prefix": PREFIX, "restore_check_tables": {"rows": ROWS},
                                 "restore_freshness_column": "",
                                 "restore_test_json": str(tmp_path / "r.json"),
                                 "restore_test_metrics": str(tmp_path / "r.prom"), **more}},
    )  # fmt: skip


def start_inv(inv: Path, audit: Path, file_limit: int | None = None) -> subprocess.Popen[str]:
    """`inv restore-test --json` in a fresh process; with `file_limit`, no file it writes may grow
    past that many bytes (RLIMIT_FSIZE: a write beyond it fails)."""

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, **pglab.AWS_ENV, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "restore-test", "--json", "--inventory", str(inv)],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=limit,  # only setrlimit, before exec
    )  # fmt: skip


def start_dump(inv: Path, audit: Path, key: str) -> subprocess.Popen[str]:
    """`inv restore-test --json --dump KEY` in a fresh process."""
    env = {**os.environ, **pglab.AWS_ENV, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "restore-test", "--json", "--dump", key, "--inventory", str(inv)],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> labkit.Ran:
    out, err = proc.communicate(timeout=timeout)
    return labkit.Ran(proc.returncode, out, err)


def steps(ran: labkit.Ran) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host("dbrestore")["steps"]}


def scratch_exists() -> bool:
    found = pglab.sql("dbrestore", "select count(*) from pg_database where datname = 'restore_test_scratch'")
    return found == "1"


def spooled_files() -> str:
    found = labhosts.exec_on("dbrestore", ["sh", "-c", "ls -d /var/tmp/restore-test.* 2>/dev/null || true"])
    return found.stdout.decode().strip()


def host_scratch_files() -> str:
    found = labhosts.exec_on("dbrestore", ["sh", "-c", "ls -d /tmp/restore-test.* 2>/dev/null || true"])
    return found.stdout.decode().strip()


@pytest.mark.parametrize("fetch", ["host", "host-j2", "controller"])
def test_the_dump_streams_without_a_file_on_the_controller(
    big_dump: tuple[str, int], audit: Path, tmp_path: Path, fetch: str
) -> None:
    """No file the controller writes may grow past 1 MiB, the dump is 4: the drill passes anyway,
    and the restore host holds no copy either (with restore_jobs 2 only while pg_restore -j reads
    it); the host checked the CRC32 S3 keeps, the controller the MD5 against the ETag."""
    key, size = big_dump
    assert size > 3 * 1024 * 1024
    jobs = 2 if fetch == "host-j2" else 1
    inv = inventory(tmp_path, restore_fetch=fetch.removesuffix("-j2"), restore_jobs=jobs)
    ran = finish(start_inv(inv, audit, file_limit=1024 * 1024))
    assert ran.code == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    got = steps(ran)
    checked = (
        "its MD5 matches the ETag" if fetch == "controller" else "its CRC32 matches S3's x-amz-checksum-crc32"
    )
    assert checked in got["restore"]["message"]
    said = {"host": "the restore host fetched", "host-j2": "to a file, then pg_restore -j 2"}.get(
        fetch, "streamed"
    )
    assert said in got["restore"]["message"] and "could not fetch" not in got["restore"]["message"]
    assert got["checks"]["status"] == "ok" and got["checks"]["data"]["rows"] == {"rows": ROWS}
    assert "by the restore's command" in got["drop"]["message"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is True and report["streamed_bytes"] == size
    assert report["dump"] == f"s3://{pglab.BUCKET}/{key}" and report["fetched_by"] == fetch.removesuffix(
        "-j2"
    )
    assert not scratch_exists() and host_scratch_files() == "" and spooled_files() == ""


def command_lines() -> list[str]:
    """Every process's command line on the machine (the lab's hosts share its PID namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


CREDENTIAL_WORDS = ("X-Amz-Signature", "Signature=", "X-Amz-Credential", pglab.AWS_ENV["AWS_ACCESS_KEY_ID"])


def test_the_host_fetches_the_dump_with_a_url_on_no_command_line_and_in_no_record(
    big_dump: tuple[str, int], audit: Path, tmp_path: Path
) -> None:
    """While the drill runs, every command line on the machine is read again and again: curl is
    seen (so the scan covered the fetch), and no command line, output or audit record holds the
    presigned URL's signature or the access key."""
    seen: list[str] = []
    proc = start_inv(inventory(tmp_path, restore_fetch="host"), audit)
    while proc.poll() is None:
        seen += [
            line for line in command_lines() if "curl" in line or "pg_restore" in line or "X-Amz" in line
        ]
    ran = finish(proc)
    assert ran.code == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert any(line.startswith("curl ") and " -K - " in line for line in seen), sorted(set(seen))[:5]
    for word in CREDENTIAL_WORDS:
        assert not [line for line in seen if word in line], word
        assert word not in ran.stdout + ran.stderr and word not in audit.read_text(), word
        assert word not in (tmp_path / "r.json").read_text() + (tmp_path / "r.prom").read_text()


@pytest.mark.parametrize("fetch", ["auto", "host"])
def test_a_refused_presigned_url_falls_back_to_the_stream_or_fails_clearly(
    big_dump: tuple[str, int], bridge_proxy: Proxy, audit: Path, tmp_path: Path, fetch: str
) -> None:
    """S3 (a proxy in front of it) answers the host's presigned GET with 403 "Request has
    expired": with restore_fetch auto the controller streams the dump instead and the drill
    passes, saying why; with host it fails in one line. Nothing is left either way."""
    bridge_proxy.deny_presigned = True
    ran = finish(start_inv(inventory(tmp_path, s3_endpoint_url=bridge_proxy.url, restore_fetch=fetch), audit))
    assert bridge_proxy.presigned >= 1, "the host's GET went through the proxy"
    restore = steps(ran)["restore"]
    report = json.loads((tmp_path / "r.json").read_text())
    why = "S3 answered the host's GET with 403 Forbidden"
    if fetch == "auto":
        assert ran.code == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert restore["message"].startswith("streamed ")
        assert restore["message"].endswith(f"; the restore host could not fetch it ({why})")
        assert report["success"] is True and report["fetched_by"] == "controller"
    else:
        assert ran.code == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert restore["status"] == "failed"
        assert restore["message"] == f"the restore host could not fetch the dump: {why}"
        assert report["success"] is False and why in report["error"]
    assert "\n" not in restore["message"] and "Traceback" not in ran.stderr
    assert not scratch_exists() and host_scratch_files() == ""


@pytest.mark.parametrize("kept", ["CRC32", "MD5"])
def test_a_dump_corrupted_on_the_way_to_the_host_fails_the_drill_on_its_checksum(
    big_dump: tuple[str, int], bridge_proxy: Proxy, audit: Path, tmp_path: Path, kept: str
) -> None:
    """One byte of the host's GET flipped (by a proxy in front of S3): the whole object is
    still hashed, its CRC32 is not the one S3 keeps (or, for an object uploaded without one, its
    MD5 not the ETag), the drill fails saying so, and nothing is left."""
    key, size = big_dump
    if kept == "MD5":  # the same bytes, uploaded without a checksum
        data = pglab.s3().get_object(Bucket=pglab.BUCKET, Key=key)["Body"].read()
        key = key.replace(".dump", "-nocrc.dump")
        pglab.put_object(key, data, checksum=False)
    bridge_proxy.flip_at = size // 2
    inv = inventory(tmp_path, s3_endpoint_url=bridge_proxy.url, restore_fetch="host")
    try:
        ran = finish(start_inv(inv, audit) if kept == "CRC32" else start_dump(inv, audit, key))
    finally:
        if kept == "MD5":
            pglab.s3().delete_object(Bucket=pglab.BUCKET, Key=key)
    assert ran.code == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert bridge_proxy.presigned >= 1
    restore = steps(ran)["restore"]
    assert restore["status"] == "failed" and "\n" not in restore["message"]
    assert restore["message"].startswith(f"s3://{pglab.BUCKET}/{key}: the content's {kept} ")
    against = "is not S3's x-amz-checksum-crc32" if kept == "CRC32" else "is not the ETag"
    assert against in restore["message"] and "the dump is corrupt" in restore["message"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is False and "the dump is corrupt" in report["error"]
    assert steps(ran)["drop"]["status"] == "ok"
    assert not scratch_exists() and host_scratch_files() == ""


def test_a_cut_s3_stream_fails_the_drill_in_one_line_and_leaves_nothing(
    big_dump: tuple[str, int], proxy: Proxy, audit: Path, tmp_path: Path
) -> None:
    key, size = big_dump
    proxy.cut_after = 1024 * 1024  # the listing passes, the dump's reply is reset after 1 MiB
    ran = finish(start_inv(inventory(tmp_path, s3_endpoint_url=proxy.url, restore_fetch="controller"), audit))
    assert ran.code == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert proxy.cuts >= 1
    restore = steps(ran)["restore"]
    assert restore["status"] == "failed"
    message = restore["message"]
    assert "\n" not in message and "Traceback" not in ran.stderr
    assert f"streaming s3://{pglab.BUCKET}/{key}: the stream was cut after " in message
    assert f" of {size} bytes" in message
    assert steps(ran)["drop"]["status"] == "ok"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["success"] is False and "the stream was cut" in report["error"]
    assert not scratch_exists() and host_scratch_files() == ""


def test_a_cut_ssh_connection_mid_stream_fails_and_the_host_drops_the_scratch_database(
    big_dump: tuple[str, int], proxy: Proxy, audit: Path, tmp_path: Path
) -> None:
    """The SSH session is SIGKILLed while the dump streams (slowed to 1 MiB/s by the proxy): the run
    fails in one line, and pg_restore, reading the end of its input, fails and the host itself drops
    the scratch database (the controller cannot any more)."""
    proxy.rate = 1024 * 1024
    proc = start_inv(inventory(tmp_path, s3_endpoint_url=proxy.url, restore_fetch="controller"), audit)
    try:
        deadline = time.monotonic() + 60
        while proxy.forwarded < 1024 * 1024 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None and scratch_exists(), "the stream should be under way"
        assert labhosts.kill_ssh_sessions("dbrestore") >= 1
        ran = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ran.code == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    message = ran.host("dbrestore")["message"]
    assert "\n" not in message and "Traceback" not in ran.stderr
    assert "dropped" in message or "lost" in message, message
    deadline = time.monotonic() + 30
    while scratch_exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not scratch_exists(), "the host should have dropped the scratch database itself"
    assert host_scratch_files() == ""
