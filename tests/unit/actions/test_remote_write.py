"""The checked writer (remote_write) run by a real sh on the controller: whole or not at all."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from remediations.actions import remote_write
from remediations.actions.remote_write import INCOMPLETE, NO_DIGEST, STEP_FAILED, Write
from remediations.core.errors import CommandResult, HostError
from remediations.core.inventory import Host
from remediations.core.remote import TIMED_OUT, LocalRemote

OLD = b"A=1\nSECRET=old\n"
NEW = b"A=2\nSECRET=new\n" + b"# padding\n" * 5000


def run(job: Write, stdin: bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", job.command()], input=stdin, capture_output=True, env=env, check=False)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "host").mkdir()
    path = tmp_path / "host" / ".env"
    path.write_bytes(OLD)
    path.chmod(0o640)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".env")


def test_a_whole_stream_replaces_the_file_and_keeps_its_mode_and_the_backup(target: Path) -> None:
    backup = target.with_name(".env.bak")
    done = run(Write(str(target), NEW, backup=str(backup)), Write(str(target), NEW).stdin)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == NEW
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # "" keeps the target's mode
    assert backup.read_bytes() == OLD
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640  # cp -p
    assert leftovers(target.parent) == [".env.bak"]


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("half the content", lambda s: s[: len(s) // 2]),
        ("all but the last byte", lambda s: s[:-1]),
        ("the header only", lambda s: s[: s.index(b"\n") + 1]),
        ("part of the header", lambda s: s[:3]),
        ("nothing", lambda s: b""),
        ("one byte altered", lambda s: s[:-2] + bytes([s[-2] ^ 1]) + s[-1:]),
    ],
)
def test_a_cut_or_altered_stream_changes_nothing(target: Path, name: str, cut: object) -> None:
    backup = target.with_name(".env.bak")
    job = Write(str(target), NEW, mode="600", backup=str(backup), backup_mode="600")
    stdin = cut(job.stdin)  # type: ignore[operator]
    done = run(job, stdin)
    assert done.returncode == INCOMPLETE, (name, done.stderr)
    assert target.read_bytes() == OLD, name
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert leftovers(target.parent) == [], name  # no temp file, no backup of a write that did not happen
    assert f"{target} was not changed" in done.stderr.decode()


def test_the_message_says_how_much_arrived(target: Path) -> None:
    job = Write(str(target), NEW)
    done = run(job, job.stdin[:1000])
    line = done.stderr.decode().strip()
    arrived = 1000 - len(job.header)
    assert line == (f"remediations-write: {target}: the stream was cut: {arrived} of {len(NEW)} bytes "
                    f"arrived; {target} was not changed")  # fmt: skip


def test_a_temp_file_left_by_a_killed_writer_is_replaced_by_the_next_write(target: Path) -> None:
    stale = target.with_name(".env" + remote_write.TEMP_SUFFIX)
    stale.write_bytes(b"half of someth")
    job = Write(str(target), NEW)
    assert run(job, job.stdin).returncode == 0
    assert target.read_bytes() == NEW
    assert leftovers(target.parent) == []


def test_a_new_file_is_0600_and_its_folder_is_made(tmp_path: Path) -> None:
    path = tmp_path / "state" / "records.json"
    job = Write(str(path), b"[]\n", make_dir=True)
    assert run(job, job.stdin).returncode == 0
    assert path.read_bytes() == b"[]\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_backup_with_its_own_mode_is_never_wider(target: Path) -> None:
    target.chmod(0o644)
    backup = target.with_name(".env.bak")
    job = Write(str(target), NEW, mode="600", backup=str(backup), backup_mode="600")
    assert run(job, job.stdin).returncode == 0
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert backup.read_bytes() == OLD
    script = remote_write.SCRIPT
    assert script.index("umask 077") < script.index('cp -- "$path" "$backup"')  # created 0600 at once


def tools_without(tmp_path: Path, *missing: str) -> dict[str, str]:
    """A PATH of links to the real tools the script uses, less `missing`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("sh", "cat", "cut", "awk", "head", "wc", "tr", "rm", "mkdir", "dirname", "stat",
                 "chmod", "chown", "cp", "touch", "sync", "mv", "sha256sum", "openssl"):  # fmt: skip
        real = shutil.which(tool)
        if real and tool not in missing:
            os.symlink(real, folder / tool)
    return {"PATH": str(folder)}


