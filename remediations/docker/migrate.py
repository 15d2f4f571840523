"""migrate: the seeds' alembic step in a compose service: `alembic upgrade head`, then `alembic
current` must print what `alembic heads` prints. Idempotent: a database already at head is ok and
nothing is run.

facts, decide, apply, verify: actions.service_command (shared with run-in-service).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from remediations.actions.service_command import (
    DEFAULT_TIMEOUT,
    ServiceCommand,
    Verify,
    timeout_seconds,
    via_choice,
)
from remediations.core.args import SERVICE, Arg, args

UPGRADE = ("alembic", "upgrade", "head")
ALEMBIC = Verify(("alembic", "current"), ("alembic", "heads"), "alembic")


class Migrate(ServiceCommand):
    """Apply the database migrations of a compose service: `alembic upgrade head` in it, proven by
    `alembic current` printing what `alembic heads` prints.

    Both alembic reads run first (in check mode too): at head already, nothing is run (ok).
    Otherwise `alembic upgrade head` runs in the service's running container (`compose exec -T`), or
    in a one-off one when none runs (`compose run --rm --no-deps -T`; --via says which), under the
    host lock, its output shown with secrets masked; then current must equal heads, or the host fails.
    Other migration tools: run-in-service with --verify / --expect-same-as.
    """

    task: ClassVar[str] = "migrate"
    params = args(
        replace(SERVICE, help="compose service whose image has alembic (default: the host's "
                              "api_service var)"),
        Arg("via", "auto (default): exec into the running container, else a one-off container; exec; run",
            parse=via_choice, default="auto", example="run"),
        Arg("timeout", f"how long `alembic upgrade head` may run, a duration such as 10m or 1h (default "
                       f"{DEFAULT_TIMEOUT / 60:g}m)", parse=timeout_seconds, example="30m"),
    )  # fmt: skip

    def __init__(self, service: str | None = None, via: str = "auto", timeout: float | None = None) -> None:
        super().__init__(service, UPGRADE, ALEMBIC, via, timeout or DEFAULT_TIMEOUT)

    def arguments(self) -> dict[str, Any]:
        return {"service": self.service, "via": self.via, "timeout": self.timeout}
