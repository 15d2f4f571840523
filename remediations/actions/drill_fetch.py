"""The restore drill's host-side fetch: the restore host downloads the dump itself (curl, a presigned
GET URL) and pipes it into pg_restore, so the dump's bytes never cross the controller or SSH.

The URL is a credential for one object, short-lived (`expires` seconds: S3 checks it when the GET
starts, a long download goes on after it), and travels only on the command's stdin as curl's
config (`curl -K -`): never on a command line, in output or in the audit record. On the host the
bytes go curl → tee → pg_restore; tee also feeds the hasher (a FIFO in a private temporary
folder): zlib's CRC32 (python3) when S3 keeps the object's full CRC32, else `md5sum` when the ETag
is the MD5 (`choose_hash`); curl counts them, and when pg_restore stops early the rest is still
read, so the whole object is counted and hashed whatever pg_restore made of it. With jobs > 1
(`pg_restore -j`, which needs a file) the dump is downloaded whole into a folder of the database's
OS user, hashed on the way, checked, and only then restored; the file is removed at the end. The
script prints what it saw as `fetch-KEY VALUE` lines (curl's exit code, the HTTP status and
headers that matter, the byte count, the hash, pg_restore's exit code, the checks' answer);
`parse` reads them and `verdict` says what they mean.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from remediations.facts.postgres import PgTarget, script

CREATE_FAILED = 91  # the script's exit code when the scratch database could not be created
NO_TEMP = 90  # no private temporary folder on the host
HEADERS = ("etag", "content-length", "x-amz-server-side-encryption",
           "x-amz-server-side-encryption-customer-algorithm", "x-amz-checksum-crc32",
           "x-amz-checksum-type")  # fmt: skip


def presigned_get(store: Any, bucket: str, key: str, seconds: int, checksum: bool = False) -> str:
    """A SigV4 presigned GET of the object (boto3 presigns S3 with SigV2 for us-east-1 and custom
    endpoints, which buckets made since 2020 refuse), with the store's session (its credentials,
    loaded once), endpoint, region and bounds. With `checksum` the GET asks for the object's
    checksums (`x-amz-checksum-mode: ENABLED`, a signed header: `curl_config` sends it). Raises
    botocore's errors (the caller's `store.failing`)."""
    import boto3
    from botocore.config import Config

    session = getattr(store, "session", None) or boto3.session.Session(
        profile_name=store.profile, region_name=store.client.meta.region_name
    )
    signer = session.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name=store.client.meta.region_name,
        config=store.client.meta.config.merge(Config(signature_version="s3v4")),
    )
    params = {"Bucket": bucket, "Key": key, **({"ChecksumMode": "ENABLED"} if checksum else {})}
    url: str = signer.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)
    return url


def curl_config(url: str, checksum: bool = False) -> bytes:
    """curl's config text (`-K -`) naming the URL (the only place the URL goes) and, with
    `checksum`, the header the URL was signed with."""
    if any(c in url for c in '"\\\n\r'):
        raise ValueError("a presigned URL with a quote, backslash or line break")
    header = 'header = "x-amz-checksum-mode: ENABLED"\n' if checksum else "# no header\n"
    return f'url = "{url}"\n{header}'.encode()


def create_then(pg: PgTarget, create_sql: str, drop_sql: str, body: str) -> list[str]:
    """Shell lines: create the scratch database (exit CREATE_FAILED when that fails: it is not
    ours, nothing to drop), then `body`, which sets $failed; on failure the host itself drops the
    scratch database (the controller may be gone by then) and the script exits 1."""
    return [
        f"printf '%s' {shlex.quote(create_sql)} | {pg.psql()} >/dev/null || exit {CREATE_FAILED}",
        "echo fetch-created 1",
        body,
        f"if [ \"$failed\" != 0 ]; then printf '%s' {shlex.quote(drop_sql)} | {pg.psql()} >/dev/null 2>&1; "
        "exit 1; fi",
    ]


CRC32_PY = ("import sys,zlib,base64,functools as f;"
            "c=f.reduce(lambda c,b:zlib.crc32(b,c),iter(lambda:sys.stdin.buffer.read(1<<20),b''),0);"
            "print(base64.b64encode(c.to_bytes(4,'big')).decode())")  # fmt: skip
HASHERS = {"crc32": f"python3 -c {shlex.quote(CRC32_PY)}", "md5": "md5sum | cut -c1-32"}
# a dump spooled to a file for `pg_restore -j` needs its size free there, and this much more
SPOOL_MARGIN = 64 * 1024 * 1024
DEFAULT_JOBS = 1  # measured: see README, "How the dump gets to pg_restore"
DEFAULT_SPOOL = "/var/tmp"


def jobs_and_spool(host: Any, where: str) -> tuple[int, str]:
    """`restore_jobs` (1 streams; N > 1 spools the dump to a file for `pg_restore -j N`) and
    `restore_spool_dir`, validated (bad input names the var)."""
    from remediations.core.errors import UsageError

    jobs = host.get("restore_jobs", DEFAULT_JOBS)
    text = str(jobs)
    if isinstance(jobs, bool) or not text.isdigit() or not 1 <= int(text) <= 64:
        raise UsageError(f"{where}: restore_jobs {jobs!r} must be a whole number from 1 to 64")
    spool = str(host.get("restore_spool_dir") or DEFAULT_SPOOL)
    if not spool.startswith("/") or any(ord(c) < 32 for c in spool):
        raise UsageError(f"{where}: restore_spool_dir {spool!r} must be an absolute path")
    return int(text), spool


def checks_then_drop(pg: PgTarget, scratch: str, checks: str, drop_sql: str) -> str:
    """Shell text run by the restore's own command once pg_restore succeeded: the checks' query
    (its answer on a `fetch-checks` line), then, when it answered, the drop of the scratch
    database (`fetch-dropped 1`): no round trip or connection more for either. The controller
    evaluates the answer; when there is none it asks again and drops the database itself."""
    return (
        f"out=$(printf '%s' {shlex.quote(checks)} | {pg.psql(scratch)}) && echo \"fetch-checks $out\" && "
        f"printf '%s' {shlex.quote(drop_sql)} | {pg.psql()} >/dev/null && echo 'fetch-dropped 1'"
    )


def keepalive(config: bytes, tick: float = 0.1) -> Iterator[bytes]:
    """stdin for a watched fetch (`stream_body(watch=True)`, through the remote's `run_stream`):
    curl's config, then a line every `tick` seconds while the command runs (the remote ends the
    feed when the command exits); a stop request (SIGINT, SIGTERM) ends it with Interrupted: the
    channel closes, the host kills its curl, and pg_restore fails on the cut dump."""
    from remediations.core import interrupt
    from remediations.core.errors import Interrupted

    yield config
    while True:
        stopping = interrupt.requested()
        if stopping:
            raise Interrupted(f"interrupted by {stopping} while the host fetched the dump")
        time.sleep(tick)
        yield b"\n"


def choose_hash(etag: str, algorithms: Sequence[str], checksum_type: str, python: bool) -> str:
    """How the host checks the whole object: "crc32" when S3 holds the object's full CRC32 (the
    SDKs send one with every upload: the listing names the algorithm; a single-part object's, or
    one S3 calls FULL_OBJECT) and the host has python3 (zlib's CRC32: a quarter of md5sum's CPU);
    else "md5" when the ETag is one (a single-part upload; SSE-KMS/SSE-C objects are caught when
    the GET's headers come); else "" (the byte count only)."""
    single = bool(etag) and "-" not in etag
    full = checksum_type.upper() == "FULL_OBJECT" or (not checksum_type and single)
    if python and "CRC32" in {a.upper() for a in algorithms} and full:
        return "crc32"
    return "md5" if single and re.fullmatch(r"[0-9a-f]{32}", etag) else ""


def _curl(config: str = "-") -> str:
    # an endpoint the host cannot reach fails within 10 s (auto then streams); no stall limit: a
    # slow pg_restore may leave curl waiting on the pipe for as long as it takes
    return (f"curl -sS --fail --connect-timeout 10 -K {config} -D \"$d/h\" -o - "
            "-w '%{stderr}fetch-bytes %{size_download}\\n' 2>\"$d/err\"")  # fmt: skip


CONFIG_LINES = 2  # `curl_config` writes exactly this many lines (the URL, the header or a comment)


def _watched_curl() -> tuple[list[str], str]:
    """(lines before the pipeline, its curl stage) for a fetch the controller can stop: curl's
    config is the first CONFIG_LINES lines on stdin (read into shell variables, handed to curl
    through a FIFO: never on a command line or on disk); the rest of stdin is the controller's
    keepalive, and when it ends (the controller stopped the run, or its connection is gone)
    before the fetch did, curl is killed: pg_restore reads a cut dump and fails."""
    before = [
        f'IFS= read -r c1 && IFS= read -r c2 && mkfifo "$d/k" || exit {NO_TEMP}',
        # an asynchronous list reads /dev/null unless told otherwise: the keepalive comes on fd 3
        "exec 3<&0",
        '( while IFS= read -r _; do :; done; [ -f "$d/end" ] || { : > "$d/stopped"; '
        'kill "$(cat "$d/cpid" 2>/dev/null)"; } ) <&3 >/dev/null 2>&1 &',
        "w=$!",
    ]
    stage = (
        f'{{ printf \'%s\\n%s\\n\' "$c1" "$c2" > "$d/k" & {_curl(chr(34) + "$d/k" + chr(34))} & '
        'echo $! > "$d/cpid"; wait $!; echo $? > "$d/curl"; }'
    )
    return before, stage


def _report() -> list[str]:
    """What the script saw, as fetch-KEY lines (the caller's `parse` reads them)."""
    return [
        'echo "fetch-curl $(cat "$d/curl")"; echo "fetch-restore $(cat "$d/restore" 2>/dev/null)"',
        'grep "^fetch-bytes " "$d/err"; [ -f "$d/sum" ] && echo "fetch-sum $(cat "$d/sum")"',
        'echo "fetch-status $(head -n 1 "$d/h" | tr -d \'\\r\')"',
        f"grep -i -E '^({'|'.join(HEADERS)}):' \"$d/h\" | tr -d '\\r' | sed 's/^/fetch-header /'",
        'grep -v "^fetch-bytes " "$d/err" | tail -c 2000 >&2',
        'failed=0; [ "$(cat "$d/restore" 2>/dev/null)" = 0 ] && [ "$(cat "$d/curl")" = 0 ] || failed=1',
    ]


def _hashing(hasher: str) -> tuple[list[str], str]:
    """(lines that start the hasher on a FIFO, the pipeline's tee stage) for `hasher`."""
    if not hasher:
        return [], ""
    fifo = f'mkfifo "$d/m" || exit {NO_TEMP}'
    return [fifo, f'{{ {HASHERS[hasher]}; }} < "$d/m" > "$d/sum" &'], 'tee "$d/m" | '


def stream_body(consumer: str, hasher: str, to_stdout: bool = False, watch: bool = False) -> list[str]:
    """Shell lines: curl (its config on stdin) → [tee → the hasher] → `consumer` (which reads
    stdin; when it stops early the rest is still read, so the whole object is counted and hashed;
    its output goes to stderr, or with `to_stdout` to stdout); then the fetch-KEY lines; sets
    $failed. With `watch`, the controller can stop it (`_watched_curl`, `keepalive`)."""
    start, tee = _hashing(hasher)
    out = "" if to_stdout else " >&2"
    before, curl = _watched_curl() if watch else ([], f'{{ {_curl()}; echo $? > "$d/curl"; }}')
    return [
        f"d=$(mktemp -d /tmp/restore-test.XXXXXX) || exit {NO_TEMP}",
        "trap 'rm -rf \"$d\"' EXIT",
        *before,
        *start,
        f'{curl} | {tee}{{ {consumer}{out}; echo $? > "$d/restore"; cat > /dev/null; }}',
        *([': > "$d/end"; kill "$w" 2>/dev/null'] if watch else []),
        "wait",
        *(['[ -f "$d/stopped" ] && echo "fetch-stopped 1"'] if watch else []),
        *_report(),
    ]


def _expected(hasher: str) -> str:
    """Shell text: the value the hasher's output must equal, from the GET's headers."""
    name = "x-amz-checksum-crc32" if hasher == "crc32" else "etag"
    return f"$(grep -i '^{name}:' \"$d/h\" | cut -d: -f2- | tr -d ' \"\\r')"


def spool_body(pg: PgTarget, restore_file: str, hasher: str, spool: str) -> list[str]:
    """Shell lines: the dump downloaded whole to a file in a folder of the database's OS user
    under `spool` (hashed on the way), checked (curl's byte count, the hash against the header),
    and only then `restore_file` run (shell text reading "$f/dump", e.g. pg_restore -j N); the
    file is removed at the end. When `spool` lacks the room, the dump streams instead
    (fetch-mode says which)."""
    user = shlex.quote(pg.os_user)
    start, tee = _hashing(hasher)
    check = f'[ "$(cat "$d/sum")" = "{_expected(hasher)}" ]' if hasher else "true"
    return [
        f"d=$(mktemp -d /tmp/restore-test.XXXXXX) || exit {NO_TEMP}",
        f"f=$(as_user {user} mktemp -d {shlex.quote(spool.rstrip('/') + '/restore-test.XXXXXX')}) "
        f"|| exit {NO_TEMP}",
        f'trap \'rm -rf "$d"; as_user {user} rm -rf "$f"\' EXIT',
        *start,
        f'{{ {_curl()}; echo $? > "$d/curl"; }} | {tee}as_user {user} sh -c \'cat > "$1/dump"\' sh "$f"',
        "wait",
        f'if [ "$(cat "$d/curl")" = 0 ] && {check}; then',
        f'  {{ {restore_file} >&2; echo $? > "$d/restore"; }}',
        "fi",
        *_report(),
    ]


def spool_fits(spool: str, size: int) -> str:
    """Shell condition: `spool` has room for a dump of `size` bytes (and the margin)."""
    need = size + SPOOL_MARGIN
    return (f"[ \"$(df -P -B1 -- {shlex.quote(spool)} 2>/dev/null | awk 'NR == 2 {{ print $4 }}')\" "
            f"-gt {need} ] 2>/dev/null")  # fmt: skip


def fetch_script(pg: PgTarget, scratch: str, create_sql: str, drop_sql: str, hasher: str = "md5",
                 jobs: int = 1, size: int = 0, spool: str = "/var/tmp", after: str = "") -> str:  # fmt: skip
    """The host's whole restore: create, fetch | pg_restore (hashing every byte), or with
    jobs > 1 fetch to a file, check it, `pg_restore -j jobs` (streaming when the spool has no
    room); report; then `after` (shell text run once the restore succeeded: the checks)."""
    options = ["--exit-on-error", "--no-owner", "--no-acl", "-d", scratch]
    streamed = stream_body(pg.shell("pg_restore", *options), hasher)
    if jobs > 1:
        restore_file = pg.shell("pg_restore", *options, "-j", str(jobs)) + ' "$f/dump"'
        spooled = spool_body(pg, restore_file, hasher, spool)
        body = "\n".join([
            f"if {spool_fits(spool, size)}; then echo 'fetch-mode file'",
            *spooled,
            f"else echo 'fetch-mode stream (too little room in {shlex.quote(spool)})'",
            *streamed,
            "fi",
        ])  # fmt: skip
    else:
        body = "\n".join(["echo 'fetch-mode stream'", *streamed])
    lines = create_then(pg, create_sql, drop_sql, body)
    return script(*lines, *([after] if after else []))


@dataclass(frozen=True)
class Fetched:
    """What the host's fetch script reported."""

    created: bool = False
    curl: int = -1  # curl's exit code (127: no curl on the host)
    restore: int = -1  # pg_restore's exit code (-1: it did not run)
    bytes: int = 0
    sum: str = ""  # what the hasher made of the whole object (the MD5 in hex, the CRC32 in base64)
    status: str = ""  # the HTTP status line
    headers: Mapping[str, str] | None = None
    mode: str = ""  # "stream", "file", or "stream (too little room in …)"
    checks: str = ""  # the checks' JSON answer, when the script ran them
    dropped: bool = False  # the script dropped the scratch database after the checks

    @property
    def http_code(self) -> int:
        found = re.match(r"HTTP/\S+ (\d{3})", self.status)
        return int(found.group(1)) if found else 0

    def header(self, name: str) -> str:
        return (self.headers or {}).get(name, "")

    @property
    def expected(self) -> int:
        try:
            return int(self.header("content-length"))
        except ValueError:
            return -1

    @property
    def etag_md5(self) -> str:
        """The ETag when it is the content's MD5 (one PUT, no SSE-KMS/SSE-C), else ""."""
        etag = self.header("etag").strip('"')
        encrypted = self.header("x-amz-server-side-encryption") == "aws:kms" or self.header(
            "x-amz-server-side-encryption-customer-algorithm"
        )
        return etag if not encrypted and re.fullmatch(r"[0-9a-f]{32}", etag) else ""

    @property
    def crc32(self) -> str:
        """The object's full CRC32 (base64) as S3 keeps it, else "" (none, or a composite one)."""
        value = self.header("x-amz-checksum-crc32")
        composite = "-" in value or self.header("x-amz-checksum-type").upper() == "COMPOSITE"
        return "" if composite else value

    def want(self, hasher: str) -> str:
        """What the hasher's answer must be ("" when S3 gave nothing to compare with)."""
        return {"crc32": self.crc32, "md5": self.etag_md5}.get(hasher, "")


def parse(stdout: str) -> Fetched:
    values: dict[str, str] = {}
    headers: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "fetch-header":
            name, _, text = value.partition(":")
            headers[name.strip().lower()] = text.strip()
        elif key.startswith("fetch-"):
            values[key.removeprefix("fetch-")] = value.strip()

    def number(name: str) -> int:
        text = values.get(name, "")
        return int(text) if text.isdigit() else -1

    return Fetched(
        created=values.get("created") == "1",
        curl=number("curl"),
        restore=number("restore"),
        bytes=max(number("bytes"), 0),
        sum=values.get("sum", ""),
        status=values.get("status", ""),
        headers=headers,
        mode=values.get("mode", ""),
        checks=values.get("checks", ""),
        dropped=values.get("dropped") == "1",
    )


def not_fetched(got: Fetched) -> bool:
    """The host got none of the dump (no curl, the endpoint unreachable, the URL refused or
    expired): nothing reached pg_restore, so streaming from the controller instead is safe."""
    return got.curl != 0 and got.bytes == 0


def why_not(got: Fetched, stderr_tail: str) -> str:
    if got.curl == 127:
        return "no curl on the restore host"
    if got.http_code:
        return f"S3 answered the host's GET with {got.status.partition(' ')[2]}"
    return f"curl exit {got.curl}: {stderr_tail}" if stderr_tail else f"curl exit {got.curl}"


NAMES = {"crc32": "CRC32", "md5": "MD5"}
AGAINST = {"crc32": "S3's x-amz-checksum-crc32", "md5": "the ETag"}


def verdict(got: Fetched, where: str, hasher: str = "md5") -> tuple[str, str]:
    """(the problem, "" when none; what the whole object was checked against: "its CRC32 matches
    S3's x-amz-checksum-crc32", "its MD5 matches the ETag" or "the size matches Content-Length")
    for a fetch that ran."""
    if got.curl != 0:
        return (f"the restore host's download of {where} was cut after {got.bytes} of {got.expected} "
                f"bytes (curl exit {got.curl})"), ""  # fmt: skip
    if got.expected >= 0 and got.bytes != got.expected:
        return f"the restore host got {got.bytes} of {got.expected} bytes of {where}", ""
    want = got.want(hasher)
    if want and got.sum != want:
        return (
            f"{where}: the content's {NAMES[hasher]} {got.sum} is not {AGAINST[hasher]} {want}: "
            "the dump is corrupt",
            f"its {NAMES[hasher]} was checked",
        )
    if want:
        return "", f"its {NAMES[hasher]} matches {AGAINST[hasher]}"
    return "", "the size matches Content-Length"
