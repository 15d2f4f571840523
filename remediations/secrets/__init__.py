"""Remediations of secret rotation.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "rotate-aws-key": "rotate_aws_key",
    "rotate-db-password": "rotate_db_password",
    "rotate-secret": "rotate_secret",
    "rotation-status": "rotation_status",
}
