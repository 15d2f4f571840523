"""Runbooks: the seeds' incident playbooks as declared sequences of this library's tasks.

A runbook (YAML, `spec.py`) is a list of steps: read-only checks, remediations, notifications, with
`when` conditions on earlier steps' results, `on_failure`, retries, timeouts and approvals. `runner.py`
runs one on each selected host, in check mode (every check for real, every remediation in its own
check mode) or for real (each step recorded in the audit log under one run id, resumable with
`--from`). The layer sits above the domains: it reaches remediations only through the registry.
"""
