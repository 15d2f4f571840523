"""prune: reclaim Docker space on a host, and say exactly what went.

facts   one round trip: the host's clock, Docker's data root and the filesystem holding it
        (`stat -f`), every container (`docker container inspect --size`), every top-level image
        (`docker image inspect`), every network (`docker network inspect`), and `docker system df -v`
        for image unique sizes, volume sizes and the build cache; all JSON, no tables;
decide  pure: stopped containers created before the cutoff; dangling images (every unused image
        with `all_images`) created before it; networks no container refers to; with `volumes`, volumes
        no remaining container mounts; unused build cache. What a removed container used counts as
        unused, so one run reclaims everything a second run would;
apply   `docker rm` / `docker rmi` / `docker network rm` / `docker volume rm` of exactly the listed
        objects (never forced: an object that came into use meanwhile is refused by Docker), then
        `docker builder prune --filter until=…`; skipped in check mode;
verify  re-read the facts: nothing that was listed is still there.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, ClassVar

from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.remediation import Remediation
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.core.units import (
    check_percent,
    docker_time,
    host_time,
    human_bytes,
    parse_duration,
    parse_size,
)
from remediations.facts.fs import STAT_FS_FORMAT, FsUsage
from remediations.facts.sections import MARK, parse_sections, section_map

DEFAULT_OLDER_THAN = "168h"
BUILTIN_NETWORKS = frozenset({"bridge", "host", "none"})
FACTS_TIMEOUT = 120.0
REMOVE_TIMEOUT = 600.0


# --- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerContainer:
    id: str
    name: str
    running: bool
    state: str
    created: float
    image_id: str
    size: int
    volumes: tuple[str, ...]
    networks: tuple[str, ...]

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> DockerContainer:
        state = data.get("State") or {}
        settings = data.get("NetworkSettings") or {}
        networks = set((settings.get("Networks") or {}).keys())
        mode = str((data.get("HostConfig") or {}).get("NetworkMode") or "")
        if mode and mode not in ("default",) and not mode.startswith("container:"):
            networks.add(mode)
        volumes = tuple(
            str(m.get("Name"))
            for m in data.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name")
        )
        return cls(
            id=str(data.get("Id", "")),
            name=str(data.get("Name", "")).lstrip("/"),
            running=bool(state.get("Running")),
            state=str(state.get("Status", "unknown")),
            created=docker_time(str(data.get("Created", ""))),
            image_id=str(data.get("Image", "")),
            size=int(data.get("SizeRw") or 0),
            volumes=volumes,
            networks=tuple(sorted(networks)),
        )


@dataclass(frozen=True)
class DockerImage:
    id: str
    tags: tuple[str, ...]
    created: float
    size: int
    parent: str

    @property
    def dangling(self) -> bool:
        return not self.tags

    @property
    def label(self) -> str:
        return ", ".join(self.tags) if self.tags else f"<none> {short(self.id)}"

    @classmethod
    def from_inspect(cls, data: dict[str, Any], unique_sizes: dict[str, int]) -> DockerImage:
        image_id = str(data.get("Id", ""))
        tags = tuple(t for t in data.get("RepoTags") or [] if t and t != "<none>:<none>")
        return cls(
            id=image_id,
            tags=tags,
            created=docker_time(str(data.get("Created", ""))),
            size=unique_sizes.get(image_id, int(data.get("Size") or 0)),
            parent=str(data.get("Parent") or ""),
        )


@dataclass(frozen=True)
class DockerVolume:
    name: str
    size: int


@dataclass(frozen=True)
class DockerNetwork:
    id: str
    name: str
    created: float
    builtin: bool


@dataclass(frozen=True)
class BuildCacheEntry:
    id: str
    size: int
    in_use: bool
    shared: bool


@dataclass(frozen=True)
class DockerFacts:
    now: float
    root_dir: str
    disk: FsUsage | None
    containers: tuple[DockerContainer, ...] = ()
    images: tuple[DockerImage, ...] = ()
    volumes: tuple[DockerVolume, ...] = ()
    networks: tuple[DockerNetwork, ...] = ()
    build_cache: tuple[BuildCacheEntry, ...] = ()
    error: str = ""


def age_text(seconds: int) -> str:
    """604800 -> '168h', 1800 -> '30m', 5 -> '5s'."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def short(object_id: str) -> str:
    return object_id.removeprefix("sha256:")[:12]


