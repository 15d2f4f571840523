"""remediations: idempotent, Ansible-style remediations for docker compose hosts.

Use it from Python without Invoke:

    from remediations.core import inventory
    from remediations.core.engine import Engine
    from remediations.core.options import RunOptions
    from remediations.docker.restart_api import RestartApi

    inv = inventory.load("inventories/hosts.yml")
    run = Engine(inv, RunOptions(check=True)).run(RestartApi(), inv.select("prod"))

This module stays import-light so that `inv --list` is quick.
"""

__version__ = "0.1.0"
