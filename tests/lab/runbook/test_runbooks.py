"""The shipped runbooks on the lab: each breaks the thing it repairs, runs in check mode (nothing
changes), for real (repaired), and again (nothing to do); one is interrupted with SIGTERM mid-way and
resumed with --from. Always the real `inv` in a fresh process, as the on-call engineer types it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lab import hosts as lab_mod
from remediations.facts import envfile
from tests import labkit
from tests.labkit import inv

pytestmark = pytest.mark.lab

HOST = "api1"
FAST = {"health_timeout": 15}
RECORDS = "/var/lib/remediations/rotations.json"


def sh(host: str, script: str) -> str:
    return lab_mod.exec_on(host, ["sh", "-c", script], timeout=120).stdout.decode()


def fresh_shop(host: str) -> None:
    """The shop at its baseline with new api containers: health counts the error lines of the last
    24 h in their logs, and earlier tests may have left some there."""
    labkit.reset_shop(host, RECORDS)
    lab_mod.exec_on(host, [*labkit.COMPOSE, "up", "-d", "--force-recreate", "--wait", "api"], timeout=120)


@pytest.fixture
def shop(lab: Any) -> Iterator[None]:
    fresh_shop(HOST)
    yield
    labkit.reset_shop(HOST, RECORDS)


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return labkit.write_inventory(tmp_path / "inventory.yml", all_vars=FAST)


def runbook_records(audit: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in labkit.audit_lines(audit) if r["task"] == f"runbook:{name}"]


def test_api_down_check_then_repair_then_nothing(shop: None, audit: Path, inventory: Path) -> None:
    labkit.break_until_restart(HOST)
    labkit.wait_health(HOST, "unhealthy")
    started = labkit.started_at(HOST)

    check = inv("runbook", "api-down", "--host", HOST, "--check", "--json", audit=audit, inventory=inventory)
    assert check.code == 0, check.stderr + check.stdout
    [host] = json.loads(check.stdout)["hosts"]
    path = [(s["id"], s["status"]) for s in host["steps"]]
    assert path[:2] == [("probe", "failed"), ("restart", "changed")], path
    assert [p[0] for p in path] == ["probe", "restart", "verify", "tell-fixed"], path
    assert labkit.started_at(HOST) == started and labkit.health(HOST) == "unhealthy"

    real = inv("runbook", "api-down", "--host", HOST, audit=audit, inventory=inventory)
    assert real.code == 0, real.stderr + real.stdout
    assert "api-down on api1: changed" in real.stdout
    assert labkit.health(HOST) == "healthy" and labkit.started_at(HOST) != started
    records = runbook_records(audit, "api-down")
    real_ids = {r["run_id"] for r in records if not r["check"]}
    assert len(real_ids) == 1
    steps = [r["step"] for r in records if not r["check"]]
    assert steps == ["probe", "restart", "verify", "tell-fixed"], steps
    # the task the restart step ran is in the audit log under the runbook's run id
    [run_id] = real_ids
    assert any(r["task"] == "ensure-healthy" and r["run_id"] == run_id for r in labkit.audit_lines(audit))

    again = inv("runbook", "api-down", "--host", HOST, audit=audit, inventory=inventory)
    assert again.code == 0 and "api-down on api1: ok: probe ok" in again.stdout, again.stdout


def test_api_down_interrupted_mid_restart_resumes_with_from(shop: None, audit: Path, inventory: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    labkit.break_until_restart(HOST)
    labkit.wait_health(HOST, "unhealthy")
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "runbook", "api-down", "--host", HOST, "--inventory",
         str(inventory)],
        cwd=labkit.ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the restart step has begun changing the host
        if any(r["task"] == "ensure-healthy" and r["status"] == "started" for r in labkit.audit_lines(audit)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, out, err)
    state = json.loads((tmp_path / "runbooks" / f"api-down@{HOST}.json").read_text())
    assert state["next"] == "restart" and not state["finished"], state

    resumed = inv("runbook", "api-down", "--host", HOST, "--from", "restart", audit=audit,
                  inventory=inventory)  # fmt: skip
    assert resumed.code == 0, resumed.stderr + resumed.stdout
    assert labkit.health(HOST) == "healthy"
    records = runbook_records(audit, "api-down")
    assert {r["run_id"] for r in records} == {state["run_id"]}  # one run, in two parts
    assert [r["step"] for r in records][-2:] == ["verify", "tell-fixed"]


def test_secret_leaked_rotates_recreates_and_verifies(shop: None, audit: Path, inventory: Path) -> None:
    old = envfile.parse(sh(HOST, "cat /srv/shop/.env"))["DATABASE_PASSWORD"]
    check = inv("runbook", "secret-leaked", "--host", HOST, "--check", "--var", "key=DATABASE_PASSWORD",
                audit=audit, inventory=inventory)  # fmt: skip
    assert check.code == 0, check.stderr + check.stdout
    assert envfile.parse(sh(HOST, "cat /srv/shop/.env"))["DATABASE_PASSWORD"] == old
    real = inv("runbook", "secret-leaked", "--host", HOST, "--var", "key=DATABASE_PASSWORD",
               audit=audit, inventory=inventory)  # fmt: skip
    assert real.code == 0, real.stderr + real.stdout
    new = envfile.parse(sh(HOST, "cat /srv/shop/.env"))["DATABASE_PASSWORD"]
    assert new != old and labkit.health(HOST) == "healthy"
    assert sh(HOST, "ls /srv/shop/.env.*.bak").split()  # the old value kept in a backup
    for text in (real.stdout, real.stderr, audit.read_text()):
        assert new not in text and old not in text


BACKUPS = "/srv/backups-runbook"


@pytest.fixture
def old_backups(lab: Any) -> Iterator[None]:
    fresh_shop("api2")
    sh("api2", f"""rm -rf {BACKUPS}; mkdir -p {BACKUPS}
