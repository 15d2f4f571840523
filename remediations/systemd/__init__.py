"""Remediations of systemd services: restart-service.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "restart-service": "restart_service",
}
