"""known_hosts files parsed once per run, not once per host.

paramiko's `load_system_host_keys` parses a whole file, building a key object for every line, on
every connection: a run over N hosts sharing one N-line known_hosts file did N² of that work, under
the GIL (at 1,000 hosts, minutes of one core with every worker thread waiting). The parsed keys are
kept per file and reused while the file's size and modification time stay the same, so a key added
by `accept-new` (which appends to the file) is seen by the next connection.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

_lock = threading.Lock()
_parsed: dict[tuple[tuple[str, int, int], ...], paramiko.HostKeys] = {}


def _stamp(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size)


def host_keys(paths: list[str]) -> paramiko.HostKeys:
    """The keys of the existing files among `paths`, in order, as `load_system_host_keys` would
    load them one after the other. Shared between connections: read it, never change it."""
    import paramiko

    stamps = tuple(s for s in (_stamp(p) for p in paths) if s is not None)
    with _lock:
        keys = _parsed.get(stamps)
        if keys is None:
            keys = paramiko.HostKeys()
            for path, _, _ in stamps:
                keys.load(path)
            if len(_parsed) > 16:  # files that keep changing: keep only the newest few
                _parsed.clear()
            _parsed[stamps] = keys
        return keys
