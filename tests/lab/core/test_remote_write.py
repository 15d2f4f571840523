"""Streamed writes on a real lab host (api1, over real SSH): a cut stream never installs a partial file.

The fault: `cat > tmp && mv tmp file` renamed whatever had arrived when the controller died
mid-stream (cat sees an early EOF and exits 0). Two ways to cut the stream here: SIGKILL the `inv`
process while a 24 MB env file is on its way, and a connection whose stdin stops halfway (what the
host sees when the controller dies), put under each writer of the package: env files, rotation
records, image records, firewall block records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from remediations.actions import firewall as fwactions
from remediations.actions import firewall_rules as fwrules
from remediations.actions import image_record as images
from remediations.actions import rotation
from remediations.core import connection, inventory
from remediations.core.errors import CommandResult, HostError
from remediations.core.inventory import Host
from remediations.facts import firewall as fwfacts
from tests import labkit
from tests.labkit import COMPOSE, ROOT, inv

pytestmark = pytest.mark.lab

HOST = "api1"
ENV = labkit.SHOP_ENV
# The host's /srv as the controller sees it: polled at a millisecond's pace to catch the temp file.
HOST_SHOP = lab.LAB_ROOT / "hosts" / HOST / "srv" / "shop"
BIG = 24 * 1024 * 1024


def lab_host(**extra: Any) -> Host:
    host = inventory.load(labkit.LAB_INVENTORY).hosts[HOST]
    return replace(host, vars={**host.vars, **extra})


class CutStream:
    """The SSH connection to the host, but every command's stdin stops halfway and then ends: what
    the host sees when the controller dies mid-stream. Everything else is the real connection."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote
        self.name = remote.name
        self.cut = 0

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        if stdin:
            self.cut += 1
            stdin = stdin[: len(stdin) // 2]
        return self.remote.run(command, stdin=stdin, timeout=timeout)


def sh(script: str, data: bytes | None = None) -> str:
    return lab.exec_on(HOST, ["sh", "-c", script], input=data, timeout=120).stdout.decode()


def temp_files(folder: str) -> list[str]:
    return sh(f"ls -A {folder} | grep -e remediations-tmp -e '\\.tmp$' || true").split()


@pytest.fixture
def scratch(lab: Any) -> Iterator[str]:
    """A state folder of the test's own on the host."""
    folder = f"/var/lib/remediations/test-write-{uuid.uuid4().hex[:8]}"
    sh(f"mkdir -p {folder}")
    yield folder
    sh(f"rm -rf {folder}")


@pytest.fixture
def remote(lab: Any) -> Iterator[Any]:
    remote = connection.connect(lab_host())
    yield remote
    remote.close()


# ------------------------------------------------------------------- the controller killed mid-stream


@pytest.fixture
def big_env(lab: Any) -> Iterator[bytes]:
    """The shop's .env with 24 MB of comments (compose ignores them): a write that takes a while."""
    labkit.reset_shop(HOST)
    line = b"# " + b"x" * 1021 + b"\n"
    text = labkit.BASELINE_ENV.encode() + line * (BIG // len(line))
    sh(f"cat > {ENV} && chmod 600 {ENV}", text)
    yield text
    labkit.reset_shop(HOST)


def test_set_env_killed_mid_stream_leaves_the_old_file_then_a_rerun_completes(
    big_env: bytes, audit: Path
) -> None:
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"}
    temp = HOST_SHOP / (".env" + ".remediations-tmp")
    args = ["set-env", "--host", HOST, "--service", "api", "--set", "MAINTENANCE_MODE=1",
            "--inventory", str(labkit.LAB_INVENTORY)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = temp.stat().st_size
            except FileNotFoundError:
                seen = 0
            if seen > 0:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert 0 < seen < len(big_env), f"the stream was not caught mid-way ({seen} bytes seen)"
    # The host notices the closed connection and cleans up: give it a moment.
    for _ in range(100):
        if not temp.exists():
            break
        time.sleep(0.1)
    assert sh(f"cat {ENV}").encode() == big_env, "the env file is not the old one byte for byte"
    assert temp_files("/srv/shop") == []
    assert sh(f"ls {ENV}.*.bak 2>/dev/null || true").strip() == ""  # no backup of a write that did not happen

    again = inv(*args[:-2], "--json", audit=audit, timeout=300)
    assert again.code == 0, again.stderr + again.stdout
    assert again.host(HOST)["status"] == "changed"
    after = sh(f"cat {ENV}").encode()
    assert after == big_env.replace(b"MAINTENANCE_MODE=0", b"MAINTENANCE_MODE=1", 1)
    ids = sh(f"cd /srv/shop && {' '.join(COMPOSE)} ps -q api").split()
    env = sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {ids[0]}")
    assert '"MAINTENANCE_MODE=1"' in env


# ------------------------------------------------------------------- a cut stream under every writer


def test_a_cut_env_file_stream_changes_nothing(remote: Any, scratch: str) -> None:
    from remediations.actions import remote_write  # the writer itself: new with the fix
    from remediations.actions.env_files import env_file_write

    path = f"{scratch}/.env"
    sh(f"printf 'A=1\\nB=2\\n' > {path} && chmod 640 {path} && chown 0:0 {path}")
    job = env_file_write(path, "A=1\nB=3\n" + "# pad\n" * 100_000, "0:0", "640", f"{path}.X.bak")
    cut = CutStream(remote)
    with pytest.raises(HostError) as caught:
        remote_write.write(cut, job)
    assert cut.cut == 1
    assert str(caught.value).startswith(f"writing {path} failed (exit 65): the stream was cut: ")
    assert str(caught.value).endswith("; nothing was changed")
    assert sh(f"cat {path}") == "A=1\nB=2\n"
    assert sh(f"ls -A {scratch}").split() == [".env"]  # no temp file, no backup
    remote_write.write(remote, job)  # whole: in place, with its backup
    assert sh(f"cat {path}").startswith("A=1\nB=3\n# pad\n")
    assert sh(f"stat -c %a {path}; cat {path}.X.bak") == "640\nA=1\nB=2\n"


def test_a_cut_rotation_record_stream_changes_nothing(remote: Any, scratch: str) -> None:
    host = lab_host(state_dir=scratch)
    first = rotation.Record("r1", "env", "API_TOKEN", "rotate-env-secret", "/srv/shop/.env",
                            ("API_TOKEN",), ("api",), "/srv/shop/.env.bak", "2024-01-01T00:00:00+00:00",
                            "", "pending")  # fmt: skip
    rotation.save_record(remote, host, first)
    before = sh(f"cat {rotation.record_path(host)}")
    with pytest.raises(HostError, match="nothing was changed"):
        rotation.save_record(CutStream(remote), host, replace(first, id="r2"))
    assert sh(f"cat {rotation.record_path(host)}") == before
    assert temp_files(scratch) == []


def test_a_cut_image_record_stream_changes_nothing(remote: Any, scratch: str) -> None:
    host = lab_host(state_dir=scratch)
    images.record(remote, host, "shop", "api", "restart-api", "sha256:" + "a" * 64, "sha256:" + "b" * 64, "x")
    before = sh(f"cat {images.state_path(host)}")
    with pytest.raises(HostError, match="nothing was changed"):
        images.record(CutStream(remote), host, "shop", "api", "restart-api", "sha256:" + "b" * 64,
                      "sha256:" + "c" * 64, "y")  # fmt: skip
    assert sh(f"cat {images.state_path(host)}") == before
    assert temp_files(scratch) == []


def test_a_cut_firewall_record_stream_changes_nothing(remote: Any, scratch: str) -> None:
    state = fwfacts.StatePath(scratch)
    records = fwfacts.parse_state(
        '{"version": 1, "blocks": [{"ip": "203.0.113.7", "port": null, "proto": null, "comment": "t", '
        '"created": 1, "ttl": null, "expires": null}]}'
    )
    fwactions.apply(remote, fwrules.FirewallPlan(state=records), state)
    before = sh(f"cat {state.file}")
    more = records + fwfacts.parse_state(
        '{"version": 1, "blocks": [{"ip": "203.0.113.8", "port": null, "proto": null, "comment": "u", '
        '"created": 2, "ttl": null, "expires": null}]}'
    )
    with pytest.raises(HostError, match="was not changed"):
        fwactions.apply(CutStream(remote), fwrules.FirewallPlan(state=more), state)
    assert sh(f"cat {state.file}") == before
    assert temp_files(scratch) == []
