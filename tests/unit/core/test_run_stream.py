"""`run_stream` on the local remote: stdin fed from an iterator of chunks as they come, a real
process reading it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from remediations.core.inventory import Host
from remediations.core.remote import LocalRemote

MIB = 1024 * 1024


def local() -> LocalRemote:
    return LocalRemote(Host("here", {"ansible_connection": "local"}, (), "inv.yml"))


def chunks(count: int, fail_after: int | None = None) -> Iterator[bytes]:
    for n in range(count):
        if fail_after is not None and n == fail_after:
            raise RuntimeError("the source was cut")
        yield bytes([n % 251]) * MIB


def test_every_chunk_reaches_the_command_in_order() -> None:
    result = local().run_stream("wc -c; echo done >&2", chunks(40), timeout=60)
    assert result.ok and result.stdout.strip() == str(40 * MIB) and result.stderr.strip() == "done"
    digest = local().run_stream("md5sum", chunks(3), timeout=60)
    import hashlib

    assert digest.stdout.split()[0] == hashlib.md5(b"".join(chunks(3))).hexdigest()  # noqa: S324


def test_the_chunks_are_pulled_as_the_command_reads_them() -> None:
    """Never joined: a 10 GiB source feeding a command that reads 5 MiB and stops is pulled only
    a few chunks past what was read (the pipe's buffer), and nothing is held meanwhile."""
    pulled = 0

    def huge() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(10 * 1024):
            pulled += 1
            yield b"x" * MIB

    result = local().run_stream("head -c 5242880 | wc -c", huge(), timeout=60)
    assert result.ok and result.stdout.strip() == str(5 * MIB)
    assert pulled <= 5 + 4, pulled


def test_a_failing_source_kills_the_command_and_propagates() -> None:
    with pytest.raises(RuntimeError, match="cut"):
        local().run_stream("cat > /dev/null; echo finished", chunks(10, fail_after=3), timeout=60)


def test_a_command_that_stops_reading_early_gives_its_own_exit() -> None:
    result = local().run_stream("head -c 10 > /dev/null; exit 3", chunks(20), timeout=60)
    assert result.exit_code == 3


def test_a_command_past_its_timeout_is_killed() -> None:
    result = local().run_stream("sleep 30", iter([b"x"]), timeout=0.5)
    assert result.exit_code == 124 and "timed out" in result.stderr
