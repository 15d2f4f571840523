"""rotation-status: the newest rotation record of each secret on each host (read-only, never a value)."""

from __future__ import annotations

from typing import ClassVar

from remediations.actions.rotation import read_records
from remediations.core.context import HostContext
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.facts.rotation import healthy, newest_each, status_line


class RotationStatus(Remediation):
    """Show the rotations recorded on each host: what, when, how far it got, which backup rolls it back.

    Never a value. An unfinished or rolled-back rotation fails the host (cron and monitoring notice).
    """

    task: ClassVar[str] = "rotation-status"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def run(self, ctx: HostContext) -> None:
        newest = newest_each(read_records(ctx.remote, ctx.host))
        if not newest:
            ctx.record("status", Status.OK, "no rotation recorded on this host")
            return
        for record in newest:
            ctx.record(
                f"{record.kind}:{record.name}",
                Status.OK if healthy(record) else Status.FAILED,
                status_line(record),
                rotation={k: v for k, v in record.to_dict().items() if k != "message"},
            )
