"""What S3 holds of archived WAL segments, by content: the MD5 of each object (wal-cleanup).

A single-part upload's ETag is its MD5, unless SSE-KMS or SSE-C made it something else; otherwise
the object is read back. Runs on the controller with the run's S3 client (`store`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from remediations.facts.wal import ArchiveFile, RemoteCopy, etag_md5, etag_not_md5

if TYPE_CHECKING:
    from remediations.actions.s3client import S3Object


def s3_md5s(
    store: Any,
    bucket: str,
    readback_max: int,
    uploaded: Mapping[str, S3Object],
    checked: Sequence[ArchiveFile],
    local: Mapping[str, str],
) -> tuple[dict[str, RemoteCopy], int]:
    """The MD5 of each checked segment's S3 copy, oldest first, until the first that differs (decide
    stops there); and how many objects were read back.

    A single-part ETag is the MD5 unless SSE-KMS or SSE-C made it something else: a head request
    tells, and is only needed when the ETag does not match. Otherwise the object is read back,
    at most `readback_max` (wal_s3_readback_max) per run. `store` is an S3Store.
    """
    found: dict[str, RemoteCopy] = {}
    read_back = 0
    for f in checked:
        obj = uploaded[f.name]
        here = local.get(f.name)
        if not here:
            break
        tag_md5 = etag_md5(obj.etag)
        hidden = "" if tag_md5 == here or not tag_md5 else etag_not_md5(store.head(bucket, obj.key))
        if tag_md5 and not hidden:
            found[f.name] = RemoteCopy(obj.size, tag_md5, "ETag")
        elif hidden == "SSE-C":
            found[f.name] = RemoteCopy(
                obj.size,
                unknown_why=f"encrypted with a customer key (SSE-C): its ETag {obj.etag} is not "
                "its MD5 and it cannot be read back without the key",
            )
        elif read_back >= readback_max:
            why = "multipart upload" if not tag_md5 else hidden
            found[f.name] = RemoteCopy(
                obj.size,
                deferred=f"its ETag {obj.etag} is not its MD5 ({why}) and this run read back "
                f"wal_s3_readback_max={readback_max} object(s) already",
            )
        else:
            read_back += 1
            found[f.name] = RemoteCopy(obj.size, store.md5(bucket, obj.key), "read back")
        if found[f.name].md5 != here:
            break
    return found, read_back
