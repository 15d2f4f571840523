"""ensure-healthy, set-env and rollback on the lab (host api1): real dockerd, compose, env files, images."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from tests import labkit
from tests.labkit import COMPOSE, inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

HOST = "api1"
ENV = "/srv/shop/.env"
BASELINE_ENV = (lab_mod.ASSETS / "env").read_text()
FAST = {"health_timeout": 10}


def sh(script: str, check: bool = True) -> str:
    return lab_mod.exec_on(HOST, ["sh", "-c", script], check=check, timeout=120).stdout.decode()


def container(service: str) -> dict[str, Any]:
    ids = sh(f"cd /srv/shop && {' '.join(COMPOSE)} ps -a -q {service}").split()
    assert len(ids) == 1, ids
    return json.loads(sh(f"docker inspect {ids[0]}"))[0]  # type: ignore[no-any-return]


def env_of(service: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container(service)["Config"]["Env"])


def reset() -> None:
    """The baseline: the lab's .env, local/busybox:1 as built, no image record, everything healthy."""
    labkit.reset_shop(HOST)


@pytest.fixture
def baseline(lab: Any) -> Iterator[None]:
    reset()
    yield
    reset()


# ------------------------------------------------------------------------------------------ set-env


def test_set_env_quartet_backup_and_mode(baseline: None, audit: Path) -> None:
    started = labkit.started_at(HOST)
    runs = quartet("set-env", "--host", HOST, "--service", "api", "--set", "MAINTENANCE_MODE=1", "--diff",
                   hosts=[HOST], audit=audit, state=lambda: (sh(f"cat {ENV}"), labkit.started_at(HOST)))
    assert "would set MAINTENANCE_MODE: '0' → '1'" in runs.check.host(HOST)["message"]
    assert "+MAINTENANCE_MODE=1" in runs.check.stdout
    # the apply says, as the check did, that the worker (it reads .env too) keeps the old value
    sharing = "worker also read(s) this file and keep the old values until recreated"
    assert sharing in runs.check.host(HOST)["message"] and sharing in runs.apply.host(HOST)["message"]

    text = sh(f"cat {ENV}")
    assert text == BASELINE_ENV.replace("MAINTENANCE_MODE=0", "MAINTENANCE_MODE=1")  # order and rest kept
    assert env_of("api")["MAINTENANCE_MODE"] == "1"
    assert env_of("worker")["MAINTENANCE_MODE"] == "0"  # only the named service is recreated
    assert labkit.health(HOST) == "healthy" and labkit.started_at(HOST) != started
    backups = sh(f"ls {ENV}.*.bak").split()
    assert len(backups) == 1 and sh(f"cat {backups[0]}") == BASELINE_ENV  # the second apply made none
    for path in (ENV, backups[0]):
        mode = int(sh(f"stat -c %a {path}").strip(), 8)
        assert stat.S_IMODE(mode) == 0o600, (path, oct(mode))


def test_set_env_masks_secret_values_everywhere(baseline: None, audit: Path) -> None:
    secret = "rotated-db-pass-5b1e"  # noqa: S105 (a test value to search for)
    ran = inv("set-env", "--host", HOST, "--service", "api", "--set", f"DATABASE_PASSWORD={secret}",
              "--diff", "--json", audit=audit)  # fmt: skip
    assert ran.code == 0, ran.stderr + ran.stdout
    assert env_of("api")["DATABASE_PASSWORD"] == secret
    assert "DATABASE_PASSWORD" in ran.stdout and "*****" in ran.stdout
    for text in (ran.stdout, ran.stderr, audit.read_text(), "lab-db-secret-1"):
        assert secret not in text
    assert "lab-db-secret-1" not in ran.stdout + audit.read_text()  # the old value is secret too