def facts_command() -> str:
    """One shell command that prints every Docker fact prune needs, in marked sections."""
    inspect_all = (
        'ids=$({list}) || {{ echo "{mark}error"; echo "$ids"; exit 0; }}; '
        'if [ -n "$ids" ]; then {inspect} $ids; else echo "[]"; fi'
    )
    return "\n".join(
        [
            f"if ! root=$(docker info --format '{{{{.DockerRootDir}}}}' 2>&1); then "
            f"echo '{MARK}error'; echo \"$root\"; exit 0; fi",
            # Fractions matter: "--older-than 0s" must take an image committed a moment ago.
            f"echo '{MARK}now'; date +%s.%N",
            f'echo "{MARK}root $root"',
            # $root comes from Docker itself, so it is expanded (double quotes), not spliced in.
            f'echo "{MARK}fs $root"; stat -f -c {shlex.quote(STAT_FS_FORMAT)} "$root" 2>&1 || true',
            f"echo '{MARK}containers'",
            inspect_all.format(
                list="docker ps -a -q --no-trunc 2>&1", inspect="docker container inspect --size", mark=MARK
            ),
            f"echo '{MARK}images'",
            inspect_all.format(
                list="docker image ls -q --no-trunc 2>&1 | sort -u", inspect="docker image inspect", mark=MARK
            ),
            f"echo '{MARK}networks'",
            inspect_all.format(
                list="docker network ls -q --no-trunc 2>&1", inspect="docker network inspect", mark=MARK
            ),
            f"echo '{MARK}df'",
            "docker system df -v --format '{{json .}}' 2>&1",
        ]
    )


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON: {text.strip()[:200]}") from None


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def parse_facts(output: str) -> DockerFacts:
    """Pure parser of `facts_command` output."""
    sections = section_map(parse_sections(output))
    if "error" in sections:
        return DockerFacts(0.0, "", None, error=f"docker: {sections['error'].body.strip()[-300:]}")
    try:
        now = host_time(sections["now"].body)
        root = sections["root"].arg
        disk = FsUsage.parse(root, sections["fs"].body) if "fs" in sections else None
        df = _json(sections["df"].body.strip() or "{}", "docker system df -v")
        unique: dict[str, int] = {}
        for row in df.get("Images") or []:
            try:
                unique[str(row.get("ID", ""))] = parse_size(
                    str(row.get("UniqueSize") or row.get("Size") or "0B")
                )
            except ValueError:
                continue
        containers = tuple(
            DockerContainer.from_inspect(c) for c in _json(sections["containers"].body, "docker inspect")
        )
        images = tuple(
            DockerImage.from_inspect(i, unique)
            for i in _json(sections["images"].body, "docker image inspect")
        )
        networks = tuple(
            DockerNetwork(
                id=str(n.get("Id", "")),
                name=str(n.get("Name", "")),
                created=docker_time(str(n.get("Created", ""))),
                builtin=str(n.get("Name")) in BUILTIN_NETWORKS
                or str(n.get("Driver")) in ("host", "null")
                or str(n.get("Scope")) != "local"
                or _flag(n.get("Ingress")),
            )
            for n in _json(sections["networks"].body, "docker network inspect")
        )
        volumes = tuple(
            DockerVolume(str(v.get("Name", "")), _size_or_zero(v.get("Size")))
            for v in df.get("Volumes") or []
        )
        cache = tuple(
            BuildCacheEntry(
                str(b.get("ID", "")),
                _size_or_zero(b.get("Size")),
                _flag(b.get("InUse")),
                _flag(b.get("Shared")),
            )
            for b in df.get("BuildCache") or []
        )
    except KeyError as exc:
        missing = f"could not read Docker's state: no {exc} section in the output"
        return DockerFacts(0.0, "", None, error=missing)
    except (ValueError, TypeError, AttributeError) as exc:
        return DockerFacts(0.0, "", None, error=f"could not read Docker's state: {exc}")
    return DockerFacts(now, root, disk, containers, images, volumes, networks, cache)


def _size_or_zero(value: Any) -> int:
    try:
        return parse_size(str(value or "0B"))
    except ValueError:
        return 0


