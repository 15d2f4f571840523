"""What rollback knows of a service's earlier images: the record, and what Docker itself knows.

`facts_command` prints, in one round trip: the image record (`image_record`), every image on the host
(`docker image ls -a`: id, name, tag, creation time), every container (id, image id, the image name it
was created from, state, compose project and service labels), and, for `--to IMAGE`, what
`docker image inspect` makes of IMAGE. `parse_facts` (pure) turns it into `DockerKnowledge`.

`candidates` (pure) lists the images the service could go back to, newest first, each with where it
came from and whether it is still on the host; `previous` (pure) says which one is the image the
service ran just before the current one, or why that cannot be told.
"""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field

from remediations.actions import image_record as images
from remediations.core.errors import HostError
from remediations.core.inventory import Host
from remediations.core.remote import Remote
from remediations.core.units import docker_time
from remediations.facts.sections import MARK, sections_by_name

UNTAGGED_SHOWN = 5  # untagged images listed as candidates at most (they may be anything)
CONTAINER_FORMAT = "\t".join((
    "{{.Id}}", "{{.Image}}", "{{.Config.Image}}", "{{.State.Status}}", "{{.Created}}",
    '{{index .Config.Labels "com.docker.compose.project"}}',
    '{{index .Config.Labels "com.docker.compose.service"}}',
    "{{.Name}}",
))  # fmt: skip
IMAGE_FORMAT = "{{.ID}}\t{{.Repository}}\t{{.Tag}}\t{{.CreatedAt}}"


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]  # repo:tag names that point at it now
    created: str  # ISO 8601, UTC, or ""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    image_id: str
    ref: str  # the image name it was created from
    state: str
    created: str
    project: str
    service: str
    name: str


@dataclass(frozen=True)
class DockerKnowledge:
    records: images.Record
    images: dict[str, ImageInfo]
    containers: tuple[ContainerInfo, ...]
    to: tuple[int, str] | None = None  # (exit code, output) of `docker image inspect IMAGE`

    def present(self, image_id: str) -> bool:
        return image_id in self.images


def facts_command(host: Host, to: str | None = None) -> str:
    """One shell command printing the record, the host's images and containers (and IMAGE's id)."""
    q = shlex.quote
    lines = [
        f"echo '{MARK}record'; cat {q(images.state_path(host))} 2>/dev/null",
        f"echo '{MARK}images'; docker image ls -a --no-trunc --format {q(IMAGE_FORMAT)} 2>/dev/null",
        f"echo '{MARK}containers'; ids=$(docker ps -a -q --no-trunc 2>/dev/null)",
        f'if [ -n "$ids" ]; then docker container inspect --format {q(CONTAINER_FORMAT)} $ids 2>/dev/null;'
        " fi",
    ]
    if to is not None:
        lines += [
            f"out=$(docker image inspect --format '{{{{.Id}}}}' {q(to)} 2>&1); rc=$?",
            f'echo "{MARK}to $rc"; printf "%s\\n" "$out" | head -c 300',
        ]
    return "\n".join(lines)


def iso_time(text: str) -> str:
    """Pure: a Docker time text as ISO 8601 seconds in UTC; "" when unreadable. The CLI prints the
    host's zone by name after its offset ("+0100 CET"): the offset is enough."""
    words = text.split()
    if len(words) == 4 and words[2][:1] in "+-":
        text = " ".join(words[:3])
    try:
        return dt.datetime.fromtimestamp(docker_time(text), dt.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return ""


def parse_facts(output: str) -> DockerKnowledge:
    """Pure parser of `facts_command` output."""
    found = sections_by_name(output)
    records = images.parse(found.get("record", ("", ""))[1])
    tags: dict[str, list[str]] = {}
    created: dict[str, str] = {}
    for line in found.get("images", ("", ""))[1].splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].startswith("sha256:"):
            continue
        image_id, repo, tag, when = parts
        tags.setdefault(image_id, [])
        if repo != "<none>" and tag != "<none>":
            tags[image_id].append(f"{repo}:{tag}")
        created[image_id] = iso_time(when)
    known = {i: ImageInfo(i, tuple(sorted(set(t))), created[i]) for i, t in tags.items()}
    containers = []
    for line in found.get("containers", ("", ""))[1].splitlines():
        parts = line.split("\t")
        if len(parts) == 8:
            cid, image_id, ref, state, when, project, service, name = parts
            containers.append(ContainerInfo(cid, image_id, ref, state, iso_time(when), project, service,
                                            name.lstrip("/")))  # fmt: skip
    to = None
    if "to" in found:
        code, text = found["to"]
        to = (int(code) if code.lstrip("-").isdigit() else 1, text.strip())
    return DockerKnowledge(records, known, tuple(containers), to)


