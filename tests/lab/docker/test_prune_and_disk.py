"""prune, disk-cleanup and health end to end on the lab: real dockerd, real files, the real `inv`.

Only api2 and db1 are used (another suite works on api1). Every Docker object a test makes is named
`rmtest-…` (images: tagged `rmtest/…` or labelled rmtest=1) and removed afterwards; the shop project
and local/busybox:1 are never removed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from tests import labkit
from tests.labkit import inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

HOST = "api2"
BACKUPS = "/srv/rmtest-backups"
OUTSIDE = "/srv/rmtest-outside"
FULL = "/srv/rmtest-full"

CLEANUP = r"""
docker ps -aq --filter name=rmtest- | xargs -r docker rm -f >/dev/null
docker image ls -q --filter label=rmtest=1 | sort -u | xargs -r docker rmi -f >/dev/null 2>&1
docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^rmtest/' | xargs -r docker rmi -f >/dev/null
docker volume ls -q --filter name=rmtest- | xargs -r docker volume rm -f >/dev/null
docker network ls -q --filter name=rmtest- | xargs -r docker network rm >/dev/null
"""


def sh(host: str, script: str, check: bool = True) -> str:
    return lab.exec_on(host, ["sh", "-c", script], check=check, timeout=120).stdout.decode()


def exists(kind: str, name: str) -> bool:
    done = lab.exec_on(HOST, ["docker", kind, "inspect", name], check=False)
    return done.returncode == 0


def make_stopped_container(name: str, kib: int = 256) -> None:
    """A stopped container whose writable layer holds `kib` KiB."""
    sh(HOST, f"docker run --name {name} local/busybox:1 sh -c "
             f"'busybox dd if=/dev/urandom of=/blob bs=1k count={kib} 2>/dev/null'")  # fmt: skip


def make_image(tag: str | None) -> str:
    """A new image (its own ID, 128 KiB layer) from a throwaway container; untagged: dangling."""
    source = f"rmtest-src-{uuid.uuid4().hex[:6]}"
    make_stopped_container(source, 128)
    argv = ["docker", "commit", "--change", "LABEL rmtest=1", source] + ([tag] if tag else [])
    image_id = lab.exec_on(HOST, argv).stdout.decode().strip()
    sh(HOST, f"docker rm {source}")
    return image_id


def shop_running() -> list[str]:
    out = sh(HOST, "docker ps --filter label=com.docker.compose.project=shop --format '{{.Names}}'")
    return sorted(out.split())


@pytest.fixture
def docker_clean(lab: Any) -> Iterator[None]:
    sh(HOST, CLEANUP, check=False)
    yield
    sh(HOST, CLEANUP, check=False)


def steps(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in result["steps"]}


# --- prune ---------------------------------------------------------------------------------------


def test_prune_quartet(docker_clean: None, audit: Path) -> None:
    """check → changed, nothing removed; apply → changed; apply again → ok; check again → ok."""
    make_stopped_container("rmtest-stopped", 512)
    dangling = make_image(None)
    unused = make_image("rmtest/unused:1")
    sh(HOST, "docker network create rmtest-net >/dev/null && docker volume create rmtest-orphan >/dev/null")
    shop_before = shop_running()

    dangling_only = inv("prune", "--host", HOST, "--older-than", "0s", "--check", "--json", audit=audit)
    assert dangling_only.code == 0, dangling_only.stderr
    listed = dangling_only.host(HOST)["steps"][-1]["data"]
    assert [i["id"] for i in listed["images"]] == [dangling.removeprefix("sha256:")[:12]]

    objects = (("container", "rmtest-stopped"), ("image", dangling), ("image", unused),
               ("network", "rmtest-net"))  # fmt: skip
    calm = inv("prune", "--host", HOST, "--older-than", "0s", "--all", "--if-disk-above", "99", "--json",
               audit=audit)  # fmt: skip
    assert calm.code == 0 and calm.host(HOST)["status"] == "ok", calm.stdout
    assert "is not above 99%" in calm.host(HOST)["message"]
    assert exists("container", "rmtest-stopped") and exists("image", dangling)
    # --if-disk-above 0: Docker's filesystem is fuller than 0%, so it would act.
    fuller = inv("prune", "--host", HOST, "--older-than", "0s", "--all", "--if-disk-above", "0", "--check",
                 "--json", audit=audit)  # fmt: skip
    assert fuller.code == 0 and fuller.host(HOST)["status"] == "changed", fuller.stdout

    runs = quartet("prune", "--host", HOST, "--older-than", "0s", "--all", hosts=[HOST], audit=audit,
                   state=lambda: [exists(kind, name) for kind, name in objects])
    result = runs.check.host(HOST)
    plan = steps(result)["prune"]["data"]
    assert [c["name"] for c in plan["containers"]] == ["rmtest-stopped"]
    assert sorted(t for i in plan["images"] for t in i["tags"]) == ["rmtest/unused:1"]
    assert len(plan["images"]) == 2 and plan["networks"] == ["rmtest-net"] and plan["volumes"] == []
    assert plan["reclaim_bytes"] >= 512 * 1024
    # --check names what would go, with sizes, as the JSON lists it: not only counts
    message = result["message"]
    assert "would remove 1 container (rmtest-stopped " in message, message
    assert "rmtest/unused:1 " in message and f"<none> {dangling.removeprefix('sha256:')[:12]} " in message
    assert "1 network (rmtest-net)" in message

    assert "removed 1 container (rmtest-stopped" in runs.apply.host(HOST)["message"]
    for kind, name in objects:
        assert not exists(kind, name), f"{kind} {name} survived"
    assert exists("image", "local/busybox:1")
    assert exists("volume", "rmtest-orphan")  # volumes never, without --volumes
    assert shop_running() == shop_before
    assert runs.again.host(HOST)["message"].startswith("nothing to reclaim")


def test_prune_keeps_what_is_younger_than_the_filter(docker_clean: None, audit: Path) -> None:
    make_stopped_container("rmtest-young")
    image_id = make_image(None)
    ran = inv("prune", "--host", HOST, "--older-than", "1h", "--json", audit=audit)
    assert ran.code == 0 and ran.host(HOST)["status"] == "ok", ran.stdout
    assert exists("container", "rmtest-young") and exists("image", image_id)


def test_prune_volumes_only_with_the_flag_and_never_one_in_use(docker_clean: None, audit: Path) -> None:
    sh(
        HOST,
        "docker volume create rmtest-free >/dev/null && docker volume create rmtest-used >/dev/null && "
        "docker run -d --name rmtest-keeper -v rmtest-used:/data local/busybox:1 sleep 600 >/dev/null",
    )

    check = inv("prune", "--host", HOST, "--older-than", "0s", "--volumes", "--check", "--json", audit=audit)
    assert check.host(HOST)["status"] == "changed"
    assert "VOLUMES (data deleted for good): rmtest-free" in check.host(HOST)["message"]
    assert "rmtest-used" not in check.host(HOST)["message"]
    assert exists("volume", "rmtest-free")

    ran = inv("prune", "--host", HOST, "--older-than", "0s", "--volumes", "--json", audit=audit)
    assert ran.code == 0 and ran.host(HOST)["status"] == "changed", ran.stdout
    assert [v["name"] for v in steps(ran.host(HOST))["prune"]["data"]["volumes"]] == ["rmtest-free"]
    assert not exists("volume", "rmtest-free")
    assert exists("volume", "rmtest-used")
    assert "rmtest-keeper" in sh(HOST, "docker ps --format '{{.Names}}'")


# --- disk-cleanup --------------------------------------------------------------------------------


@pytest.fixture
def backups(docker_clean: None) -> Iterator[None]:
    """On api2: 5 backups (0, 10, 20, 30, 40 days old, one in a subdirectory), an old file outside
    the directory reached by a symlink to it and by a symlinked directory, both never followed."""
    sh(HOST, f"rm -rf {BACKUPS} {OUTSIDE}")
    sh(HOST, f"""
