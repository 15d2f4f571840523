"""Remediations of ufw blocks.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "block-ip": "block_ip",
    "list-blocks": "list_blocks",
    "unblock-expired": "unblock_expired",
    "unblock-ip": "unblock_ip",
}
