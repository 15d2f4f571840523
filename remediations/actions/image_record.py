"""Which images each service has run, in order: the record rollback reads.

The record is one small JSON file on the host, `{state_dir}/images.json` (state_dir defaults to
/var/lib/remediations): `{"version": 2, "services": {"project/service": [sighting, …]}}`, oldest
first. A sighting is `{"id", "ref", "seen", "by"}`: the image id the service ran, the image name its
container was created from, when this tool first saw it run, and who made it run: a task of this
tool that replaced the container (`set-env`, `rollback`, …) or `observed` (a deploy made by CI or by
hand, noticed because the running image is not the one the record ends on). Two sightings in a row
never have the same id, so "the image before the current one" is simply the one before the last.

Every gather that sees a service's containers (health, restart-api, ensure-healthy, rollback) notes
what runs (`observe`); a replacement made by this tool notes the image before and after it
(`record`). The file is written whole or not at all (remote_write: a temp file whose size and
SHA-256 are checked, then the rename). Version 1 files (a list of replacements per service, `{"at",
"task", "from", "to", "ref"}`) are read and rewritten as version 2.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from remediations.actions import remote_write
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.remote import Remote
from remediations.facts.compose import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR
from remediations.facts.compose import RECORD_FILE, record_path

FILE_NAME = RECORD_FILE
VERSION = 2
KEEP = 20  # sightings kept per service
ROLLBACK_TASK = "rollback"
OBSERVED = "observed"

Record = dict[str, list["Sighting"]]


def state_path(host: Host) -> str:
    return record_path(host)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Sighting:
    image_id: str
    ref: str  # the image name the container was created from, such as local/api:1
    seen: str  # when this tool first saw the service run it (ISO 8601, UTC)
    by: str  # the task that made it run, or OBSERVED

    def to_dict(self) -> dict[str, str]:
        return {"id": self.image_id, "ref": self.ref, "seen": self.seen, "by": self.by}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sighting:
        return cls(str(data.get("id", "")), str(data.get("ref", "")), str(data.get("seen", "")),
                   str(data.get("by", "")) or OBSERVED)  # fmt: skip

    @property
    def origin(self) -> str:
        """In words: who made the service run it."""
        if self.by == OBSERVED:
            return "a deploy outside this tool" if self.seen else "recorded"
        return f"this tool's {self.by}"


def key(project: str, service: str) -> str:
    return f"{project}/{service}"


# --- the file ------------------------------------------------------------------------------------


def parse(text: str) -> Record:
    """Pure: the record file's text (version 2, or version 1's replacements); an empty or unreadable
    file is an empty record."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    if "version" in data:
        if data.get("version") != VERSION or not isinstance(data.get("services"), dict):
            return {}  # a newer format, or a damaged file: nothing this version can rely on
        return {
            str(name): [Sighting.from_dict(e) for e in entries if isinstance(e, dict) and e.get("id")]
            for name, entries in data["services"].items()
            if isinstance(entries, list)
        }
    return {
        str(name): _from_replacements([e for e in entries if isinstance(e, dict)])
        for name, entries in data.items()
        if isinstance(entries, list)
    }


def _from_replacements(entries: Sequence[Mapping[str, Any]]) -> list[Sighting]:
    """Pure: version 1's replacements ("from" → "to" by "task" "at") as sightings."""
    history: list[Sighting] = []
    for entry in entries:
        before, after = str(entry.get("from", "")), str(entry.get("to", ""))
        ref, at, task = str(entry.get("ref", "")), str(entry.get("at", "")), str(entry.get("task", ""))
        if before:
            history = _append(history, Sighting(before, ref, "", OBSERVED))
        if after:
            history = _append(history, Sighting(after, ref, at, task or OBSERVED))
    return history


def render(records: Record) -> str:
    services = {name: [s.to_dict() for s in history[-KEEP:]] for name, history in sorted(records.items())}
    return json.dumps({"version": VERSION, "services": services}, indent=1, sort_keys=True) + "\n"


def read(remote: Remote, host: Host) -> Record:
    path = shlex.quote(state_path(host))
    result = remote.run(f"cat {path} 2>/dev/null || true", timeout=30)
    return parse(result.stdout)


def write(remote: Remote, host: Host, records: Record) -> None:
    job = remote_write.Write(state_path(host), render(records).encode(), mode="600", make_dir=True)
    remote_write.write(remote, job)


