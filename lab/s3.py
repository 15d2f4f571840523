"""S3: a moto server on the controller side of the bridge."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.base import (
    _MOTO_LOG,
    _MOTO_MARKER,
    _MOTO_PID,
    BRIDGE_ADDRESS,
    S3_ENDPOINT,
    S3_PORT,
    LabError,
    _env,
    _file_tail,
)
from lab.procs import _alive, _read_marker, _stop_pids

# ---------------------------------------------------------------------------------------------
# S3 (moto on the controller side of the bridge)
# ---------------------------------------------------------------------------------------------


def _moto_pid() -> int | None:
    try:
        pid = int(_MOTO_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid) and _read_marker(pid) == _MOTO_MARKER:
        return pid
    return None


def _moto_answers() -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(S3_ENDPOINT + "/", timeout=1) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _moto_argv() -> list[str]:
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    base = [found] if found else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", BRIDGE_ADDRESS, "-p", str(S3_PORT)]


def _start_moto() -> None:
    """Start moto detached (no wait); ``_wait_moto`` waits for it."""
    if _moto_pid() is not None:
        return
    _MOTO_PID.unlink(missing_ok=True)
    script = 'echo $$ > "$1"; shift; exec "$@"'
    with _MOTO_LOG.open("ab") as out:
        subprocess.run(
            ["setsid", "-f", "sh", "-c", script, "sh", str(_MOTO_PID), *_moto_argv()],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(_MOTO_MARKER), cwd="/",
            check=True,
        )  # fmt: skip


def _wait_moto(timeout: float = 60) -> None:
    start = time.monotonic()
    while not _moto_answers():
        elapsed = time.monotonic() - start
        if elapsed > timeout or (elapsed > 2 and _moto_pid() is None):
            raise LabError(
                f"moto_server did not answer on {S3_ENDPOINT}; log {_MOTO_LOG}:\n"
                + _file_tail(_MOTO_LOG)
            )
        time.sleep(0.2)


def _stop_moto() -> None:
    pid = _moto_pid()
    if pid is not None:
        _stop_pids({pid}, signal.SIGTERM, 5)
    _MOTO_PID.unlink(missing_ok=True)
