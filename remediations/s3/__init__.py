"""Remediations of S3 buckets and point-in-time restores.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "restore-s3-object": "restore_object",
    "restore-s3-prefix": "restore_prefix",
    "s3-bucket-check": "bucket_check",
}
