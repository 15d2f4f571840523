"""Ansible's own answers for the host patterns table (tests/unit/core/test_patterns_oracle.py).

Run by the ansible-core of .venv-oracle (never imported by the tests): reads
{"inventories": {name: path}, "cases": [[name, pattern], ...]} as JSON on stdin and prints, per case,
{"hosts": [...], "warnings": [...]} or {"error": "..."}: what `ansible -i INV PATTERN --list-hosts`
lists (InventoryManager.list_hosts) and the warnings it gives.
"""

import json
import sys

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.utils.display import Display

warnings: list[str] = []
Display().warning = lambda msg, *args, **kwargs: warnings.append(str(msg))  # type: ignore[method-assign]

request = json.load(sys.stdin)
loader = DataLoader()
answers = []
for name, pattern in request["cases"]:
    # a fresh inventory per case: Ansible keeps an implicit localhost once one was asked for
    manager = InventoryManager(loader=loader, sources=[request["inventories"][name]])
    warnings.clear()
    try:
        hosts = [h if isinstance(h, str) else h.name for h in manager.list_hosts(pattern)]
        answers.append({"hosts": hosts, "warnings": list(warnings)})
    except Exception as exc:  # the answer is whatever Ansible says
        answers.append({"error": f"{type(exc).__name__}: {exc}"})
json.dump(answers, sys.stdout)
