"""Base backups in S3, moved by the db host (or the restore host) itself with curl: shell text, every
value quoted, and how its answers read.

A backup in S3 is a folder `PREFIX/STAMP/`: its tar in parts (`base.tar.00000`, … of
`basebackup_s3_part_size` bytes each, one PUT per part, so each part's ETag is its MD5), its
`backup_manifest`, and last the marker `backup.json` (the parts with their sizes and MD5s, the start
LSN and timeline). A folder without the marker is an upload that did not finish: never restored.

The requests are signed by curl (`--aws-sigv4`) with the key in a curl config file on the host
(`pitr_s3_credentials_file`, `user = "KEY:SECRET"`, mode 0600): never on a command line. The
scripts run as the database's OS user, who owns that file. Parts are staged one at a time on the
host (beside the backup for an upload, beside the restore for a fetch), never on the controller.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence

from remediations.actions.pitr_host import S3Source
from remediations.facts.pitr import Part

MARKER = "backup.json"
MANIFEST = "backup_manifest"
MARKER_FORMAT = 1
MIB = 1024 * 1024
PART_RE = re.compile(r"^@@part (\S+) (\d+) ([0-9a-f]{32}) (\S+)$")


def _curl(source: S3Source) -> str:
    """curl with the credentials file and SigV4 (the URL and the transfer options follow)."""
    sign = shlex.quote(f"aws:amz:{source.region}:s3")
    return f"curl -fsS -K {shlex.quote(source.credentials_file)} --aws-sigv4 {sign} --connect-timeout 10"


def _as(user: str, body: str) -> str:
    return f"as_user {shlex.quote(user)} sh -c {shlex.quote(body)}"


def upload_script(user: str, folder: str, tar: str, source: S3Source, stamp: str, part_size: int) -> str:
    """Upload FOLDER/TAR in parts of `part_size` bytes (a whole number of MiB) and FOLDER's
    backup_manifest under URL/STAMP/; one `@@part NAME SIZE MD5 ETAG` line for each."""
    q = shlex.quote
    url = f"{source.url}{stamp}/"
    body = "\n".join(
        [
            "set -eu",
            f"folder={q(folder)}; tar={q(tar)}; url={q(url)}; n={part_size // MIB}",
            f'd=$(mktemp -d "$(dirname -- "$folder")/.upload-{stamp}.XXXXXX")',
            "trap 'rm -rf \"$d\"' EXIT",
            "put() {  # FILE NAME",
            f'  {_curl(source)} --max-time 7200 -T "$1" -D "$d/h" -o /dev/null "$url$2"',
            '  etag=$(tr -d \'\\r"\' < "$d/h" | awk \'tolower($1) == "etag:" { print $2 }\')',
            '  echo "@@part $2 $(stat -c %s -- "$1") $(md5sum < "$1" | cut -c1-32) ${etag:--}"',
            "}",
            'size=$(stat -c %s -- "$folder/$tar"); i=0',
            'if [ "$size" -le $((n * 1048576)) ]; then put "$folder/$tar" "$tar.00000"',
            "else",
            '  while [ $((i * n * 1048576)) -lt "$size" ]; do',
            '    dd if="$folder/$tar" of="$d/part" bs=1048576 skip=$((i * n)) count="$n" status=none',
            '    put "$d/part" "$tar.$(printf %05d "$i")"; i=$((i + 1))',
            "  done",
            "fi",
            'put "$folder/backup_manifest" backup_manifest',
        ]
    )
    return _as(user, body)


def parse_parts(output: str) -> list[Part]:
    """The `@@part` lines; ValueError when a part's ETag is an MD5 other than the file's (the
    upload was not the file): a multipart or encrypted ETag (not 32 hex digits) is not compared."""
    parts = []
    for line in output.splitlines():
        match = PART_RE.match(line.strip())
        if not match:
            continue
        name, size, md5, etag = match.groups()
        if re.fullmatch(r"[0-9a-fA-F]{32}", etag) and etag.lower() != md5:
            raise ValueError(f"{name}: S3's ETag {etag} is not the MD5 {md5} of what was sent")
        parts.append(Part(name, int(size), md5))
    return parts


def marker_text(stamp: str, tar: str, parts: Sequence[Part], start_lsn: str, timeline: int, host: str) -> str:
    return json.dumps(
        {
            "format": MARKER_FORMAT,
            "stamp": stamp,
            "tar": tar,
            "parts": [{"name": p.name, "size": p.size, "md5": p.md5} for p in parts if p.name != MANIFEST],
            "start_lsn": start_lsn,
            "timeline": timeline,
            "host": host,
        },
        indent=1,
    )


def marker_script(user: str, base_dir: str, source: S3Source, stamp: str) -> str:
    """PUT the marker (on stdin) as URL/STAMP/backup.json: written last, it makes the backup usable."""
    q = shlex.quote
    body = "\n".join(
        [
            "set -eu",
            f"d=$(mktemp -d {q(base_dir)}/.marker.XXXXXX); trap 'rm -rf \"$d\"' EXIT",
            'cat > "$d/m"',
            f'{_curl(source)} --max-time 300 -T "$d/m" -o /dev/null {q(source.url + stamp + "/" + MARKER)}',
            'echo "@@marked"',
        ]
    )
    return _as(user, body)


def fetch_command(
    user: str, source: S3Source, stamp: str, parts: Sequence[Part], new_dir: str, gz: bool
) -> str:
    """Fetch the parts one at a time (each checked against its MD5 before tar sees a byte of it)
    and unpack them into `new_dir` as one stream; exit 1 when a part failed or tar did."""
    q = shlex.quote
    url = f"{source.url}{stamp}/"
    lines = [
        f'd=$(mktemp -d "$(dirname -- {q(new_dir)})/.pitr-fetch.XXXXXX") || exit 1',
        "trap 'rm -rf \"$d\"' EXIT",
        "(",
    ]
    for part in parts:
        lines += [
            f'  {_curl(source)} --max-time 7200 -o "$d/part" {q(url + part.name)} || '
            f"{{ echo {q('fetching ' + part.name + ' failed')} >&2; exit 1; }}",
            f'  [ "$(md5sum < "$d/part" | cut -c1-32)" = {q(part.md5)} ] || '
            f"{{ echo {q(part.name + ': its MD5 is not the one in the marker')} >&2; exit 1; }}",
            '  cat "$d/part" || exit 1',
        ]
    lines += [
        '  : > "$d/complete"',
        f") | tar -x{'z' if gz else ''}f - -C {q(new_dir)} || exit 1",
        '[ -f "$d/complete" ] || exit 1',
    ]
    return _as(user, "\n".join(lines))


def parse_marker(text: str) -> dict[str, object] | None:
    """The marker's fields, or None when it is not one this version reads."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return None
    parts = data.get("parts")
    if not isinstance(parts, list) or not parts or not isinstance(data.get("tar"), str):
        return None
    return data
