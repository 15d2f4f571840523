"""known_hosts files, each read once per version of it, and the keys they hold for one host.

A run over N hosts used to parse every known_hosts file once per host (paramiko builds a key object
for every line): O(N) work per host, O(N²) per run, the biggest cost per host on the controller at
200 hosts. Here a file is parsed once and kept while it is unchanged (same inode, size and
modification time: an `accept-new` append is read again), and each connection is given only the
keys recorded for its own name, as ssh names it (`host`, or `[host]:port` off port 22). A name
found in several files takes its key from the first file naming it, as before.
"""

from __future__ import annotations

import os
import threading

import paramiko

_lock = threading.Lock()
_parsed: dict[str, tuple[tuple[int, int, int], paramiko.HostKeys]] = {}
reads = 0  # how many times a file was parsed in this process (the tests count them)


def parsed(path: str) -> paramiko.HostKeys | None:
    """The keys of one known_hosts file (None when it does not exist); parsed again only when it
    changed. An unreadable file raises OSError, as paramiko's own loading does."""
    global reads
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    version = (info.st_ino, info.st_mtime_ns, info.st_size)
    with _lock:
        known = _parsed.get(path)
        if known is not None and known[0] == version:
            return known[1]
        keys = paramiko.HostKeys()
        keys.load(path)
        reads += 1
        _parsed[path] = (version, keys)
        return keys


def key_name(hostname: str, port: int | None) -> str:
    """The name a host's key is recorded under (what paramiko and ssh look up)."""
    return hostname if port in (None, 22) else f"[{hostname}]:{port}"


def trust(client: paramiko.SSHClient, files: list[str], hostname: str, port: int | None) -> int:
    """Give `client` the keys `files` hold for hostname:port (only those); how many it got. A host
    none of them names is left to the client's missing-key policy (refused, or accept-new)."""
    name = key_name(hostname, port)
    known = client.get_host_keys()
    given = 0
    for path in files:
        keys = parsed(path)
        found = keys.lookup(name) if keys is not None else None
        if found is None:
            continue
        for keytype in found:
            have = known.lookup(name)
            if have is None or keytype not in have:
                known.add(name, keytype, found[keytype])
                given += 1
    return given