def gather(remote: Remote, host: Host, to: str | None = None) -> DockerKnowledge:
    result = remote.run(facts_command(host, to), timeout=60)
    if result.exit_code != 0:
        raise HostError(f"reading the image record and Docker's images failed: {result.tail()}", result)
    return parse_facts(result.stdout)


# --- candidates ----------------------------------------------------------------------------------


@dataclass
class Candidate:
    image_id: str
    present: bool
    sources: list[str] = field(default_factory=list)
    when: str = ""  # for the order: when it was seen running, or the image's creation time
    recorded: bool = False  # the record says the service ran it
    strong: bool = False  # Docker ties it to this service's image name (not merely an untagged image)

    def describe(self) -> str:
        where = "; ".join(self.sources)
        return (
            f"{short(self.image_id)} ({where}; {'on the host' if self.present else 'no longer on the host'})"
        )

    def to_dict(self) -> dict[str, object]:
        return {"image": self.image_id, "present": self.present, "sources": list(self.sources),
                "recorded": self.recorded}  # fmt: skip


def repository(ref: str) -> str:
    """Pure: the repository of an image name (`local/api:1` → `local/api`; a registry port is kept)."""
    name = ref.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def candidates(
    history: list[images.Sighting],
    current: str,
    ref: str,
    knowledge: DockerKnowledge,
    project: str,
    service: str,
) -> list[Candidate]:
    """Pure: every image the service could go back to (not `current`), the record's first (newest
    first), then what Docker knows (newest image first)."""
    found: dict[str, Candidate] = {}

    def add(image_id: str, source: str, when: str, recorded: bool = False, strong: bool = True) -> None:
        if not image_id or image_id == current:
            return
        entry = found.setdefault(image_id, Candidate(image_id, knowledge.present(image_id), when=when))
        if source not in entry.sources:
            entry.sources.append(source)
        entry.recorded = entry.recorded or recorded
        entry.strong = entry.strong or strong

    for sighting in reversed(history):
        seen = f", first seen {sighting.seen}" if sighting.seen else ""
        add(sighting.image_id, f"recorded: {service} ran it ({sighting.origin}{seen})", sighting.seen, True)
    recorded_ids = set(found)
    for c in knowledge.containers:
        if (c.project, c.service) == (project, service):
            add(c.image_id, f"the image of container {c.name} ({c.state})", _created(knowledge, c.image_id))
        elif ref and c.ref == ref:
            who = f"{c.project}/{c.service}" if c.service else c.name
            add(c.image_id, f"{who} still runs it as {ref}", _created(knowledge, c.image_id))
    repo = repository(ref)
    for info in knowledge.images.values():
        same = [t for t in info.tags if repository(t) == repo]
        if same:
            add(info.id, f"tagged {', '.join(same)}", info.created)
    untagged = sorted((i for i in knowledge.images.values() if not i.tags and i.id not in found),
                      key=lambda i: i.created, reverse=True)  # fmt: skip
    before = _created(knowledge, current)
    for info in [i for i in untagged if not before or i.created <= before][:UNTAGGED_SHOWN]:
        add(info.id, f"an untagged image created {info.created or 'at an unknown time'}", info.created,
            strong=False)  # fmt: skip
    docker = {i: c for i, c in found.items() if i not in recorded_ids}
    recorded = [found[i] for i in found if i in recorded_ids]
    return recorded + sorted(docker.values(), key=lambda c: c.when, reverse=True)


