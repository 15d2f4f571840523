"""Reclaim Docker space on a host: what would go (pure `decide`), removing exactly that, and the
plan prune and disk-cleanup hand the engine (`prune_host`).

decide  pure: stopped containers created before the cutoff; dangling images (every unused image
        with `all_images`) created before it; networks no container refers to; with `volumes`, volumes
        no remaining container mounts; unused build cache. What a removed container used counts as
        unused, so one run reclaims everything a second run would;
apply   `docker rm` / `docker rmi` / `docker network rm` / `docker volume rm` of exactly the listed
        objects (never forced: an object that came into use meanwhile is refused by Docker), then
        `docker builder prune --filter until=…`; then the facts are re-read: nothing that was listed
        may still be there.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from remediations.core.context import HostContext
from remediations.core.plan import Change, Plan
from remediations.core.remote import Remote, must
from remediations.core.results import Status
from remediations.core.units import check_percent, human_bytes, parse_duration
from remediations.facts.docker import (
    BuildCacheEntry,
    DockerContainer,
    DockerFacts,
    DockerImage,
    DockerNetwork,
    DockerVolume,
    age_text,
    gather,
    short,
)

DEFAULT_OLDER_THAN = "168h"
REMOVE_TIMEOUT = 600.0


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
        """Every object by name (or short id) and size, as --json lists them; a long list is cut
        after NAMED_PER_KIND per kind ("… and N more")."""
        parts = []
        for noun, items in (
            ("container", [f"{c.name or short(c.id)} {human_bytes(c.size)}" for c in self.containers]),
            ("image", [f"{i.label} {human_bytes(i.size)}" for i in self.images]),
            ("network", [n.name for n in self.networks]),
            ("build cache entry", [f"{b.id[:12]} {human_bytes(b.size)}" for b in self.build_cache]),
        ):
            if items:
                plural = "" if len(items) == 1 or noun.endswith("entry") else "s"
                parts.append(f"{len(items)} {noun}{plural} ({_named(items)})")
        text = ", ".join(parts)
        if self.volumes:
            names = _named([f"{v.name} {human_bytes(v.size)}" for v in self.volumes])
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


NAMED_PER_KIND = 20


def _named(items: list[str]) -> str:
    shown = "; ".join(items[:NAMED_PER_KIND])
    return shown + (f"; … and {len(items) - NAMED_PER_KIND} more" if len(items) > NAMED_PER_KIND else "")


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


def facts_step(ctx: HostContext, prefix: str = "") -> DockerFacts | None:
    """The Docker facts as the `facts` step; None when they could not be read (the step failed)."""
    with ctx.step(f"{prefix}facts") as step:
        before = gather(ctx.remote)
        if before.error:
            step.done(Status.FAILED, before.error)
            return None
        disk = before.disk.describe() if before.disk else f"{before.root_dir} (size unknown)"
        step.done(
            Status.OK,
            f"{len(before.containers)} containers, {len(before.images)} images, "
            f"{len(before.volumes)} volumes, {len(before.networks)} networks; {disk}",
            disk=before.disk.to_dict() if before.disk else None,
        )
    return before


def prune_plan(outcome: PruneOutcome, options: PruneOptions, prefix: str = "") -> Plan:
    """The engine's plan for `outcome.plan`: nothing and why, or one `prune` change whose apply removes,
    re-reads the facts (kept in `outcome.after`) and fails when something listed survived."""
    plan, step_name = outcome.plan, f"{prefix}prune"
    if plan.empty:
        return Plan.nothing(plan.reason, step=step_name, **plan.to_dict())

    def remove(ctx: HostContext) -> None:
        with ctx.step(step_name) as step:
            apply(ctx.remote, plan, options)
            after = outcome.after = gather(ctx.remote)
            left = leftovers(plan, after)
            data = {
                **plan.to_dict(),
                "freed_bytes": _freed(outcome.before, after),
                "disk_after": after.disk.to_dict() if after.disk else None,
            }
            if left:
                step.done(Status.FAILED, f"removed some, but still present: {', '.join(left)}", **data)
            else:
                disk = f"; {after.disk.describe()}" if after.disk else ""
                step.done(Status.CHANGED, f"removed {plan.summary(done=True)}{disk}", **data)

    return Plan.of(Change(step_name, f"remove {plan.summary()}", remove, own_steps=True, data=plan.to_dict()))


def prune_host(ctx: HostContext, options: PruneOptions, prefix: str = "") -> PruneOutcome | None:
    """facts → decide → apply → verify as steps on `ctx` (the engine shows the plan in check mode);
    returns None when facts failed."""
    before = facts_step(ctx, prefix)
    if before is None:
        return None
    outcome = PruneOutcome(decide(options, before), before)
    ctx.carry_out(prune_plan(outcome, options, prefix))
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
