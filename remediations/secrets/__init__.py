"""Remediations of secret rotation.

TASKS names each task of this folder and the module that declares it, so that `inv TASK` imports
that one module and not every remediation (see remediations/core/registry.py). A new remediation
here is its module plus one line below; tests/unit/core/test_task_index.py fails until it is there.
"""

TASKS = {
    "rotate-aws-key": "rotate_aws_key",
    "rotate-db-password": "rotate_db_password",
    "rotate-secret": "rotate_secret",
    "rotation-status": "rotation_status",
}
