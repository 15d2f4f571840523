"""The guard on what may still be sent to a host, and the host lock's lease, on the controller
itself (`ansible_connection: local`): the same shell, flock and heartbeat as over SSH, no lab."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediations.core import interrupt
from remediations.core.errors import ConnectionLost, DeadlineExceeded, Interrupted
from remediations.core.inventory import Host
from remediations.core.lock import HostLock
from remediations.core.remote import Lines, LocalProcess, LocalRemote


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


def test_release_does_not_wait_for_the_watchers_next_poll(remote: LocalRemote, tmp_path: Path) -> None:
    """The watcher of the heartbeat answers polls every half second; releasing used to wait for that
    poll (a quarter of a second per host on average, half a second at worst: at 200 hosts over 50
    workers the run's wall time paid it four times). Closing the lock shell's stdin first ends its
    output, which wakes the watcher at once."""
    took = []
    for _ in range(5):
        lock = HostLock(remote, "me", 5, str(tmp_path))
        lock.acquire()
        assert lock.heartbeat
        time.sleep(0.1)
        started = time.monotonic()
        lock.release()
        took.append(time.monotonic() - started)
        assert lock_is_free(tmp_path)
    assert sum(took) < 0.5, took  # the old order: about 1.25 s for five


def lock_argv(lock_dir: Path, release_after: int = 20) -> list[str]:
    from remediations.core.lock import LOCK_SCRIPT

    lock = str(lock_dir / "remediations.lock")
    return ["sh", "-c", LOCK_SCRIPT, "lock", lock, "5", "me", "echo facts", str(release_after)]


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH of links to the tools the lock shell may use, less `missing`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("sh", "bash", "mkdir", "flock", "cat", "timeout", "dd", "touch"):
        real = shutil.which(tool)
        if real and tool not in missing:
            (folder / tool).symlink_to(real)
    return str(folder)


def started(argv: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    trace = tmp_path / "trace"
    tracer = shutil.which("strace") or "strace"
    done = subprocess.run([tracer, "-f", "-qq", "-e", "trace=execve", "-o", str(trace), *argv],
                          input=b"", capture_output=True, check=True, env=env)  # fmt: skip
    lines = [line for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    return done.stdout, sorted(line.split('"')[1].rsplit("/", 1)[-1] for line in lines)


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@needs_strace
@needs_bash
def test_the_lock_shell_starts_only_flock_and_bash_for_the_lease(tmp_path: Path) -> None:
    """No dirname or mkdir when the lock's directory exists, no second shell for the facts, and the
    lease read by bash's timed `read`: no `timeout` and `dd` per heartbeat (two processes each time,
    about 2.5 ms of the host's CPU, every two seconds a run holds the lock)."""
    out, programs = started(lock_argv(tmp_path), tmp_path)
    assert b"facts" in out and b"HEARTBEAT" in out
    assert programs == ["bash", "flock", "sh"], programs


@needs_strace
def test_without_bash_the_lease_is_read_by_timeout_and_dd(tmp_path: Path) -> None:
    env = {"PATH": path_without(tmp_path, "bash")}
    out, programs = started(lock_argv(tmp_path), tmp_path, env)
    assert b"HEARTBEAT" in out
    assert programs == ["dd", "flock", "sh", "timeout"], programs


@needs_bash
def test_the_leases_bash_reads_no_startup_files(tmp_path: Path) -> None:
    """bash run by sshd reads ~/.bashrc (Debian's build), and any bash reads $BASH_ENV: neither for
    the lease (on the lab's hosts root's .bashrc runs `pyenv init`, 0.3 s of CPU)."""
    marker = tmp_path / "read"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f"touch {marker}\n")
    (tmp_path / "env.sh").write_text(f"touch {marker}\n")
    env = {"PATH": path_without(tmp_path), "HOME": str(home), "BASH_ENV": str(tmp_path / "env.sh"),
           "ENV": str(tmp_path / "env.sh"), "SSH_CLIENT": "198.18.0.1 50000 22", "SHLVL": "0"}  # fmt: skip
    done = subprocess.run(
        lock_argv(tmp_path), input=b"bb", capture_output=True, env=env, timeout=20, check=True
    )
    assert done.stdout.split(b"HEARTBEAT\n", 1)[1] == b"beat\nbeat\n"
    assert not marker.exists()


@pytest.mark.parametrize("bash", [True, False], ids=["bash", "timeout-and-dd"])
def test_the_host_holds_the_lease_while_heartbeats_come_and_releases_it_on_silence(
    tmp_path: Path, bash: bool
) -> None:
    if bash and shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {"PATH": path_without(tmp_path, *(() if bash else ("bash",)))}
    shell = subprocess.Popen(lock_argv(tmp_path, release_after=2), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)  # fmt: skip
    assert shell.stdin is not None and shell.stdout is not None
    try:
        for _ in range(8):  # 4 s, twice the lease: only the heartbeats keep it
            shell.stdin.write(b"b")
            shell.stdin.flush()
            time.sleep(0.5)
            assert not lock_is_free(tmp_path)
        started = time.monotonic()
        shell.wait(10)  # silent now, stdin still open: released within the lease
        assert 1.5 < time.monotonic() - started < 5
        assert lock_is_free(tmp_path)
        assert shell.stdout.read().count(b"beat\n") == 8
    finally:
        shell.kill()
        shell.wait()


def test_the_facts_under_the_lock_are_taken_in_whole_not_a_line_at_a_time(
    remote: LocalRemote, tmp_path: Path
) -> None:
    """A firewall's facts are hundreds of lines; reading them a line per call cost a millisecond of
    the controller's CPU per host. The text is the same as before, line for line."""
    then = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done; echo; echo last"
    calls: list[float] = []
    opened = remote.open_process

    def counting(command: str) -> LocalProcess:
        process = opened(command)
        readline = process.readline

        def counted(timeout: float) -> str | None:
            calls.append(timeout)
            return readline(timeout)

        process.readline = counted  # type: ignore[method-assign]
        return process

    remote.open_process = counting  # type: ignore[method-assign]
    with HostLock(remote, "me", 5, str(tmp_path), then=then) as lock:
        assert lock.output == "".join(f"line {i}\n" for i in range(3000)) + "\nlast\n"
        assert lock.heartbeat
    assert len(calls) <= 5, len(calls)  # LOCKED, the heartbeat mode, the watcher's: not 3,000 more
    assert lock_is_free(tmp_path)


def test_lines_taken_through_a_marker_leave_the_rest() -> None:
    lines = Lines()
    lines.feed(b"a\nb\n@@en")
    assert lines.take_through("@@end") is None
    lines.feed(b"d 0\nafter\npart")
    assert lines.take_through("@@end") == ["a", "b", "@@end 0"]
    assert lines.pop() == "after" and lines.pop() is None  # the partial last line stays back
    lines.feed(b"ial\n@@end 1\n")
    assert lines.take_through("@@end") == ["partial", "@@end 1"]