mkdir -p {BACKUPS}/weekly {OUTSIDE}
for f in db-0 db-10 db-20 db-30 weekly/db-40; do
  head -c 4096 /dev/urandom > {BACKUPS}/$f.sql.gz; touch -d "${{f##*-}} days ago" {BACKUPS}/$f.sql.gz
done
echo precious > {OUTSIDE}/old.sql.gz; touch -d '90 days ago' {OUTSIDE}/old.sql.gz
ln -s {OUTSIDE}/old.sql.gz {BACKUPS}/link.sql.gz
ln -s {OUTSIDE} {BACKUPS}/linkdir
""")  # fmt: skip
    yield
    sh(HOST, f"rm -rf {BACKUPS} {OUTSIDE}")


def backup_inventory(tmp_path: Path, **extra: Any) -> Path:
    api2 = {"backup_dir": BACKUPS, "backup_keep_newest": 2, "backup_max_age_days": 7, **extra}
    return labkit.write_inventory(tmp_path / "inv.yml", host_vars={HOST: api2})


def listing() -> list[str]:
    return sorted(sh(HOST, f"cd {BACKUPS} && find . -mindepth 1 | sort").split())


def test_disk_cleanup_quartet(backups: None, audit: Path, tmp_path: Path) -> None:
    inventory = backup_inventory(tmp_path)
    make_stopped_container("rmtest-disk")
    before = listing()

    def state() -> tuple[list[str], bool]:
        return listing(), exists("container", "rmtest-disk")

    runs = quartet("disk-cleanup", "--host", HOST, "--older-than", "0s", hosts=[HOST], audit=audit,
                   state=state, inventory=inventory)  # fmt: skip

    result = runs.check.host(HOST)
    planned = sorted(f["path"] for f in steps(result)["backups"]["data"]["files"])
    assert planned == ["db-20.sql.gz", "db-30.sql.gz", "weekly/db-40.sql.gz"]
    assert steps(result)["docker prune"]["status"] == "changed"
    assert steps(result)["journal"]["status"] == "skipped"  # the lab hosts keep no journal
    facts = steps(result)["facts"]
    assert BACKUPS in facts["data"]["usage_bytes"] and "/var/lib/docker" in facts["data"]["usage_bytes"]
    assert "./weekly/db-40.sql.gz" in before

    assert runs.apply.code == 0, runs.apply.stdout
    result = runs.apply.host(HOST)
    assert listing() == ["./db-0.sql.gz", "./db-10.sql.gz", "./link.sql.gz", "./linkdir", "./weekly"]
    assert sh(HOST, f"cat {OUTSIDE}/old.sql.gz").strip() == "precious"
    assert not exists("container", "rmtest-disk")
    final = steps(result)["disk"]
    assert final["data"]["disk_before"] and final["data"]["disk_after"]
    assert "→" in result["message"]
    assert "nothing to clean up" in runs.check_again.host(HOST)["message"]


def test_disk_cleanup_without_docker_or_backups(lab: Any, audit: Path, tmp_path: Path) -> None:
    inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={"db1": {}})
    ran = inv("disk-cleanup", "--host", "db1", "--json", audit=audit, inventory=inventory)
    assert ran.code == 0, ran.stdout + ran.stderr
    result = steps(ran.host("db1"))
    assert result["backups"]["status"] == "skipped" and result["docker prune"]["status"] == "skipped"
    assert ran.host("db1")["status"] == "ok"


# --- health --------------------------------------------------------------------------------------


@pytest.fixture
def health_setup(backups: None) -> Iterator[None]:
    """A small tmpfs in api2's own mount namespace, removed afterwards; the shop project restored."""
    sh(HOST, f"mkdir -p {FULL} && mount -t tmpfs -o size=1m rmtest-full {FULL}")
    try:
        yield
    finally:
        sh(HOST, f"umount {FULL}; rmdir {FULL}", check=False)
        sh(HOST, "docker start shop-worker-1 >/dev/null", check=False)
        labkit.repair(HOST)


