"""Remediations of S3 buckets and point-in-time restores.

TASKS names each task of this folder and the module that declares it, so that `inv TASK` imports
that one module and not every remediation (see remediations/core/registry.py). A new remediation
here is its module plus one line below; tests/unit/core/test_task_index.py fails until it is there.
"""

TASKS = {
    "restore-s3-object": "restore_object",
    "restore-s3-prefix": "restore_prefix",
    "s3-bucket-check": "bucket_check",
}
