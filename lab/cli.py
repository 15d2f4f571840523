"""The command line: ``python -m lab up|down|status`` (see lab.hosts)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from lab.base import (
    BRIDGE,
    FLEET_BRIDGE,
    FLEET_INVENTORY,
    FLEET_SUBNET,
    LAB_ROOT,
    SYSTEMD_HOST,
    LabError,
    LabStatus,
)
from lab.control import down, fleet, fleet_status, status, up

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def print_status(st: LabStatus) -> None:
    def mark(value: bool | None) -> str:
        return "-" if value is None else ("up" if value else "DOWN")

    print(f"bridge {BRIDGE}: {mark(st.bridge)}   s3 {st.s3_endpoint}: {mark(st.moto)}   "
          f"systemd host {SYSTEMD_HOST.name} {SYSTEMD_HOST.address}: {mark(st.systemd)}")
    print(f"{'host':<9} {'address':<13} {'roles':<16} netns mntns sshd dockerd postgres")
    for h in st.hosts.values():
        print(
            f"{h.name:<9} {h.address:<13} {','.join(h.roles):<16} {mark(h.netns):<5} "
            f"{mark(h.mountns):<5} {mark(h.sshd):<4} {mark(h.dockerd):<7} {mark(h.postgres)}"
        )


def print_fleet() -> None:
    wanted, answering = fleet_status()
    if wanted:
        print(f"fleet {FLEET_BRIDGE} {FLEET_SUBNET}: {answering}/{wanted} hosts answer on :22 "
              f"(inventory {FLEET_INVENTORY})")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from lab import hosts  # the lab's overview is the docstring of its public face

    parser = argparse.ArgumentParser(prog="python -m lab", description=hosts.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build or repair the lab")
    p_up.add_argument("--extra-api-hosts", type=int, default=None, metavar="N",
                      help="bench hosts to run (default: keep those running now)")
    p_up.add_argument("--fleet", type=int, default=None, metavar="N",
                      help="sshd-only fleet hosts to run (default: leave the fleet as it is)")
    p_up.add_argument("--systemd", action=argparse.BooleanOptionalAction, default=None,
                      help="boot (--no-systemd: remove) the systemd host svc1, a debootstrap tree under "
                           "systemd-nspawn (default: leave it as it is)")
    p_fleet = sub.add_parser("fleet", help="run N sshd-only fleet hosts (0: remove the fleet)")
    p_fleet.add_argument("count", type=int, metavar="N")
    p_down = sub.add_parser("down", help="stop and remove everything")
    p_down.add_argument("--purge", action="store_true", help=f"also delete {LAB_ROOT}")
    p_status = sub.add_parser("status", help="show what runs")
    p_status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="lab: %(message)s"
    )
    try:
        if args.command == "up":
            print_status(up(args.extra_api_hosts, args.fleet, args.systemd))
        elif args.command == "fleet":
            fleet(args.count)
            print_fleet()
        elif args.command == "down":
            down(purge=args.purge)
        elif args.json:
            print(json.dumps(status().to_dict(), indent=2))
        else:
            st = status()
            print_status(st)
            print_fleet()
            return 0 if st.up else 3
    except LabError as exc:
        print(f"lab {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0