for d in 0 3 20 30; do
  head -c 4096 /dev/urandom > {BACKUPS}/db-$d.sql.gz; touch -d "$d days ago" {BACKUPS}/db-$d.sql.gz
done""")
    yield
    sh("api2", f"rm -rf {BACKUPS}")


def test_disk_full_removes_old_backups_and_keeps_the_newest(old_backups: None, audit: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={
        "api2": {"backup_dir": BACKUPS, "backup_keep_newest": 2}})  # fmt: skip
    listing = lambda: sorted(sh("api2", f"ls {BACKUPS}").split())  # noqa: E731
    check = inv("runbook", "disk-full", "--host", "api2", "--check", "--var", "keep_days=7",
                audit=audit, inventory=inventory)  # fmt: skip
    assert check.code == 0, check.stderr + check.stdout
    assert listing() == ["db-0.sql.gz", "db-20.sql.gz", "db-3.sql.gz", "db-30.sql.gz"]
    given = ("--host", "api2", "--var", "keep_days=7")
    real = inv("runbook", "disk-full", *given, audit=audit, inventory=inventory)
    assert real.code == 0, real.stderr + real.stdout
    assert listing() == ["db-0.sql.gz", "db-3.sql.gz"]
    assert "disk-full on api2: changed" in real.stdout
    again = inv("runbook", "disk-full", *given, audit=audit, inventory=inventory)
    assert again.code == 0 and "cleanup ok" in again.stdout, again.stdout
    assert listing() == ["db-0.sql.gz", "db-3.sql.gz"]


ACCESS_KEY = "AKIALABTESTKEY00042"
SECRET_KEY = "lab-secret-key-runbook-never-printed"  # noqa: S105 - a fake, to prove it is never printed


def test_media_deleted_previews_pauses_for_approval_then_restores(lab: Any, audit: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": lab_mod.S3_ENDPOINT}  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=lab_mod.S3_ENDPOINT, region_name="us-east-1",
                      aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)  # fmt: skip
    name = f"rm-rb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for i in range(3):
        s3.put_object(Bucket=name, Key=f"media/{i}.jpg", Body=f"photo {i}".encode())
    time.sleep(1.1)  # the endpoint keeps whole seconds
    at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    time.sleep(1.1)
    for i in range(3):
        s3.delete_object(Bucket=name, Key=f"media/{i}.jpg")
    given = ("--var", f"bucket={name}", "--var", "prefix=media/", "--var", f"at={at}")

    check = inv("runbook", "media-deleted", "--check", "--json", *given, audit=audit, env=env)
    assert check.code == 0, check.stderr + check.stdout
    [host] = json.loads(check.stdout)["hosts"]
    path = [(s["id"], s["status"]) for s in host["steps"]]
    assert path[:2] == [("preview", "changed"), ("restore", "changed")], path
    assert host["steps"][1]["note"] == "a real run asks for approval here"
    assert "Contents" not in s3.list_objects_v2(Bucket=name, Prefix="media/")

    paused = inv("runbook", "media-deleted", *given, audit=audit, env=env, stdin="")
    assert paused.code == 3, paused.stderr + paused.stdout  # waiting for a person: nothing restored
    assert "waiting for approval" in paused.stdout and "--from restore --yes" in paused.stdout
    assert "Contents" not in s3.list_objects_v2(Bucket=name, Prefix="media/")

    done = inv("runbook", "media-deleted", "--from", "restore", "--yes", *given, audit=audit, env=env)
    assert done.code == 0, done.stderr + done.stdout
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix="media/")["Contents"])
    assert keys == ["media/0.jpg", "media/1.jpg", "media/2.jpg"]
    assert s3.get_object(Bucket=name, Key="media/1.jpg")["Body"].read() == b"photo 1"
    for text in (paused.stdout, paused.stderr, done.stdout, done.stderr, audit.read_text()):
        assert SECRET_KEY not in text
