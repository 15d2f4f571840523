"""The lab as Invoke tasks, for development: `inv -r lab --list`, `inv -r lab up`.

Kept out of the project's tasks.py on purpose: `inv --list` is the on-call engineer's list of
remediations, and building or tearing down test hosts has no place in it. `-r lab` (--search-root)
makes Invoke load this file instead; `python -m lab up|down|status` does the same without Invoke.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

# Invoke puts only this folder on sys.path; the `lab` package is imported from the checkout above it.
_CHECKOUT = str(Path(__file__).resolve().parent.parent)
if _CHECKOUT not in sys.path:
    sys.path.insert(0, _CHECKOUT)

from lab import hosts  # noqa: E402


@task(help={"extra-api-hosts": "run N bench hosts with the api project (for benchmarks); "
                               "default: keep those running now",
            "fleet": "run N sshd-only fleet hosts; default: leave the fleet as it is",
            "systemd": "boot the systemd host svc1 (systemd-nspawn); default: leave it be"})  # fmt: skip
def up(c: Context, extra_api_hosts: int = -1, fleet: int = -1, systemd: bool = False) -> None:
    """Start the lab of real hosts on this machine (needs root): namespaces, sshd, dockerd, S3.

    Idempotent: repairs what a crashed run left half-built. Hosts are described by inventories/lab.yml.
    """
    extra = None if extra_api_hosts < 0 else extra_api_hosts
    hosts.print_status(hosts.up(extra_api_hosts=extra, fleet=None if fleet < 0 else fleet,
                                systemd=True if systemd else None))


@task()
def down(c: Context) -> None:
    """Stop the lab and remove everything it made (processes, namespaces, links, mounts)."""
    hosts.down()
    print("lab is down")


@task()
def status(c: Context) -> None:
    """Show each lab host and which of its services are up."""
    lab_status = hosts.status()
    hosts.print_status(lab_status)
    if not lab_status.up:
        raise Exit("lab: something is down (inv -r lab up repairs it)", code=3)


ns = Collection(up, down, status)