def health_inventory(tmp_path: Path, db_probes: list[dict[str, str]]) -> Path:
    api2 = {
        "backup_dir": BACKUPS,
        "health_disk_paths": ["/", FULL],
        "health_log_errors_max": 0,
        "health_probes": [{"name": "postgres", "tcp": "198.18.0.21:5432"},
                          {"name": "s3", "http": "http://198.18.0.1:9000/"}],
    }  # fmt: skip
    db1 = {"health_services": [], "api_health_url": "", "health_probes": db_probes}
    return labkit.write_inventory(tmp_path / "inv.yml", host_vars={HOST: api2, "db1": db1})


def colours(ran: labkit.Ran, host: str) -> dict[str, str]:
    return {s["data"]["check"]["name"]: s["data"]["check"]["colour"]
            for s in ran.host(host)["steps"] if "check" in s["data"]}  # fmt: skip


def test_health_green_then_every_red_path(health_setup: None, audit: Path, tmp_path: Path) -> None:
    inventory = health_inventory(tmp_path, [{"name": "pg", "tcp": "127.0.0.1:5432"}])
    labkit.repair(HOST)
    started = labkit.started_at(HOST)

    green = inv("health", "--host", f"{HOST},db1", "--json", audit=audit, inventory=inventory)
    assert green.code == 0, green.stdout
    api2 = colours(green, HOST)
    assert api2["service api"] == api2["service worker"] == "green"
    assert api2[f"disk {FULL}"] == api2[f"backup age {BACKUPS}"] == api2["probe postgres"] == "green"
    assert api2["http http://127.0.0.1:8080/health"] == "green"
    assert colours(green, "db1")["disk /"] == colours(green, "db1")["probe pg"] == "green"
    assert "service api" not in colours(green, "db1")  # health_services: [] checks no service
    check = inv("health", "--host", f"{HOST},db1", "--check", "--json", audit=audit, inventory=inventory)
    assert [h["status"] for h in check.json()["hosts"]] == [h["status"] for h in green.json()["hosts"]]
    assert labkit.started_at(HOST) == started  # read-only

    # Break everything a health check looks at.
    sh(HOST, "docker stop -t 1 shop-worker-1 >/dev/null")
    api = labkit.api_container(HOST)["Id"]
    lab.exec_on(HOST, ["docker", "exec", api, "sh", "-c", "echo 'ERROR rmtest boom' > /proc/1/fd/1"])
    labkit.break_until_restart(HOST)
    labkit.wait_health(HOST, "unhealthy")
    sh(HOST, f"head -c 990000 /dev/zero > {FULL}/fill")
    sh(HOST, f"touch -d '3 days ago' {BACKUPS}/db-0.sql.gz")
    inventory = health_inventory(tmp_path, [{"name": "closed", "tcp": "127.0.0.1:1"}])

    red = inv("health", "--host", f"{HOST},db1", "--json", audit=audit, inventory=inventory)
    assert red.code == 1
    api2 = colours(red, HOST)
    for name in ("service api", "service worker", "http http://127.0.0.1:8080/health", f"disk {FULL}",
                 f"backup age {BACKUPS}", "log errors api"):  # fmt: skip
        assert api2[name] == "red", (name, api2)
    assert api2["probe postgres"] == "green" and api2["disk /"] == "green"
    result = red.host(HOST)
    assert result["status"] == "failed" and result["message"].startswith("6 red:")
    disk = next(s["data"]["check"] for s in result["steps"] if s["step"] == f"disk {FULL}")
    assert disk["value"] > 90 and disk["threshold"] == 90.0
    assert red.host("db1")["status"] == "failed" and "probe closed" in red.host("db1")["message"]

    table = inv("health", "--host", HOST, audit=audit, inventory=inventory)
    assert table.code == 1
    assert any(line.split()[1:3] == ["service", "worker"] and " red " in line
               for line in table.stdout.splitlines())  # fmt: skip


