"""What restore-test and restore-db share: the check vars of a restored database, the choice of
a dump in S3, and the stream of a dump from S3 into a command on the host.

The checks: the tables of `restore_check_tables` exist with at least their minimum row counts, and
the newest value of `restore_freshness_column` (table.column) is within `backup_rpo_hours` of the
server's clock. The names are validated here by TABLE_RE / COLUMN_RE; the one query that answers
every check and its evaluation are in remediations/facts/drill.py.
"""



from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from remediations.core import interrupt
from remediations.core.errors import CommandResult, HostError, Interrupted, UsageError
from remediations.core.inventory import Host

TABLE_RE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")
COLUMN_RE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


def check_vars(host: Host) -> tuple[dict[str, int], str]:
    """(table → minimum rows, freshness column or "") from `restore_check_tables` and
    `restore_freshness_column`; bad input names the var."""
    where = f"{host.source}: host {host.name}"
    raw_tables = host.get("restore_check_tables") or {}
    if isinstance(raw_tables, list):
        raw_tables = {str(t): 0 for t in raw_tables}
    if not isinstance(raw_tables, Mapping):
        raise UsageError(f"{where}: restore_check_tables must map table names to minimum row counts")
    tables: dict[str, int] = {}
    for name, minimum in raw_tables.items():
        if not TABLE_RE.match(str(name)):
            raise UsageError(f"{where}: restore_check_tables: {name!r} is not a [schema.]table name")
        try:
            tables[str(name)] = int(minimum or 0)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: restore_check_tables: {name}: give a row count") from None
    freshness = str(host.get("restore_freshness_column") or "")
    if freshness and not COLUMN_RE.match(freshness):
        raise UsageError(f"{where}: restore_freshness_column {freshness!r} must be [schema.]table.column")
    return tables, freshness


# --------------------------------------------------------------------------------------------
# The dump in S3, and its stream into a command on the host
# --------------------------------------------------------------------------------------------


def choose_dump(objects: Sequence[Any], prefix: str, wanted: str | None, where: str) -> Any:
    """The S3 object (key, size, modified) to restore: the one `wanted` names (a key, or a name under
    `prefix`), else the newest; HostError naming `where` when there is none."""
    files = [o for o in objects if not o.key.endswith("/")]
    if wanted:
        names = {wanted, prefix + wanted}
        named = [o for o in files if o.key in names]
        if not named:
            raise HostError(f"no dump {wanted!r} under {where}")
        return named[0]
    if not files:
        raise HostError(f"no dump under {where}")
    return max(files, key=lambda o: (o.modified, o.key))


def stoppable(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, ended by a stop request (SIGINT, SIGTERM) with Interrupted: the stream is closed
    there, and the command on the host reads a cut input (pg_restore fails on it) rather than the
    whole dump."""
    try:
        for chunk in chunks:
            stopping = interrupt.requested()
            if stopping:
                raise Interrupted(f"interrupted by {stopping} while the dump was streaming")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def stream_into(remote: Any, command: str, chunks: Iterator[bytes], timeout: float) -> CommandResult:
    """Run `command` with `chunks` on its stdin as they come (`run_stream` of the SSH and local
    remotes); any other Remote gets them joined, through `run`'s stdin. The GET ends here, however
    the command did."""
    try:
        if hasattr(remote, "run_stream"):
            return remote.run_stream(command, chunks, timeout=timeout)  # type: ignore[no-any-return]
        return remote.run(command, stdin=b"".join(chunks), timeout=timeout)  # type: ignore[no-any-return]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
