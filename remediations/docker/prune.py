"""prune: reclaim Docker space on a host, and say exactly what went.

facts   one round trip: the host's clock, Docker's data root and the filesystem holding it, every
        container, image and network, and `docker system df -v` (`facts.docker`);
decide  pure: stopped containers, dangling (with --all: unused) images, unused networks and build
        cache older than --older-than; with --volumes, volumes no remaining container mounts
        (`actions.docker_prune.decide`);
apply   removes exactly the listed objects, never forced; skipped in check mode;
verify  re-read the facts: nothing that was listed is still there (part of the prune step).
"""

from __future__ import annotations

from typing import Any, ClassVar

from remediations.actions.docker_prune import (
    DEFAULT_OLDER_THAN,
    PruneOptions,
    PruneOutcome,
    decide,
    facts_step,
    options_from_flags,
    prune_host,
    prune_plan,
)
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.plan import Plan
from remediations.core.remediation import Remediation
from remediations.core.units import check_percent, parse_duration
from remediations.facts.docker import DockerFacts

# disk-cleanup imported these from here before they moved to actions.docker_prune
__all__ = ["Prune", "PruneOptions", "options_from_flags", "prune_host"]

PRUNE_HELP = {
    "older-than": "only objects created before this long ago: 168h (default), 30m, 7d, 0s",
    "all": "remove every unused image, not only dangling ones (and all unused build cache)",
    "volumes": "also remove volumes no container uses (their data is gone for good; listed in the result)",
}


def older_than(value: Any, flag: str) -> int:
    return parse_duration(str(value or DEFAULT_OLDER_THAN), flag)


def percent(value: Any, flag: str) -> float | None:
    return None if value in (None, "") else check_percent(value, flag)


class Prune(Remediation):
    """Reclaim Docker space: stopped containers, dangling (--all: unused) images, networks, build cache.

    Only objects older than --older-than; volumes never, unless --volumes, and then only volumes no
    container uses, named in the result. --check lists what would go and the bytes it would reclaim.
    A second run finds nothing to reclaim and reports ok.
    """

    task: ClassVar[str] = "prune"
    params = args(
        Arg("older_than", PRUNE_HELP["older-than"], parse=older_than, default=PruneOptions().older_than),
        Arg("all", PRUNE_HELP["all"], kind="flag", default=False),
        Arg("volumes", PRUNE_HELP["volumes"], kind="flag", default=False),
        Arg("if_disk_above", parse=percent,
            help="do nothing unless the filesystem holding Docker's data is fuller than PCT (0-100)"),
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: PruneOptions) -> None:
        self.options = options
        self._outcome: PruneOutcome | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Prune:
        v = values
        options = PruneOptions(v["older_than"], v["all"], v["volumes"], v["if_disk_above"])
        return cls(options)

    def arguments(self) -> dict[str, Any]:
        return {
            "older_than": f"{self.options.older_than}s",
            "all": self.options.all_images,
            "volumes": self.options.volumes,
            "if_disk_above": self.options.if_disk_above,
        }

    def gather(self, ctx: HostContext) -> DockerFacts | None:
        return facts_step(ctx)

    def decide(self, ctx: HostContext, facts: DockerFacts) -> Plan:
        return prune_plan(PruneOutcome(decide(self.options, facts), facts), self.options)