def test_openssl_checks_the_content_when_sha256sum_is_missing(target: Path, tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("no openssl here")
    env = tools_without(tmp_path, "sha256sum")
    job = Write(str(target), NEW)
    assert run(job, job.stdin[:-1], env).returncode == INCOMPLETE
    assert target.read_bytes() == OLD
    assert run(job, job.stdin, env).returncode == 0
    assert target.read_bytes() == NEW


def test_no_checksum_tool_refuses_and_changes_nothing(target: Path, tmp_path: Path) -> None:
    env = tools_without(tmp_path, "sha256sum", "openssl")
    job = Write(str(target), NEW)
    done = run(job, job.stdin, env)
    assert done.returncode == NO_DIGEST
    assert "neither sha256sum nor openssl" in done.stderr.decode()
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_a_failing_step_removes_the_temp_file(target: Path) -> None:
    job = Write(str(target), NEW, owner="no-such-user-xyz:no-such-group")
    done = run(job, job.stdin)
    assert done.returncode == STEP_FAILED
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_write_raises_one_line_naming_the_file(target: Path) -> None:
    remote = LocalRemote(Host("ctl", {"ansible_connection": "local"}, (), "t.yml"))
    remote_write.write(remote, Write(str(target), NEW))
    assert target.read_bytes() == NEW
    with pytest.raises(HostError) as caught:
        remote_write.write(remote, Write(str(target), OLD, owner="no-such-user-xyz"))
    assert str(caught.value).startswith(f"writing {target} failed (exit {STEP_FAILED}): cannot give the temp")
    assert str(caught.value).endswith("; nothing was changed")
    assert target.read_bytes() == NEW


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (INCOMPLETE, "remediations-write: /f: the stream was cut: 3 of 9 bytes arrived; /f was not changed\n",
         "writing /f failed (exit 65): the stream was cut: 3 of 9 bytes arrived; nothing was changed"),
        (remote_write.INTERRUPTED, "", "writing /f was interrupted on the host; nothing was changed"),
        (TIMED_OUT, "timed out after 30s", "writing /f did not finish within 30s; the file is either the old "
         "one or the new one, never a part of it"),
        (127, "sh: not found", "writing /f failed (exit 127): sh: not found"),
    ],
)
def test_explain(code: int, stderr: str, expected: str) -> None:
    job = Write("/f", b"123456789")
    assert remote_write.explain(job, CommandResult("x", code, "", stderr)) == expected


def started(job: Write, stdin: bytes, tmp_path: Path) -> list[str]:
    """The programs the script starts (execve), traced with strace."""
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "sh", "-c", job.command()]
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    return sorted(line.split('"')[1].rsplit("/", 1)[-1] for line in lines)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_write_of_an_existing_file_starts_only_the_processes_it_needs(target: Path, tmp_path: Path) -> None:
    """Every process is about a millisecond of the host's CPU, on every host of a fan-out (block-ip
    writes its state file on each): no dirname, mkdir, rm, wc, tr, cut, a second stat, chown or chmod
    when there is nothing for them to do. Before: 18 processes for this write, now 8."""
    if sys.platform != "linux" or shutil.which("sha256sum") is None:
        pytest.skip("needs GNU coreutils on Linux")
    target.chmod(0o600)
    job = Write(str(target), NEW, make_dir=True)
    assert started(job, job.stdin, tmp_path) == sorted(
        ["sh", "sh", "head", "head", "sha256sum", "stat", "sync", "mv", "sync"]
    )  # the caller's sh, then the writer's
    assert target.read_bytes() == NEW
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file another owner")
def test_an_existing_files_owner_and_mode_are_kept(target: Path) -> None:
    os.chown(target, 1234, 2345)
    target.chmod(0o604)
    job = Write(str(target), NEW)
    assert run(job, job.stdin).returncode == 0
    assert target.read_bytes() == NEW
    assert (target.stat().st_uid, target.stat().st_gid) == (1234, 2345)
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert leftovers(target.parent) == []
