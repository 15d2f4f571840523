"""Remediations of PostgreSQL backups, WAL and restore drills.

TASKS names each task of this folder and the module that declares it, so that `inv TASK` imports
that one module and not every remediation (see remediations/core/registry.py). A new remediation
here is its module plus one line below; tests/unit/core/test_task_index.py fails until it is there.
"""

TASKS = {
    "backup-check": "backup_check",
    "base-backup": "base_backup",
    "restore-db": "restore_db",
    "restore-pitr": "restore_pitr",
    "restore-test": "restore_drill",
    "wal-cleanup": "wal_cleanup",
}