def test_health_backup_age_in_s3(lab: Any, audit: Path, tmp_path: Path) -> None:
    import boto3

    bucket = f"rmtest-{uuid.uuid4().hex[:8]}"
    creds = {"AWS_ACCESS_KEY_ID": "rmtest", "AWS_SECRET_ACCESS_KEY": "rmtest-secret"}
    s3 = boto3.client("s3", endpoint_url=lab_mod_endpoint(), region_name="us-east-1",
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="db/2026-01-01.sql.gz", Body=b"x")
    try:
        db1 = {"health_services": [], "api_health_url": "", "s3_endpoint_url": lab_mod_endpoint()}
        good = labkit.write_inventory(
            tmp_path / "good.yml", host_vars={"db1": {**db1, "backup_s3_url": f"s3://{bucket}/db/"}}
        )
        empty = labkit.write_inventory(
            tmp_path / "empty.yml", host_vars={"db1": {**db1, "backup_s3_url": f"s3://{bucket}/none/"}}
        )
        env = {**os.environ, **creds}
        ran = inv("health", "--host", "db1", "--json", audit=audit, inventory=good, env=env)
        assert ran.code == 0, ran.stdout + ran.stderr
        assert colours(ran, "db1")[f"backup age s3://{bucket}/db/"] == "green"
        ran = inv("health", "--host", "db1", "--json", audit=audit, inventory=empty, env=env)
        assert ran.code == 1
        assert "no backup object" in ran.host("db1")["message"]
    finally:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents") or []:
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