def gather(remote: Remote) -> DockerFacts:
    result = remote.run(facts_command(), timeout=FACTS_TIMEOUT)
    if not result.ok:
        raise HostError(f"gathering Docker facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_facts(result.stdout)


# --- decide --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneOptions:
    older_than: int = 168 * 3600  # seconds
    all_images: bool = False
    volumes: bool = False
    if_disk_above: float | None = None

    def describe(self) -> str:
        what = "unused images" if self.all_images else "dangling images"
        age = age_text(self.older_than)
        return f"stopped containers, {what}, unused networks and build cache older than {age}"


@dataclass(frozen=True)
class PrunePlan:
    containers: tuple[DockerContainer, ...] = ()
    images: tuple[DockerImage, ...] = ()  # children before parents
    networks: tuple[DockerNetwork, ...] = ()
    volumes: tuple[DockerVolume, ...] = ()
    build_cache: tuple[BuildCacheEntry, ...] = ()
    reason: str = ""  # why nothing is done, when it is not

    @property
    def empty(self) -> bool:
        return not (self.containers or self.images or self.networks or self.volumes or self.build_cache)

    @property
    def reclaim(self) -> int:
        """Bytes the plan would reclaim, as Docker accounts for them (an estimate for images)."""
        return (
            sum(c.size for c in self.containers)
            + sum(i.size for i in self.images)
            + sum(v.size for v in self.volumes)
            + sum(b.size for b in self.build_cache)
        )

    def summary(self, done: bool = False) -> str:
        parts = []
        for count, noun in (
            (len(self.containers), "container"),
            (len(self.images), "image"),
            (len(self.networks), "network"),
            (len(self.build_cache), "build cache entry"),
        ):
            if count:
                parts.append(f"{count} {noun}{'' if count == 1 or noun.endswith('entry') else 's'}")
        text = ", ".join(parts)
        if self.volumes:
            names = ", ".join(v.name for v in self.volumes)
            text += ("; " if text else "") + f"VOLUMES (data deleted for good): {names}"
        return f"{text}; about {human_bytes(self.reclaim)} {'reclaimed' if done else 'to reclaim'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "containers": [
                {"id": short(c.id), "name": c.name, "state": c.state, "bytes": c.size}
                for c in self.containers
            ],
            "images": [{"id": short(i.id), "tags": list(i.tags), "bytes": i.size} for i in self.images],
            "networks": [n.name for n in self.networks],
            "volumes": [{"name": v.name, "bytes": v.size} for v in self.volumes],
            "build_cache": [{"id": b.id, "bytes": b.size} for b in self.build_cache],
            "reclaim_bytes": self.reclaim,
        }


def decide(options: PruneOptions, facts: DockerFacts) -> PrunePlan:
    """Pure: what prune would remove from this host, or why nothing."""
    if options.if_disk_above is not None:
        if facts.disk is None:
            return PrunePlan(reason=f"cannot tell how full {facts.root_dir} is; nothing pruned")
        if facts.disk.percent <= options.if_disk_above:
            return PrunePlan(
                reason=f"Docker's filesystem ({facts.disk.describe()}) is not above "
                f"{options.if_disk_above:g}%; nothing pruned"
            )
    cutoff = facts.now - options.older_than
    containers = tuple(c for c in facts.containers if not c.running and c.created <= cutoff)
    removed = {c.id for c in containers}
    staying = [c for c in facts.containers if c.id not in removed]
    used_images = {c.image_id for c in staying}
    used_volumes = {v for c in staying for v in c.volumes}
    used_networks = {n for c in staying for n in c.networks}

    candidates = {
        i.id: i
        for i in facts.images
        if i.id not in used_images and i.created <= cutoff and (options.all_images or i.dangling)
    }
    # An image that is the parent of one that stays cannot be removed: keep dropping such parents.
    while True:
        kept_parents = {i.parent for i in facts.images if i.id not in candidates and i.parent}
        blocked = kept_parents & candidates.keys()
        if not blocked:
            break
        for image_id in blocked:
            del candidates[image_id]
    images = tuple(_children_first(candidates))

    networks = tuple(
        n
        for n in facts.networks
        if not n.builtin and n.name not in used_networks and n.id not in used_networks and n.created <= cutoff
    )
    volumes = tuple(v for v in facts.volumes if v.name not in used_volumes) if options.volumes else ()
    cache = tuple(b for b in facts.build_cache if not b.in_use and (options.all_images or not b.shared))
    plan = PrunePlan(containers, images, networks, volumes, cache)
    if plan.empty:
        return PrunePlan(reason=f"nothing to reclaim ({options.describe()})")
    return plan


def _children_first(images: dict[str, DockerImage]) -> list[DockerImage]:
    ordered: list[DockerImage] = []
    pending = dict(images)
    while pending:
        parents = {i.parent for i in pending.values()}
        leaves = [i for i in pending.values() if i.id not in parents] or list(pending.values())
        for image in sorted(leaves, key=lambda i: i.id):
            ordered.append(image)
            del pending[image.id]
    return ordered


# --- apply and verify ----------------------------------------------------------------------------


