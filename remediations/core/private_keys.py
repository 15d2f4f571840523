"""Private key files, each parsed once per version of it for the whole run.

Given a `key_filename`, paramiko parses the file on every connection, and once per key class it tries
until one fits (RSA, then ECDSA, then Ed25519): three parses per host for an Ed25519 key, a few
hundred microseconds of the controller's CPU each, under the GIL. Here a file is parsed once, the
same way and in the same order, and kept while it is unchanged (same inode, size and modification
time); each connection is handed the parsed key (`pkey`), which paramiko tries first, exactly where
it would have tried the file. What paramiko must still do itself is left to it, unchanged: a key that
needs a passphrase, a file it cannot read or parse (its own error then), a key with an OpenSSH
certificate beside it (`KEY-cert.pub`).
"""

from __future__ import annotations

import os
import threading

import paramiko

_lock = threading.Lock()
_parsed: dict[str, tuple[tuple[int, int, int], paramiko.PKey | None]] = {}
reads = 0  # how many times a file was parsed in this process (the tests count them)
CERT_SUFFIX = "-cert.pub"
KEY_CLASSES = (paramiko.RSAKey, paramiko.ECDSAKey, paramiko.Ed25519Key)  # paramiko's SSHClient order


def loaded(path: str) -> paramiko.PKey | None:
    """The key in `path`, parsed without a passphrase; None when paramiko must load it itself."""
    global reads
    if path.endswith(CERT_SUFFIX) or os.path.isfile(path + CERT_SUFFIX):
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    version = (info.st_ino, info.st_mtime_ns, info.st_size)
    with _lock:
        known = _parsed.get(path)
        if known is not None and known[0] == version:
            return known[1]
        reads += 1
        key = None
        for key_class in KEY_CLASSES:
            try:
                key = key_class.from_private_key_file(path, None)
                break
            except (paramiko.SSHException, OSError, ValueError):
                continue  # another class, or (none fits, a passphrase) paramiko's own attempt later
        _parsed[path] = (version, key)
        return key


def given(connect_kwargs: dict[str, object]) -> dict[str, object]:
    """`connect_kwargs` with its first key file handed over parsed (`pkey`), the others left as
    files after it: the order paramiko tries them in stays the same. Unchanged when a key or a
    passphrase is given already, or when the first file is one paramiko must load itself."""
    files = connect_kwargs.get("key_filename")
    if isinstance(files, str):
        files = [files]
    if not files or not isinstance(files, list) or connect_kwargs.get("pkey") is not None:
        return connect_kwargs
    if connect_kwargs.get("passphrase") or connect_kwargs.get("password"):
        return connect_kwargs
    key = loaded(os.path.expanduser(str(files[0])))
    if key is None:
        return connect_kwargs
    return {**connect_kwargs, "pkey": key, "key_filename": list(files[1:])}
