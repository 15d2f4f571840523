"""Remediations of compose services: restart, health, env files, images.

TASKS names each task of this folder and the module that declares it, so that `inv TASK` imports
that one module and not every remediation (see remediations/core/registry.py). A new remediation
here is its module plus one line below; tests/unit/core/test_task_index.py fails until it is there.
"""

TASKS = {
    "ensure-healthy": "ensure_healthy",
    "prune": "prune",
    "restart-api": "restart_api",
    "rollback": "rollback",
    "set-env": "set_env",
}
