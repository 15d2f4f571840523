"""Remediations of the host itself: health, disk, cron.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "disk-cleanup": "disk_cleanup",
    "health": "health",
    "install-cron": "install_cron",
}