def _created(knowledge: DockerKnowledge, image_id: str) -> str:
    info = knowledge.images.get(image_id)
    return info.created if info else ""


@dataclass(frozen=True)
class Previous:
    """The image the service ran just before the current one, or why it cannot be told."""

    image_id: str  # "" when it cannot be told
    reason: str
    listed: tuple[Candidate, ...] = ()


def previous(
    service: str, history: list[images.Sighting], current: str, options: list[Candidate],
    created: dict[str, ImageInfo] | None = None,
) -> Previous:  # fmt: skip
    """Pure: the record's image before the current one; without one, the only image older than the
    current one that Docker ties to the service; else nothing, with the candidates (`--to`).

    When the current image was seen rather than put there by this tool, deploys may have come and gone
    between two sightings: an image made after the one chosen and before the current one (`created`:
    the images on the host) means the choice may be two deploys back, and it is refused."""
    present = tuple(c for c in options if c.present)
    listing = "; ".join(c.describe() for c in present) or "none on the host"
    choose = "choose one with --to IMAGE"
    if len(history) > 1 and history[-1].image_id == current:
        before = history[-2]
        seen = f", first seen {before.seen}" if before.seen else ""
        what = (f"{short(before.image_id)}, the image {service} ran before {short(current)} "
                f"({before.origin}{seen})")  # fmt: skip
        if not any(c.image_id == before.image_id for c in present):
            return Previous("", f"{what} is no longer on the host (pruned?); candidates: {listing}; {choose}",
                            present)  # fmt: skip
        chosen, observed, since = before.image_id, history[-1].by == images.OBSERVED, before.seen
    else:
        # An image made after the current one is no previous deploy (a rollback by hand aside: --to).
        made = created or {}
        strong = [c for c in present if c.strong and _older(c.image_id, current, made)]
        if not present:
            return Previous("", f"no previous image known for {service}: the record holds no image before "
                            f"{short(current)} and Docker knows no other image of it; {choose}")  # fmt: skip
        if not strong:
            return Previous("", f"no previous image known for {service}: the record holds no image before "
                            f"{short(current)} and Docker knows no older image of it (untagged ones may be "
                            f"anything); candidates: {listing}; {choose}", present)  # fmt: skip
        if len(strong) != 1:
            why = "several images could be it"
            return Previous("", f"cannot tell which image {service} ran before {short(current)}: no record "
                            f"of it and {why}; candidates: {listing}; {choose}", present)  # fmt: skip
        chosen, observed, since = strong[0].image_id, True, ""
        what = (f"{short(chosen)}, the only other image Docker ties to {service} "
                f"({'; '.join(strong[0].sources)}); no record of an earlier image")  # fmt: skip
    newer = _made_between(chosen, since, current, present, created or {}) if observed else []
    if newer:
        names = "; ".join(c.describe() for c in newer)
        return Previous("", f"cannot tell which image {service} ran before {short(current)}: it was "
                        f"deployed outside this tool and {names} was made after {short(chosen)} ran and "
                        f"before it, so {short(chosen)} may be two deploys back; candidates: {listing}; "
                        f"{choose}", present)  # fmt: skip
    return Previous(chosen, what)


def _older(image_id: str, current: str, created: dict[str, ImageInfo]) -> bool:
    one, other = created.get(image_id), created.get(current)
    return bool(one and other and one.created and other.created and one.created < other.created)


def _made_between(
    older: str, since: str, newer: str, present: tuple[Candidate, ...], created: dict[str, ImageInfo]
) -> list[Candidate]:
    """Pure: the candidates whose image was made after `older` was made and seen running (`since`) and
    before `newer` was made (ISO 8601 UTC texts to the second compare in time order). The same second
    counts as between: which came first cannot be told, and refusing is the careful side (`--to`)."""
    low, high = (created[i].created if i in created else "" for i in (older, newer))
    if not low or not high:
        return []
    low = max(low, since)
    return [c for c in present if c.image_id not in (older, newer) and c.image_id in created
            and low <= created[c.image_id].created <= high]  # fmt: skip