def lab_mod_endpoint() -> str:
    return lab.S3_ENDPOINT


# --- bad input: one line, exit 2, nothing changed ------------------------------------------------

BAD_INPUT = [
    ("prune", {"older_than": "-5h"}, {}, "--older-than '-5h'"),
    ("prune", {"if_disk_above": "150"}, {}, "--if-disk-above '150'"),
    ("disk_cleanup", {"older_than": "0s", "max_age_days": "-1"}, {"backup_dir": BACKUPS}, "not negative"),
    ("disk_cleanup", {"older_than": "0s"}, {"backup_dir": "/"}, "system directory"),
    ("health", {"service": ["nosuch"]}, {"health_services": ["api", "worker"]}, "unknown service nosuch"),
    ("health", {}, {"health_disk_max_pct": 101}, "health_disk_max_pct"),
]


def task_body(tasks: Any, name: str) -> Any:
    """The body of a hand-written task in tasks.py, or of the task the collection built from the
    remediation's declaration."""
    made = getattr(tasks, name, None)
    return (made if made is not None else tasks.ns.tasks[name.replace("_", "-")]).body


def test_bad_input_is_one_line_and_changes_nothing(
    docker_clean: None, audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The tasks' own front end, in this process (no host is contacted before validation)."""
    from invoke.context import Context
    from invoke.exceptions import Exit

    import tasks

    monkeypatch.setenv("REMEDIATIONS_AUDIT_LOG", str(audit))
    make_stopped_container("rmtest-badinput", 4)
    for task, flags, host_vars, message in BAD_INPUT:
        inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={HOST: host_vars})
        with pytest.raises(Exit) as exited:
            task_body(tasks, task)(Context(), host=HOST, inventory=str(inventory), **flags)
        assert exited.value.code == 2, task
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (task, err)
        assert out.strip() == ""
        record = json.loads(audit.read_text().splitlines()[-1])
        assert (record["step"], record["status"], record["host"]) == ("arguments", "failed", None)
    assert exists("container", "rmtest-badinput")
