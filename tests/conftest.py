"""Shared fixtures: the lab of real hosts is brought up once per test session, on demand."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import hosts as lab_mod


@pytest.fixture(scope="session")
def lab() -> Iterator[lab_mod.LabStatus]:
    """The lab of real hosts (sshd, dockerd, PostgreSQL, S3 in network namespaces), up and healthy.

    Built (or repaired) once per session. It is left up at the end, so a developer can look at it;
    `scripts/test` takes it down when the whole run ends.
    """
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, dockerd)")
    status = lab_mod.up(extra_api_hosts=0)  # the baseline: no bench hosts left by a benchmark
    assert status.up, f"lab did not come up: {status.to_dict()}"
    yield status


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    """The audit log a test's runs write (REMEDIATIONS_AUDIT_LOG), one per test."""
    return tmp_path / "audit.jsonl"
