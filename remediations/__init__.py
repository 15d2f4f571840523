"""remediations: idempotent, Ansible-style remediations for docker compose hosts.

Use it from Python without Invoke:

    from remediations import api
    result = api.run("restart-api", host="prod", inventory="inventories/prod.yml")

The facade lives in `remediations.api`; this module stays import-light so `inv --list` is quick.
"""

__version__ = "0.1.0"
