"""run-in-service: run one command inside a compose service (`inv run-in-service --host H --service api
-- alembic upgrade head`), under the host lock, gated and proven by a declared verify.

facts, decide, apply, verify: actions.service_command (shared with migrate).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from remediations.actions.service_command import (
    DEFAULT_TIMEOUT,
    ServiceCommand,
    Verify,
    command_words,
    split_command,
    timeout_seconds,
    via_choice,
)
from remediations.core.args import SERVICE, Arg, args
from remediations.core.errors import UsageError

VIA = Arg("via", "auto (default): exec into the running container, else a one-off container; exec: "
                 "only into a running one; run: always a one-off container (compose run --rm --no-deps)",
          parse=via_choice, default="auto", example="run")  # fmt: skip
TIMEOUT = Arg("timeout", f"how long the command may run, a duration such as 10m or 1h (default "
                         f"{DEFAULT_TIMEOUT / 60:g}m)", parse=timeout_seconds, example="30m")  # fmt: skip


class RunInService(ServiceCommand):
    """Run a command inside a compose service: inv run-in-service --host H --service api -- CMD ARG….

    The words after `--` are the command, passed as they are (each one quoted on the host, never
    read by a shell); the task's own flags go before `--`. It runs with `compose exec -T` in the
    service's running container, or (none running, or --via run) in a one-off container, `compose run
    --rm --no-deps -T`; under the host lock; its output (the last 200 lines) is shown with secrets
    masked and its exit status reported (not 0: the host fails).

    With a verify, the command is run only when needed and its effect is proven: --verify CMD
    --expect-same-as CMD2 holds when the two print the same lines (`alembic current` and `alembic
    heads`); --verify CMD alone holds when CMD exits 0; --verify-check NAME takes both from the
    host's service_checks var. The verify runs first, in check mode too (it must be read-only): when
    it holds, nothing is run (ok); after the command it must hold, or the host fails.
    """

    task: ClassVar[str] = "run-in-service"
    params = args(
        replace(SERVICE, help="compose service to run the command in (default: the host's api_service var)"),
        Arg("command", "give the command to run after --, e.g. -- alembic upgrade head", kind="rest",
            parse=lambda v, f: command_words(v, f), required=True),
        Arg("verify", "a read-only command that says whether the command is needed and proves it "
                      "worked: it holds when it exits 0, or with --expect-same-as when both print the "
                      "same", parse=split_command, example="'alembic current'"),
        Arg("expect_same_as", "the command whose output --verify's must equal",
            parse=split_command, example="'alembic heads'"),
        Arg("verify_check", "a verify named in the host's service_checks var instead of --verify",
            example="migrations"),
        VIA,
        TIMEOUT,
    )  # fmt: skip

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunInService:
        verify, same_as, named = values["verify"], values["expect_same_as"], values["verify_check"]
        if same_as and not verify:
            raise UsageError("--expect-same-as compares with --verify's output: give --verify CMD too")
        if named and verify:
            raise UsageError("--verify-check and --verify both say what proves the command: give one")
        if named is not None and not str(named).strip():
            raise UsageError("--verify-check '': give the name of a service_checks entry")
        return cls(
            values["service"], values["command"], Verify(verify, same_as or ()) if verify else None,
            values["via"], values["timeout"] or DEFAULT_TIMEOUT, named,
        )  # fmt: skip
