"""Docker's objects on a host, as prune reads them: one round trip, all JSON, no tables.

`facts_command` prints the host's clock, Docker's data root and the filesystem holding it (`stat -f`),
every container (`docker container inspect --size`), every top-level image (`docker image inspect`),
every network (`docker network inspect`), and `docker system df -v` for image unique sizes, volume
sizes and the build cache; `parse_facts` (pure) turns it into `DockerFacts`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from remediations.core.errors import HostError
from remediations.core.remote import Remote
from remediations.core.units import docker_time, host_time, parse_size
from remediations.facts.fs import STAT_FS_FORMAT, FsUsage
from remediations.facts.sections import MARK, parse_sections, section_map

BUILTIN_NETWORKS = frozenset({"bridge", "host", "none"})
FACTS_TIMEOUT = 120.0


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