# --- pure history operations ---------------------------------------------------------------------


def _append(history: list[Sighting], sighting: Sighting) -> list[Sighting]:
    if history and history[-1].image_id == sighting.image_id:
        return history
    return [*history, sighting]


def observed(history: list[Sighting], image_id: str, ref: str, at: str) -> list[Sighting]:
    """Pure: the history once the service is seen running `image_id`: unchanged when the record ends on
    it, else with a sighting by a deploy outside this tool."""
    if not image_id:
        return history
    return _append(history, Sighting(image_id, ref, at, OBSERVED))


def replaced(
    history: list[Sighting], task: str, before: str, after: str, ref: str, at: str
) -> list[Sighting]:
    """Pure: the history once `task` replaced the service's container running `before` by one running
    `after`. When an observer saw `after` first (a health run during the task's wait), the sighting is
    the task's: it made that change."""
    if after and after != before and len(history) > 1 and history[-1].image_id == after \
            and history[-1].by == OBSERVED and history[-2].image_id == before:  # fmt: skip
        return [*history[:-1], replace(history[-1], by=task)]
    history = observed(history, before, ref, "")
    if not after or after == before:
        return history
    return _append(history, Sighting(after, ref, at, task))


def running_image(containers: Iterable[Any]) -> tuple[str, str]:
    """(image id, image name) when every container of a service runs the same image, else ("", "")."""
    seen = {(str(c.image_id), str(c.image_ref)) for c in containers if getattr(c, "image_id", "")}
    ids = {image_id for image_id, _ in seen}
    if len(ids) != 1:
        return "", ""
    image_id = ids.pop()
    return image_id, sorted(ref for i, ref in seen if i == image_id)[0]


# --- on the host ---------------------------------------------------------------------------------


def record(
    remote: Remote, host: Host, project: str, service: str, task: str, before: str, after: str, ref: str
) -> None:
    """Note that `task` replaced the service's container (image `before` → `after`): read, add, write."""
    if not before and not after:
        return
    records = read(remote, host)
    name = key(project, service)
    history = records.get(name, [])
    updated = replaced(history, task, before, after, ref, now())
    if updated != history:
        records[name] = updated
        write(remote, host, records)


def observe(
    remote: Remote,
    host: Host,
    project: str,
    running: Mapping[str, Iterable[Any]],
    records: Record | None = None,
) -> Record:
    """Note what each service runs (service → its containers, which have `image_id` and `image_ref`).
    Writes the record only when a service runs an image it does not end on; returns the record as it
    is now. `records`: the record already read in this round trip, if it was."""
    current = read(remote, host) if records is None else records
    updated = noticed(current, project, running, now())
    if updated == current:
        return current
    # Read again just before writing: a run holding the host lock (health takes none) may have
    # recorded its own change since, which a write based on the first read would drop.
    fresh = read(remote, host)
    updated = noticed(fresh, project, running, now())
    if updated != fresh:
        write(remote, host, updated)
    return updated


def by_service(pairs: Iterable[tuple[str, Any]]) -> dict[str, list[Any]]:
    """(service, container) pairs as service → its containers."""
    running: dict[str, list[Any]] = {}
    for service, container in pairs:
        running.setdefault(service, []).append(container)
    return running


def noticed(records: Record, project: str, running: Mapping[str, Iterable[Any]], at: str) -> Record:
    """Pure: the record once each service is seen running its containers' image."""
    updated = dict(records)
    for service, containers in running.items():
        image_id, ref = running_image(containers)
        name = key(project, service)
        history = observed(records.get(name, []), image_id, ref, at)
        if history != records.get(name, []):
            updated[name] = history
    return updated


def observe_quietly(
    remote: Remote,
    host: Host,
    project: str,
    running: Mapping[str, Iterable[Any]],
    check: bool,
    record_text: str | None = None,
) -> str:
    """`observe` for a gather whose own work must not fail because of the record: "" when done (or in
    check mode, which writes nothing), else why the record could not be kept. `record_text`: the
    record file as the facts read it (no round trip of its own), if they did."""
    if check:
        return ""
    try:
        observe(remote, host, project, running, None if record_text is None else parse(record_text))
    except (HostError, OSError) as exc:  # the record is bookkeeping; the task's own facts stand
        return f"the image record {state_path(host)} was not updated: {str(exc)[:200]}"
    return ""
