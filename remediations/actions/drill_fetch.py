"""The restore drill's host-side fetch: the restore host downloads the dump itself (curl, a presigned
GET URL) and pipes it into pg_restore, so the dump's bytes never cross the controller or SSH.

The URL is a credential for one object, short-lived (`expires` seconds: S3 checks it when the GET
starts, a long download goes on after it), and travels only on the command's stdin as curl's
config (`curl -K -`): never on a command line, in output or in the audit record. On the host the
bytes go curl → tee → pg_restore; tee also feeds `md5sum` (a FIFO in a private temporary folder),
curl counts them, and when pg_restore stops early the rest is still read, so the whole object is
counted and hashed whatever pg_restore made of it. The script prints what it saw as
`fetch-KEY VALUE` lines (curl's exit code, the HTTP status and headers that matter, the byte count,
the MD5, pg_restore's exit code); `parse` reads them and `verdict` says what they mean.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remediations.facts.postgres import PgTarget, script

CREATE_FAILED = 91  # the script's exit code when the scratch database could not be created
NO_TEMP = 90  # no private temporary folder on the host
HEADERS = ("etag", "content-length", "x-amz-server-side-encryption",
           "x-amz-server-side-encryption-customer-algorithm")  # fmt: skip


def presigned_get(store: Any, bucket: str, key: str, seconds: int) -> str:
    """A SigV4 presigned GET of the object (boto3 presigns S3 with SigV2 for us-east-1 and custom
    endpoints, which buckets made since 2020 refuse), with the store's credentials chain,
    endpoint, region and bounds. Raises botocore's errors (the caller's `store.failing`)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=store.profile, region_name=store.client.meta.region_name)
    signer = session.client(
        "s3",
        endpoint_url=store.endpoint,
        config=store.client.meta.config.merge(Config(signature_version="s3v4")),
    )
    url: str = signer.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
    )
    return url


def curl_config(url: str) -> bytes:
    """curl's config text (`-K -`) naming the URL: the only place the URL goes."""
    if any(c in url for c in '"\\\n\r'):
        raise ValueError("a presigned URL with a quote, backslash or line break")
    return f'url = "{url}"\n'.encode()


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


def fetch_script(pg: PgTarget, scratch: str, create_sql: str, drop_sql: str) -> str:
    """The host's whole restore: create, fetch | pg_restore (hashing every byte), report."""
    restore = pg.shell("pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-d", scratch)
    # an endpoint the host cannot reach fails within 10 s (auto then streams); no stall limit: a
    # slow pg_restore may leave curl waiting on the pipe for as long as it takes
    curl = ("curl -sS --fail --connect-timeout 10 -K - -D \"$d/h\" -o - "
            "-w '%{stderr}fetch-bytes %{size_download}\\n'")  # fmt: skip
    body = "\n".join([
        f'd=$(mktemp -d /tmp/restore-test.XXXXXX) || exit {NO_TEMP}',
        "trap 'rm -rf \"$d\"' EXIT",
        f'mkfifo "$d/m" || exit {NO_TEMP}',
        'md5sum < "$d/m" > "$d/md5" &',
        f'{{ {curl} 2>"$d/err"; echo $? > "$d/curl"; }} | tee "$d/m" | '
        f'{{ {restore} >&2; echo $? > "$d/restore"; cat > /dev/null; }}',
        "wait",
        'echo "fetch-curl $(cat "$d/curl")"; echo "fetch-restore $(cat "$d/restore")"',
        'grep "^fetch-bytes " "$d/err"; echo "fetch-md5 $(cut -c1-32 "$d/md5")"',
        "echo \"fetch-status $(head -n 1 \"$d/h\" | tr -d '\\r')\"",
        f"grep -i -E '^({'|'.join(HEADERS)}):' \"$d/h\" | tr -d '\\r' | sed 's/^/fetch-header /'",
        'grep -v "^fetch-bytes " "$d/err" | tail -c 2000 >&2',
        'failed=0; [ "$(cat "$d/restore")" = 0 ] && [ "$(cat "$d/curl")" = 0 ] || failed=1',
    ])  # fmt: skip
    return script(*create_then(pg, create_sql, drop_sql, body))


@dataclass(frozen=True)
class Fetched:
    """What the host's fetch script reported."""

    created: bool = False
    curl: int = -1  # curl's exit code (127: no curl on the host)
    restore: int = -1  # pg_restore's exit code
    bytes: int = 0
    md5: str = ""
    status: str = ""  # the HTTP status line
    headers: Mapping[str, str] | None = None

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
        md5=values.get("md5", ""),
        status=values.get("status", ""),
        headers=headers,
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


def verdict(got: Fetched, where: str) -> tuple[str, bool]:
    """(the problem, "" when none; whether the content's MD5 was checked) for a fetch that ran."""
    if got.curl != 0:
        return (f"the restore host's download of {where} was cut after {got.bytes} of {got.expected} "
                f"bytes (curl exit {got.curl})"), False  # fmt: skip
    if got.expected >= 0 and got.bytes != got.expected:
        return f"the restore host got {got.bytes} of {got.expected} bytes of {where}", False
    if got.etag_md5 and got.md5 != got.etag_md5:
        return (
            f"{where}: the content's MD5 {got.md5} is not the ETag {got.etag_md5}: the dump is corrupt",
            True,
        )
    return "", bool(got.etag_md5)
