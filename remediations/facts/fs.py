"""Filesystem usage: a `stat -f` snippet and its parser."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from remediations.core.units import human_bytes
from remediations.facts.sections import MARK

# `stat -f` prints numbers only: total blocks, free blocks, blocks available to non-root, block size.
STAT_FS_FORMAT = "%b %f %a %S"


def fs_snippet(path: str, label: str = "fs") -> str:
    """Shell text printing `@@LABEL PATH` then the usage numbers of the filesystem holding PATH."""
    quoted = shlex.quote(path)
    return (
        f"echo {shlex.quote(f'{MARK}{label} {path}')}; "
        f"stat -f -c {shlex.quote(STAT_FS_FORMAT)} {quoted} 2>&1 || true"
    )


@dataclass(frozen=True)
class FsUsage:
    """Use of the filesystem holding `path`, as df computes it (used / (used + available))."""

    path: str
    total: int
    used: int
    available: int

    @property
    def percent(self) -> float:
        usable = self.used + self.available
        return 100.0 * self.used / usable if usable else 0.0

    @classmethod
    def parse(cls, path: str, body: str) -> FsUsage:
        words = body.split()
        if len(words) != 4 or not all(w.isdigit() for w in words):
            raise ValueError(f"{path}: {body.strip() or 'no filesystem data'}")
        blocks, free, available, size = (int(w) for w in words)
        return cls(path, blocks * size, (blocks - free) * size, available * size)

    def describe(self) -> str:
        return f"{self.path} {self.percent:.0f}% used ({human_bytes(self.available)} free)"

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "percent": round(self.percent, 1),
            "used": self.used,
            "available": self.available,
            "total": self.total,
        }