def test_set_env_unhealthy_after_change_restores_the_backup(baseline: None, audit: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    inventory = labkit.write_inventory(tmp_path / "inv.yml", all_vars=FAST)
    ran = inv("set-env", "--host", HOST, "--service", "api", "--set", "LAB_BREAK_HEALTH=1", "--json",
              audit=audit, inventory=inventory)  # fmt: skip
    assert ran.code == 1, ran.stdout
    result = ran.host(HOST)
    assert result["status"] == "failed"
    assert "restored from" in result["message"] and "healthy again" in result["message"]
    assert sh(f"cat {ENV}") == BASELINE_ENV
    assert "LAB_BREAK_HEALTH" not in env_of("api") and labkit.health(HOST) == "healthy"


def test_set_env_bad_input_changes_nothing(baseline: None, audit: Path) -> None:
    for args, needle in (
        (["--set", "NOEQUALS"], "is not NAME=VALUE"),
        (["--set", "1BAD=x"], "is not NAME=VALUE"),
        ([], "nothing to change"),
        (["--set", "A=1", "--unset", "A"], "both set and unset"),
    ):
        ran = inv("set-env", "--host", HOST, "--service", "api", *args, audit=audit)
        assert ran.code == 2, (args, ran.stdout, ran.stderr)
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], ran.stderr
    unknown = inv("set-env", "--host", HOST, "--service", "nosuch", "--set", "A=1", "--json", audit=audit)
    assert unknown.code == 1 and "unknown service 'nosuch'" in unknown.host(HOST)["message"]
    assert sh(f"cat {ENV}") == BASELINE_ENV


# ------------------------------------------------------------------------------------ ensure-healthy


def test_ensure_healthy_quartet_starts_a_stopped_service_only(baseline: None, audit: Path) -> None:
    sh(f"cd /srv/shop && {' '.join(COMPOSE)} stop -t 1 worker")
    api_started = labkit.started_at(HOST)
    runs = quartet("ensure-healthy", "--host", HOST, hosts=[HOST], audit=audit,
                   state=lambda: (container("worker")["State"]["Status"], labkit.started_at(HOST)))
    steps = {s["step"]: s for s in runs.check.host(HOST)["steps"]}
    assert steps["worker"]["status"] == "changed" and "would start worker" in steps["worker"]["message"]
    assert steps["api"]["status"] == "ok"
    assert container("worker")["State"]["Status"] == "running"
    assert labkit.started_at(HOST) == api_started  # the healthy service was not touched


def test_ensure_healthy_restarts_an_unhealthy_service(baseline: None, audit: Path) -> None:
    labkit.break_until_restart(HOST)
    labkit.wait_health(HOST, "unhealthy")
    ran = inv("ensure-healthy", "--host", HOST, "--service", "api", "--json", audit=audit)
    assert ran.code == 0, ran.stdout
    steps = {s["step"]: s for s in ran.host(HOST)["steps"]}
    assert steps["api: restart"]["status"] == "changed"
    assert "worker" not in steps  # only the named service
    assert labkit.health(HOST) == "healthy"


# ------------------------------------------------------------------------------------------ rollback


def test_rollback_without_a_record_fails_clearly(baseline: None, audit: Path) -> None:
    ran = inv("rollback", "--host", HOST, "--service", "api", "--json", audit=audit)
    assert ran.code == 1
    assert "no previous image known for api" in ran.host(HOST)["message"]


def test_rollback_quartet_after_an_image_change(baseline: None, audit: Path) -> None:
    old_image = container("api")["Image"]
    # A new image under the same name (no registry here: commit the running container), then a change
    # that recreates api, so it runs the new image and the record says what ran before.
    sh(f"docker commit {container('api')['Id']} local/busybox:1")
    try:
        changed = inv("set-env", "--host", HOST, "--service", "api", "--set", "MAINTENANCE_MODE=1", "--json",
                      audit=audit)  # fmt: skip
        assert changed.code == 0, changed.stdout
        new_image = container("api")["Image"]
        assert new_image != old_image

        runs = quartet("rollback", "--host", HOST, "--service", "api", hosts=[HOST], audit=audit,
                       state=lambda: container("api")["Image"])
        assert container("api")["Image"] == old_image and labkit.health(HOST) == "healthy"
        for ran in (runs.again, runs.check_again):
            assert "already runs" in ran.host(HOST)["message"]
    finally:
        sh(f"docker tag {old_image} local/busybox:1")
        sh("docker image prune -f", check=False)
