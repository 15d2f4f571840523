"""Remediations of compose services: restart, health, env files, images.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "deploy": "deploy",
    "ensure-healthy": "ensure_healthy",
    "prune": "prune",
    "restart-api": "restart_api",
    "rollback": "rollback",
    "set-env": "set_env",
}
