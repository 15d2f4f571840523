"""A lab of real hosts on one machine, for the remediations' tests and benchmarks.

Every lab host is a Linux network namespace plus a persistent private mount namespace, joined to
the controller by a veth pair on the bridge ``rmlab0`` (198.18.0.0/24, no NAT, no forwarding).
Inside its namespaces each host runs its own ``sshd`` and, by role, its own ``dockerd`` (with the
compose project ``shop`` in ``/srv/shop``) or a PostgreSQL cluster. A moto S3 server listens on
the controller side of the bridge.

Usage (as root)::

    python -m lab up [--extra-api-hosts N] [--fleet N]
    python -m lab fleet N          # N sshd-only hosts on rmfleet0 (lab.fleet); 0 removes them
    python -m lab status [--json]
    python -m lab down [--purge]

Layout: persistent data (keys, per-host folders, image tarball) under ``LAB_ROOT``; namespace
handles under ``/run/remediations-lab`` and ``/run/netns``. ``down`` stops every process and
removes every namespace, link and mount but keeps the data, so the next ``up`` is quick.
"""

# The public face of the lab, for the tests, the scripts and `python -m lab`. The code lives in
# modules by subject: lab.base (constants, errors, data types, running commands), lab.procs,
# lab.state, lab.net, lab.mounts, lab.ssh, lab.docker, lab.postgres, lab.s3, lab.clients,
# lab.cron, lab.ops (exec_on and faults), lab.control (up, down, status), lab.cli.

from __future__ import annotations

import sys

from lab.base import ASSETS as ASSETS
from lab.base import BENCH_INVENTORY as BENCH_INVENTORY
from lab.base import BRIDGE_ADDRESS as BRIDGE_ADDRESS
from lab.base import FLEET_INVENTORY as FLEET_INVENTORY
from lab.base import FLEET_SUBNET as FLEET_SUBNET
from lab.base import KNOWN_HOSTS as KNOWN_HOSTS
from lab.base import LAB_ROOT as LAB_ROOT
from lab.base import PG_DATA as PG_DATA
from lab.base import PG_VERSION as PG_VERSION
from lab.base import PG_WAL_ARCHIVE as PG_WAL_ARCHIVE
from lab.base import S3_BACKUP_BUCKET as S3_BACKUP_BUCKET
from lab.base import S3_ENDPOINT as S3_ENDPOINT
from lab.base import S3_PORT as S3_PORT
from lab.base import SSH_KEY as SSH_KEY
from lab.base import LabCommandError as LabCommandError
from lab.base import LabError as LabError
from lab.base import LabStatus as LabStatus
from lab.base import LabTimeoutError as LabTimeoutError
from lab.cli import main as main
from lab.cli import print_status as print_status
from lab.clients import Client as Client
from lab.clients import client as client
from lab.control import down as down
from lab.control import fleet as fleet
from lab.control import status as status
from lab.control import systemd_host as systemd_host
from lab.control import up as up
from lab.cron import cron_daemon as cron_daemon
from lab.ops import cut_link as cut_link
from lab.ops import exec_on as exec_on
from lab.ops import heal_link as heal_link
from lab.ops import kill_ssh_sessions as kill_ssh_sessions
from lab.ops import popen_on as popen_on
from lab.ops import start_sshd as start_sshd
from lab.ops import stop_sshd as stop_sshd

if __name__ == "__main__":
    sys.exit(main())
