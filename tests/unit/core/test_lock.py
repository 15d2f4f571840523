"""The guard on what may still be sent to a host, and the host lock's lease, on the controller
itself (`ansible_connection: local`): the same shell, flock and heartbeat as over SSH, no lab."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediations.core import interrupt
from remediations.core.errors import ConnectionLost, DeadlineExceeded, Interrupted
from remediations.core.inventory import Host
from remediations.core.lock import HostLock
from remediations.core.remote import LocalRemote


@pytest.fixture
def remote() -> Iterator[LocalRemote]:
    interrupt.clear()
    yield LocalRemote(Host("local", {"ansible_connection": "local"}, (), "test"))
    interrupt.clear()


def lock_is_free(lock_dir: Path) -> bool:
    probe = subprocess.run(["flock", "-n", str(lock_dir / "remediations.lock"), "true"], check=False)
    return probe.returncode == 0


def test_a_command_is_cut_at_the_deadline_and_nothing_is_sent_after_it(
    remote: LocalRemote, tmp_path: Path
) -> None:
    remote.guard.set_deadline(1.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline on this host"):
        remote.run("sleep 10")
    assert time.monotonic() - started < 5
    marker = tmp_path / "sent"
    with pytest.raises(DeadlineExceeded):
        remote.run(f"touch {marker}")
    assert not marker.exists()


def test_a_command_within_the_deadline_keeps_its_own_timeout(remote: LocalRemote) -> None:
    remote.guard.set_deadline(60.0)
    result = remote.run("sleep 5", timeout=0.5)
    assert result.exit_code == 124 and "timed out" in result.stderr


def test_nothing_is_sent_once_the_run_was_told_to_stop(remote: LocalRemote, tmp_path: Path) -> None:
    interrupt.request("SIGTERM")
    marker = tmp_path / "sent"
    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        remote.run(f"touch {marker}")
    assert not marker.exists()


def test_nothing_is_sent_once_the_connection_was_lost(remote: LocalRemote, tmp_path: Path) -> None:
    remote.lose("the link went away")
    marker = tmp_path / "sent"
    with pytest.raises(ConnectionLost, match="the link went away"):
        remote.run(f"touch {marker}")
    assert not marker.exists()


def test_the_lease_holds_while_heartbeats_come_and_ends_when_they_stop(
    remote: LocalRemote, tmp_path: Path
) -> None:
    lock = HostLock(remote, "me", 5, str(tmp_path), release_after=2)
    lock.acquire()
    try:
        assert lock.heartbeat
        time.sleep(5)  # well past release_after: only the heartbeats keep it
        assert not lock_is_free(tmp_path)
        assert remote.guard.lost is None
        # The controller falls silent without closing anything, as a dead or cut-off one does.
        lock._stop.set()
        assert lock._beater is not None
        lock._beater.join(5)
        deadline = time.monotonic() + 6
        while not lock_is_free(tmp_path):
            assert time.monotonic() < deadline, "the host never released a silent controller's lock"
            time.sleep(0.2)
    finally:
        lock.release()


def test_the_controller_notices_a_lock_that_ended(remote: LocalRemote, tmp_path: Path) -> None:
    lock = HostLock(remote, "me", 5, str(tmp_path), release_after=4)
    lock.acquire()
    try:
        process = lock.process
        assert process is not None
        shell = process.proc.pid  # type: ignore[attr-defined]
        subprocess.run(["pkill", "-KILL", "-P", str(shell)], check=False)  # the lock's own shell dies

        deadline = time.monotonic() + 8
        while remote.guard.lost is None:
            assert time.monotonic() < deadline, "a dead lock went unnoticed"
            time.sleep(0.2)
        assert "lock" in remote.guard.lost
        with pytest.raises(ConnectionLost):
            remote.run("true")
    finally:
        lock.release()


def test_a_second_holder_waits_and_names_the_first(remote: LocalRemote, tmp_path: Path) -> None:
    from remediations.core.errors import LockTimeout

    first = HostLock(remote, "first-run", 5, str(tmp_path))
    first.acquire()
    try:
        other = LocalRemote(Host("local", {"ansible_connection": "local"}, (), "test"))
        with pytest.raises(LockTimeout, match="first-run"):
            HostLock(other, "second-run", 1, str(tmp_path)).acquire()
    finally:
        first.release()
    assert lock_is_free(tmp_path)
