"""Invoke front end: `inv --list`, `inv --help restart-api`, `inv restart-api --host prod`.

A thin layer: every task builds a remediation from `remediations` and hands it to
`remediations.cli.execute` with the common flags (--host, --inventory, --check, --diff, --json,
--parallel, --serial, --max-fail, --lock-wait). Exit code: 0 when no host failed, 1 when one did,
2 for bad input (nothing run).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from remediations.cli import COMMON_HELP, Flags, execute

COMMON_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
    for name, default in (
        ("host", None),
        ("inventory", None),
        ("check", False),
        ("diff", False),
        ("json", False),
        ("parallel", 10),
        ("serial", None),
        ("max_fail", None),
        ("lock_wait", 60),
    )
]
COMMON_NAMES = {p.name for p in COMMON_PARAMS}


def remediation_task(help: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """An Invoke task whose body receives `Flags` plus its own arguments; exits with the run's code."""

    def decorate(body: Callable[..., Any]) -> Any:
        own = list(inspect.signature(body).parameters.values())[2:]  # after (c, flags)

        def wrapper(c: Context, **kwargs: Any) -> None:
            flags = Flags(**{k: v for k, v in kwargs.items() if k in COMMON_NAMES})
            code = body(c, flags, **{k: v for k, v in kwargs.items() if k not in COMMON_NAMES})
            if code:
                raise Exit(code=code)

        context = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [context, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own), *COMMON_PARAMS]
        )
        wrapper.__name__ = body.__name__
        wrapper.__doc__ = body.__doc__
        return task(help={**COMMON_HELP, **(help or {})})(wrapper)

    return decorate


@remediation_task(
    help={
        "service": "compose service to restart (default: the host's api_service var)",
        "if-unhealthy": "restart only hosts whose service is not healthy (the idempotent, cron-safe form)",
    }
)
def restart_api(c: Context, flags: Flags, service: str | None = None, if_unhealthy: bool = False) -> int:
    """Restart the api service of each host's compose project and wait until it is healthy.

    Health is the container's Docker health status and the inventory's api_health_url, checked from
    the host. If a restart does not bring it back, the container is recreated once; if it is still
    unhealthy the host fails with the last health output and log lines, and the rollout stops.
    Hosts are restarted one at a time unless --serial says otherwise.
    """
    from remediations.restart_api import RestartApi

    code, _ = execute(
        lambda: RestartApi(service, if_unhealthy),
        flags,
        task="restart-api",
        arguments={"service": service, "if_unhealthy": if_unhealthy},
    )
    return code


@task(help={"extra-api-hosts": "run N bench hosts with the api project (for benchmarks); "
                               "default: keep those running now"})
def lab_up(c: Context, extra_api_hosts: int = -1) -> None:
    """Start the lab of real hosts on this machine (needs root): namespaces, sshd, dockerd, S3.

    Idempotent: repairs what a crashed run left half-built. Hosts are described by inventories/lab.yml.
    """
    from remediations import lab

    lab.print_status(lab.up(extra_api_hosts=None if extra_api_hosts < 0 else extra_api_hosts))


@task()
def lab_down(c: Context) -> None:
    """Stop the lab and remove everything it made (processes, namespaces, links, mounts)."""
    from remediations import lab

    lab.down()
    print("lab is down")


@task()
def lab_status(c: Context) -> None:
    """Show each lab host and which of its services are up."""
    from remediations import lab

    status = lab.status()
    lab.print_status(status)
    if not status.up:
        raise Exit("lab: something is down (inv lab.up repairs it)", code=3)


lab_ns = Collection("lab")
lab_ns.add_task(lab_up, "up")
lab_ns.add_task(lab_down, "down")
lab_ns.add_task(lab_status, "status")

ns = Collection(restart_api)
ns.add_collection(lab_ns)