def apply(remote: Remote, plan: PrunePlan, options: PruneOptions) -> None:
    """Remove exactly what the plan lists; never forced, so Docker refuses anything now in use."""

    def run(argv: list[str], what: str) -> None:
        must(remote.run(shlex.join(argv), timeout=REMOVE_TIMEOUT), what)

    if plan.containers:
        run(["docker", "rm", *(c.id for c in plan.containers)], "docker rm")
    if plan.images:
        # Tagged images go by their tags (the last tag removed deletes the image; an ID with several
        # tags would need --force), untagged ones by ID.
        refs = [ref for i in plan.images for ref in (i.tags or (i.id,))]
        run(["docker", "rmi", *refs], "docker rmi")
    if plan.networks:
        run(["docker", "network", "rm", *(n.id for n in plan.networks)], "docker network rm")
    if plan.volumes:
        run(["docker", "volume", "rm", *(v.name for v in plan.volumes)], "docker volume rm")
    if plan.build_cache:
        argv = ["docker", "builder", "prune", "-f", "--filter", f"until={options.older_than}s"]
        run([*argv, "-a"] if options.all_images else argv, "docker builder prune")


def leftovers(plan: PrunePlan, after: DockerFacts) -> list[str]:
    """What the plan listed that still exists (build cache is Docker's to judge, so not counted)."""
    containers = {c.id for c in after.containers}
    images = {i.id for i in after.images}
    networks = {n.id for n in after.networks}
    volumes = {v.name for v in after.volumes}
    return (
        [f"container {c.name}" for c in plan.containers if c.id in containers]
        + [f"image {i.label}" for i in plan.images if i.id in images]
        + [f"network {n.name}" for n in plan.networks if n.id in networks]
        + [f"volume {v.name}" for v in plan.volumes if v.name in volumes]
    )


@dataclass
class PruneOutcome:
    plan: PrunePlan
    before: DockerFacts
    after: DockerFacts | None = None
    notes: list[str] = field(default_factory=list)


def prune_host(ctx: HostContext, options: PruneOptions, prefix: str = "") -> PruneOutcome | None:
    """facts → decide → apply → verify as steps on `ctx`; returns None when facts failed."""
    with ctx.step(f"{prefix}facts") as step:
        before = gather(ctx.remote)
        if before.error:
            step.done(Status.FAILED, before.error)
        else:
            disk = before.disk.describe() if before.disk else f"{before.root_dir} (size unknown)"
            step.done(
                Status.OK,
                f"{len(before.containers)} containers, {len(before.images)} images, "
                f"{len(before.volumes)} volumes, {len(before.networks)} networks; {disk}",
                disk=before.disk.to_dict() if before.disk else None,
            )
    if before.error:
        return None
    plan = decide(options, before)
    outcome = PruneOutcome(plan, before)
    if plan.empty:
        ctx.record(f"{prefix}prune", Status.OK, plan.reason, **plan.to_dict())
        return outcome
    if ctx.check:
        ctx.record(f"{prefix}prune", Status.CHANGED, f"would remove {plan.summary()}", **plan.to_dict())
        return outcome
    with ctx.step(f"{prefix}prune") as step:
        apply(ctx.remote, plan, options)
        after = gather(ctx.remote)
        outcome.after = after
        left = leftovers(plan, after)
        freed = _freed(before, after)
        data = {
            **plan.to_dict(),
            "freed_bytes": freed,
            "disk_after": after.disk.to_dict() if after.disk else None,
        }
        if left:
            step.done(Status.FAILED, f"removed some, but still present: {', '.join(left)}", **data)
        else:
            disk = f"; {after.disk.describe()}" if after.disk else ""
            step.done(Status.CHANGED, f"removed {plan.summary(done=True)}{disk}", **data)
    return outcome


def _freed(before: DockerFacts, after: DockerFacts) -> int | None:
    if before.disk is None or after.disk is None:
        return None
    return after.disk.available - before.disk.available


def options_from_flags(
    older_than: str | None, all_images: bool, volumes: bool, if_disk_above: str | float | None
) -> PruneOptions:
    """Validated options (UsageError on bad input, before any host is touched)."""
    seconds = parse_duration(older_than or DEFAULT_OLDER_THAN, "--older-than")
    above = None if if_disk_above in (None, "") else check_percent(if_disk_above, "--if-disk-above")
    return PruneOptions(seconds, bool(all_images), bool(volumes), above)


class Prune(Remediation):
    task: ClassVar[str] = "prune"
    required_vars: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: PruneOptions) -> None:
        self.options = options

    def arguments(self) -> dict[str, Any]:
        return {
            "older_than": f"{self.options.older_than}s",
            "all": self.options.all_images,
            "volumes": self.options.volumes,
            "if_disk_above": self.options.if_disk_above,
        }

    def run(self, ctx: HostContext) -> None:
        prune_host(ctx, self.options)
