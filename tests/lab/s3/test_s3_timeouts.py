"""restore-s3-prefix / restore-s3-object against an S3 endpoint that stops answering.

Two real endpoints that hang: a TCP listener on loopback that accepts and never answers, and an
HTTP proxy in front of the lab's S3 (moto on 198.18.0.1:9000) that forwards N requests and then
holds every later one unanswered. The runs go through the real `inv` front end with small bounds
(s3_connect_timeout / s3_read_timeout / s3_max_attempts in the inventory), so a hang fails fast;
the run with the default bounds is behind the slow_faults marker.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from lab import hosts as lab
from remediations.facts.s3 import iso
from tests.labkit import Ran, audit_lines, inv

pytestmark = pytest.mark.lab

ACCESS_KEY = "AKIALABTESTKEY00077"
SECRET_KEY = "lab-secret-key-never-printed-5c4b3a"  # noqa: S105 - a fake, to prove it is never printed
SMALL = {"s3_connect_timeout": 1, "s3_read_timeout": 2, "s3_max_attempts": 2, "s3_progress_interval": 1}
# Bounds.per_request of SMALL: attempts * (connect + read) + at most 1 s of backoff (test_s3client.py
# holds the arithmetic); written out so that this file also runs, and fails, on code without the bounds.
SMALL_BOUND = 2 * (1 + 2) + 1
DEFAULT_BOUND = 3 * (5 + 30) + 1 + 2  # 108 s, the README's number
STARTUP = 15.0  # a fresh `inv` process: Python, invoke, boto3 imports (generous on a shared machine)
GIVE_UP = SMALL_BOUND + STARTUP + 15  # the subprocess's own deadline: the old code waited 5 x 300 s


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A TCP listener on loopback that accepts every connection and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for conn in held:
            conn.close()


class Stalling(BaseHTTPRequestHandler):
    """Forwards requests to the lab's S3 until `answers` have been answered; then holds every request
    open, unanswered, until the test ends (the endpoint "hangs mid-run")."""

    protocol_version = "HTTP/1.1"
    answers = 0
    delay = 0.0  # seconds each forwarded request takes (a slow endpoint)
    answered = 0
    held = 0
    lock = threading.Lock()
    release = threading.Event()

    def _any(self) -> None:
        cls = type(self)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with cls.lock:
            forward = cls.answered < cls.answers
            if forward:
                cls.answered += 1
            else:
                cls.held += 1
        if not forward:
            cls.release.wait(120)
            self.close_connection = True
            return
        time.sleep(cls.delay)
        upstream = http.client.HTTPConnection(lab.BRIDGE_ADDRESS, lab.S3_PORT, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stalling_proxy(lab: Any) -> Iterator[tuple[str, type[Stalling]]]:
    handler = type("Handler", (Stalling,), {"answered": 0, "held": 0, "lock": threading.Lock(),
                                            "release": threading.Event()})  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def inventory(tmp_path: Path, **all_vars: Any) -> Path:
    path = tmp_path / "s3.yml"
    data = {"all": {"hosts": {"controller": {"ansible_connection": "local"}}, "vars": all_vars}}
    path.write_text(yaml.safe_dump(data))
    return path


def inv_s3(tmp_path: Path, endpoint: str, *args: str, bounds: dict[str, Any], timeout: float = 240) -> Ran:
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}  # fmt: skip
    return inv(*args, audit=tmp_path / "audit.jsonl", inventory=inventory(tmp_path, **bounds), env=env,
               timeout=timeout)  # fmt: skip


def assert_clear_failure(ran: Ran, endpoint: str, took: float, bound: float) -> None:
    assert ran.code == 1, ran.stdout + ran.stderr
    assert f"S3 endpoint {endpoint} did not answer within " in ran.stdout, ran.stdout
    assert "nothing more was sent" in ran.stdout
    assert "Traceback" not in ran.stdout + ran.stderr and "botocore" not in ran.stdout + ran.stderr
    assert SECRET_KEY not in ran.stdout + ran.stderr and ACCESS_KEY not in ran.stdout + ran.stderr
    assert took < bound + STARTUP, f"took {took:.0f}s, bound {bound:.0f}s"


def test_a_hung_endpoint_fails_within_the_bound_saying_so(tmp_path: Path, hung_endpoint: str) -> None:
    started = time.monotonic()
    ran = inv_s3(tmp_path, hung_endpoint, "restore-s3-prefix", "--bucket", "media", "--prefix", "orders/",
                 "--at", "1h ago", bounds=SMALL, timeout=GIVE_UP)  # fmt: skip
    took = time.monotonic() - started
    assert_clear_failure(ran, hung_endpoint, took, SMALL_BOUND)
    assert "(GetBucketVersioning of media: 2 attempt(s), each 1 s to connect and 2 s to answer)" in ran.stdout
    waiting = [line for line in ran.stderr.splitlines() if "waiting for S3" in line]
    assert waiting, ran.stderr
    assert waiting[0].startswith(f"restore-s3-prefix: waiting for S3 at {hung_endpoint} (GetBucketVersioning "
                                 f"of media, ")  # fmt: skip
    assert waiting[0].endswith(f"of at most {SMALL_BOUND:.0f} s)")


def test_a_hung_endpoint_fails_restore_s3_object_too(tmp_path: Path, hung_endpoint: str) -> None:
    started = time.monotonic()
    ran = inv_s3(tmp_path, hung_endpoint, "restore-s3-object", "--bucket", "media", "--key", "a.txt",
                 "--version-id", "v1", "--json", bounds=SMALL, timeout=GIVE_UP)  # fmt: skip
    took = time.monotonic() - started
    assert ran.code == 1, ran.stdout + ran.stderr
    [host] = ran.json()["hosts"]
    assert host["status"] == "failed"
    message = host["steps"][-1]["message"]
    assert message.startswith(f"s3://media: S3 endpoint {hung_endpoint} did not answer within "), message
    assert message.endswith("nothing more was sent")
    assert took < SMALL_BOUND + STARTUP


@pytest.mark.slow_faults
def test_a_hung_endpoint_with_the_default_bounds(tmp_path: Path, hung_endpoint: str) -> None:
    bound = DEFAULT_BOUND
    started = time.monotonic()
    ran = inv_s3(tmp_path, hung_endpoint, "restore-s3-prefix", "--bucket", "media", "--prefix", "",
                 "--at", "1h ago", bounds={}, timeout=bound + 120)  # fmt: skip
    took = time.monotonic() - started
    assert_clear_failure(ran, hung_endpoint, took, bound)
    assert took > 3 * 30  # it did wait the three read timeouts out
    waiting = [line for line in ran.stderr.splitlines() if "waiting for S3" in line]
    assert len(waiting) >= 5 and all(" of at most 108 s)" in line for line in waiting), ran.stderr


def s3_client() -> Any:
    return boto3.client("s3", endpoint_url=lab.S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)  # fmt: skip


def overwritten_bucket(s3: Any, count: int) -> tuple[str, list[str], str]:
    """A new versioned bucket whose `count` keys were overwritten after the time returned:
    (bucket, keys, time); restoring the prefix to that time copies every key back."""
    name = f"rm-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    keys = [f"orders/{i:02d}.json" for i in range(count)]
    for key in keys:
        s3.put_object(Bucket=name, Key=key, Body=f"before {key}".encode())
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.02)  # S3 times have one-second resolution
    at = iso(dt.datetime.fromtimestamp(int(now) + 0.5, dt.UTC))
    for key in keys:
        s3.put_object(Bucket=name, Key=key, Body=f"after {key}".encode())
    return name, keys, at


def test_an_endpoint_that_hangs_mid_run_reports_what_was_restored_and_a_rerun_finishes(
    tmp_path: Path, stalling_proxy: tuple[str, type[Stalling]]
) -> None:
    endpoint, proxy = stalling_proxy
    s3 = s3_client()
    name, keys, at = overwritten_bucket(s3, 8)

    # the versioning (read once, in validate), one listing page, then 3 copies: then silence.
    proxy.answers = 2 + 3
    args = ("restore-s3-prefix", "--bucket", name, "--prefix", "orders/", "--at", at, "--workers", "1")
    started = time.monotonic()
    ran = inv_s3(tmp_path, endpoint, *args, "--json", bounds=SMALL, timeout=2 * SMALL_BOUND + STARTUP + 15)
    took = time.monotonic() - started
    assert ran.code == 1, ran.stdout + ran.stderr
    [host] = ran.json()["hosts"]
    step = host["steps"][-1]
    assert step["step"] == "restore" and step["status"] == "failed", step
    message = step["message"]
    assert message.startswith(f"stopped: S3 endpoint {endpoint} did not answer within "), message
    assert "(CopyObject of orders/03.json: 2 attempt(s)" in message
    assert "nothing more was sent; restored 3 key(s) before that: orders/00.json, orders/01.json, " \
           "orders/02.json; 1 request(s) had no answer" in message  # fmt: skip
    assert "4 key(s) not sent; run again to finish" in message
    assert step["data"]["restored_keys"] == keys[:3]
    assert step["data"]["unanswered_keys"] == keys[3:4]
    assert proxy.held == SMALL["s3_max_attempts"]  # the silent request's attempts, and nothing after them
    assert took < 2 * SMALL_BOUND + STARTUP
    for key in keys[:3]:
        assert s3.get_object(Bucket=name, Key=key)["Body"].read() == f"before {key}".encode()
    for key in keys[4:]:
        assert s3.get_object(Bucket=name, Key=key)["Body"].read() == f"after {key}".encode()

    again = inv_s3(tmp_path, lab.S3_ENDPOINT, *args, "--json", bounds=SMALL)
    assert again.code == 0, again.stdout + again.stderr
    [host] = again.json()["hosts"]
    assert host["status"] == "changed", json.dumps(host)
    for key in keys:
        assert s3.get_object(Bucket=name, Key=key)["Body"].read() == f"before {key}".encode()
    third = inv_s3(tmp_path, lab.S3_ENDPOINT, *args, bounds=SMALL)
    assert third.code == 0 and "nothing to do" in third.stdout, third.stdout


@pytest.mark.parametrize("kill", [False, True], ids=["sigint", "sigkill"])
def test_sigint_stops_a_prefix_restore_after_the_copies_in_flight(
    tmp_path: Path, stalling_proxy: tuple[str, type[Stalling]], kill: bool
) -> None:
    """Ctrl-C during a slow prefix restore: the copy in flight ends, no new one is sent, the result
    lists what was restored, exit 130; a re-run finishes. SIGKILL: nothing can be said then, but
    the audit log already has the run's "started" record."""
    import os
    import signal
    import subprocess
    import sys

    endpoint, proxy = stalling_proxy
    s3 = s3_client()
    name, keys, at = overwritten_bucket(s3, 12)
    proxy.answers, proxy.delay = 10_000, 0.5

    def restored() -> list[str]:
        return [k for k in keys if s3.get_object(Bucket=name, Key=k)["Body"].read().startswith(b"before")]

    args = ("restore-s3-prefix", "--bucket", name, "--prefix", "orders/", "--at", at, "--workers", "1")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "NO_COLOR": "1",
           "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "audit.jsonl")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", *args, "--json", "--inventory", str(inventory(tmp_path, **SMALL))],
        cwd=Path(__file__).resolve().parents[3], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(restored()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the restore never got going"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if kill:
        [record] = [r for r in audit_lines(tmp_path / "audit.jsonl") if r["host"] is not None]
        assert (record["step"], record["status"], record["task"]) == ("start", "started", "restore-s3-prefix")
        return
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    [host] = json.loads(out)["hosts"]
    message = host["steps"][-1]["message"]
    assert message.startswith("stopped: interrupted by SIGINT"), message
    done = restored()
    assert 2 <= len(done) < len(keys), "the run neither stopped nor restored"
    assert sorted(host["steps"][-1]["data"]["restored_keys"]) == done  # says exactly what it did

    again = inv_s3(tmp_path, lab.S3_ENDPOINT, *args, bounds=SMALL)
    assert again.code == 0, again.stdout + again.stderr
    assert restored() == keys
