"""Start-up of an S3 task through the real front end: nothing of SSH is imported for a run that never
leaves the controller (paramiko, with Fabric's and tenacity's imports, was a fifth of a second of
every S3 run's start-up)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_startup import probe


class _EmptyBucket(BaseHTTPRequestHandler):
    """A versioned bucket with nothing under any prefix."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ns = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
        if "versioning" in self.path:
            body = f"<VersioningConfiguration {ns}><Status>Enabled</Status></VersioningConfiguration>"
        else:
            body = f"<ListVersionsResult {ns}><Name>media</Name><IsTruncated>false</IsTruncated>"
            body += "</ListVersionsResult>"
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyBucket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_s3_run_imports_no_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"controller": {"ansible_connection": "local"}}}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret-value-abcdef")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the loopback server, never AWS
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    argv = ("restore-s3-prefix", "--bucket", "media", "--prefix", "a/", "--at", "1h ago", "--inventory",
            str(inventory))  # fmt: skip
    done, seen = probe(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # through the engine: connected (locally), listed, ok
    assert "nothing to do" in done.stdout
    assert "boto3" in seen["heavy"] and "fabric" not in seen["heavy"]
    assert not seen["paramiko"]
