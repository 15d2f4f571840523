"""Remediations of PostgreSQL backups, WAL and restore drills.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "backup-check": "backup_check",
    "base-backup": "base_backup",
    "db-health": "db_health",
    "restart-db": "restart_db",
    "restore-db": "restore_db",
    "restore-pitr": "restore_pitr",
    "restore-test": "restore_drill",
    "wal-cleanup": "wal_cleanup",
}
