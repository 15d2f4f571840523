"""restore-db's own GET of the dump on the database host: the preflight's full read and the restore
are each fed by curl on the host (a presigned URL on its stdin, `actions.drill_fetch`), so the
dump's bytes cross neither the controller nor SSH; the whole object is counted and hashed on the
host (the CRC32 S3 keeps, else the ETag's MD5) and checked here. `restore_fetch: auto` (the default)
does this when the host has curl, and streams from the controller when the host gets none of the
dump; `host` fails then; `controller` always streams.
"""

from __future__ import annotations

from typing import Any

from remediations.actions import drill_fetch
from remediations.actions.pg_checks import stoppable, stream_into
from remediations.actions.s3client import Received
from remediations.core.context import HostContext
from remediations.core.errors import CommandResult, HostError
from remediations.facts.postgres import PgTarget, human_bytes
from remediations.postgres import restore_db_sql as sql
from remediations.postgres.restore_db_plan import Dump, Settings

URL_SECONDS = 120  # a presigned URL's life: the host's GET starts within it
TIMEOUT = 6 * 3600


def host_fetches(conf: Settings, server: sql.Server) -> bool:
    return conf.fetch == "host" or (conf.fetch == "auto" and "curl" in server.tools)


def hasher(dump: Dump, server: sql.Server) -> str:
    return drill_fetch.choose_hash(dump.etag, dump.checksums, dump.checksum_type, "python3" in server.tools)


def watched(ctx: HostContext) -> bool:
    """The remote feeds stdin as it goes (SSH, local): a stop request can end the host's fetch."""
    return hasattr(ctx.remote, "run_stream")


def _run(
    ctx: HostContext, store: Any, bucket: str, dump: Dump, command: str, hashing: str
) -> tuple[CommandResult, drill_fetch.Fetched]:
    """`command` (a `stream_body` script, watched when the remote allows) with the presigned GET's
    config on its stdin, then the keepalive that lets a stop request end it."""
    with store.failing(f"presigning a GET of s3://{bucket}/{dump.key}"):
        url = drill_fetch.presigned_get(store, bucket, dump.key, URL_SECONDS, checksum=hashing == "crc32")
    ctx.redactor.add_value(url)
    ctx.redactor.add_value(url.partition("Signature=")[2].partition("&")[0])
    config = drill_fetch.curl_config(url, checksum=hashing == "crc32")
    if watched(ctx):
        result = ctx.remote.run_stream(command, drill_fetch.keepalive(config), timeout=TIMEOUT)  # type: ignore[attr-defined]
    else:
        result = ctx.remote.run(command, stdin=config, timeout=TIMEOUT)
    return result, drill_fetch.parse(result.stdout)


def _not_fetched(conf: Settings, got: drill_fetch.Fetched, result: CommandResult) -> str:
    """Why the host got none of the dump (auto streams instead); `host` fails here."""
    why = drill_fetch.why_not(got, result.tail(1))
    if conf.fetch == "host":
        raise HostError(f"the database host could not fetch the dump: {why}", result)
    return why


def host_read(
    ctx: HostContext, store: Any, pg: PgTarget, conf: Settings, dump: Dump, server: sql.Server
) -> tuple[sql.DumpRead | None, str]:
    """(what the host's pg_restore made of the whole dump, what the object was checked against);
    (None, why) when the host got none of it."""
    hashing = hasher(dump, server)
    command = sql.host_read_command(pg, hashing, watched(ctx))
    result, got = _run(ctx, store, conf.bucket, dump, command, hashing)
    if drill_fetch.not_fetched(got):
        return None, _not_fetched(conf, got, result)
    problem, checked = drill_fetch.verdict(got, f"s3://{conf.bucket}/{dump.key}", hashing)
    read = sql.parse_dump_read(result.stdout, result.stderr)
    if problem:
        return sql.DumpRead(False, problem, read.dumped_from, read.dumped_by, read.entries), checked
    return read, checked


def restore(
    ctx: HostContext, store: Any, pg: PgTarget, conf: Settings, dump: Dump, server: sql.Server,
    new: str, single: bool,
) -> tuple[int, str] | str:  # fmt: skip
    """The restore into `new`, fed by the host's GET: (bytes, what they were checked against), or
    why the host got none of it (nothing reached pg_restore: the caller may stream instead)."""
    hashing = hasher(dump, server)
    command = sql.host_restore_command(pg, new, single, hashing, watched(ctx))
    result, got = _run(ctx, store, conf.bucket, dump, command, hashing)
    if drill_fetch.not_fetched(got):
        return _not_fetched(conf, got, result)
    problem, checked = drill_fetch.verdict(got, f"s3://{conf.bucket}/{dump.key}", hashing)
    if problem or not result.ok:
        why = problem or f"exit {got.restore}: {result.tail(3)}"
        raise HostError(f"pg_restore into {new} failed ({why}); {conf.database} was not touched", result)
    return got.bytes, checked


def read_dump(
    ctx: HostContext, store: Any, pg: PgTarget, conf: Settings, dump: Dump, server: sql.Server
) -> tuple[sql.DumpRead, str, str]:
    """The preflight's full read: by the host's own GET when it may (`host_fetches`), else (or when
    the host got none of the dump) streamed from the controller. (the read, what the object was
    checked against, a note for the step's message)."""
    note = ""
    if host_fetches(conf, server):
        read, checked = host_read(ctx, store, pg, conf, dump, server)
        if read is not None:
            return read, checked, ""
        note = f" (the database host could not fetch it: {checked}; streamed)"
    got = Received()
    chunks = stoppable(store.stream(conf.bucket, dump.key, got))
    result = stream_into(ctx.remote, sql.read_command(pg), chunks, TIMEOUT)
    checked = "its MD5 matches the ETag" if got.md5_checked else "the size matches Content-Length"
    return sql.parse_dump_read(result.stdout, result.stderr), checked, note


def stream_restore(
    ctx: HostContext, store: Any, pg: PgTarget, conf: Settings, dump: Dump, new: str, single: bool
) -> str:
    """The dump streamed from S3 through the controller into pg_restore on the host."""
    got = Received()
    chunks = stoppable(store.stream(conf.bucket, dump.key, got))
    result = stream_into(ctx.remote, sql.restore_command(pg, new, single), chunks, TIMEOUT)
    if not result.ok:
        raise HostError(
            f"pg_restore into {new} failed (exit {result.exit_code}): {result.tail(3)}; "
            f"{conf.database} was not touched",
            result,
        )
    return f"streamed {human_bytes(got.received)} into {new}"
