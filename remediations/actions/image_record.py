"""Which image each service ran before a remediation replaced its container: the record rollback reads.

The record is one small JSON file on the host, `{state_dir}/images.json` (state_dir defaults to
/var/lib/remediations), keyed by "project/service", each a list of replacements, newest last:
`{"at", "task", "from", "to", "ref"}` with image ids. It is written whole or not at all (remote_write:
a temp file whose size and SHA-256 are checked, then the rename) while the remediation holds the host
lock.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass
from typing import Any

from remediations.actions import remote_write
from remediations.core.inventory import Host
from remediations.core.remote import Remote
from remediations.facts.sections import MARK, sections_by_name

DEFAULT_STATE_DIR = "/var/lib/remediations"
FILE_NAME = "images.json"
KEEP = 20  # replacements kept per service
ROLLBACK_TASK = "rollback"


def state_path(host: Host) -> str:
    return f"{str(host.get('state_dir') or DEFAULT_STATE_DIR).rstrip('/')}/{FILE_NAME}"


@dataclass(frozen=True)
class Replacement:
    at: str
    task: str
    before: str  # image id the service ran before
    after: str  # image id it runs since
    ref: str  # the image name compose creates the service from

    def to_dict(self) -> dict[str, str]:
        return {"at": self.at, "task": self.task, "from": self.before, "to": self.after, "ref": self.ref}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Replacement:
        return cls(str(data.get("at", "")), str(data.get("task", "")), str(data.get("from", "")),
                   str(data.get("to", "")), str(data.get("ref", "")))  # fmt: skip


def parse(text: str) -> dict[str, list[Replacement]]:
    """Pure: the record file's text; an empty or unreadable file is an empty record."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(key): [Replacement.from_dict(e) for e in entries if isinstance(e, dict)]
        for key, entries in data.items()
        if isinstance(entries, list)
    }


def rollback_target(history: list[Replacement]) -> Replacement | None:
    """Pure: the last change that rollback undoes: the newest replacement, not itself a rollback,
    that changed the image. Its `before` is the image to go back to."""
    for entry in reversed(history):
        if entry.task != ROLLBACK_TASK and entry.before and entry.before != entry.after:
            return entry
    return None


def read(remote: Remote, host: Host) -> dict[str, list[Replacement]]:
    path = shlex.quote(state_path(host))
    result = remote.run(f"cat {path} 2>/dev/null || true", timeout=30)
    return parse(result.stdout)


def read_with_images(remote: Remote, host: Host) -> tuple[dict[str, list[Replacement]], set[str]]:
    """The record and the ids of every image on the host, in one round trip."""
    path = shlex.quote(state_path(host))
    command = (
        f"echo '{MARK}record'; cat {path} 2>/dev/null; "
        f"echo '{MARK}ids'; docker image ls -a -q --no-trunc"
    )
    found = sections_by_name(remote.run(command, timeout=30).stdout)
    ids = {line.strip() for line in found.get("ids", ("", ""))[1].splitlines() if line.strip()}
    return parse(found.get("record", ("", ""))[1]), ids


def record(
    remote: Remote, host: Host, project: str, service: str, task: str, before: str, after: str, ref: str
) -> None:
    """Append one replacement to the host's record (read, add, write atomically)."""
    if not before:
        return  # nothing ran before: nothing to go back to
    records = read(remote, host)
    key = f"{project}/{service}"
    entry = Replacement(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), task, before, after, ref)
    records[key] = [*records.get(key, []), entry][-KEEP:]
    text = json.dumps({k: [e.to_dict() for e in v] for k, v in records.items()}, indent=1, sort_keys=True)
    job = remote_write.Write(state_path(host), (text + "\n").encode(), mode="600", make_dir=True)
    remote_write.write(remote, job)
