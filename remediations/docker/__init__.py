"""Remediations of compose services: restart, health, env files, images.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "deploy": "deploy",
    "ensure-healthy": "ensure_healthy",
    "logs": "logs",
    "migrate": "migrate",
    "prune": "prune",
    "restart-api": "restart_api",
    "rollback": "rollback",
    "run-in-service": "run_in_service",
    "set-env": "set_env",
}
