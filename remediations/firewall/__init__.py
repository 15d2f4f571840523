"""Remediations of ufw blocks.

TASKS names each task of this folder and the module that declares it, so that `inv TASK` imports
that one module and not every remediation (see remediations/core/registry.py). A new remediation
here is its module plus one line below; tests/unit/core/test_task_index.py fails until it is there.
"""

TASKS = {
    "block-ip": "block_ip",
    "list-blocks": "list_blocks",
    "unblock-expired": "unblock_expired",
    "unblock-ip": "unblock_ip",
}
