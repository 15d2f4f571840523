"""rotate-aws-key on the lab: IAM and S3 on a moto server that enforces IAM (keys must exist and be
allowed), the app's env file and containers on api1.

The lab's shared moto server accepts any key, which would make "S3 through the new key" prove
nothing; this module starts its own, with IAM enforced once the users are set up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from remediations.facts import envfile
from tests import labkit
from tests.lab.secrets.test_rotation import (
    ENV,
    HOST,
    RECORDS,
    Watcher,
    assert_nowhere,
    env_text,
    reset,
    running,
    sh,
)
from tests.labkit import inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

USER = "shop-app"
BUCKET = "shop-assets"
ID_KEY, SECRET_KEY = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
APP_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"},
    {"Effect": "Allow", "Action": ["sts:GetCallerIdentity"], "Resource": "*"},
]})  # fmt: skip


def client(service: str, endpoint: str, key: dict[str, str]) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key["id"], aws_secret_access_key=key["secret"])  # fmt: skip


@pytest.fixture
def iam_lab(lab: Any) -> Iterator[dict[str, Any]]:
    """A moto server of our own: an admin, the app user with one key, a bucket; then IAM is enforced."""
    setup_calls = 8
    with labkit.private_moto(setup_calls) as endpoint:
        anyone = {"id": "AKIASETUPSETUPSETUP0", "secret": "setup"}
        iam = client("iam", endpoint, anyone)
        iam.create_user(UserName="admin")  # 1
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ALLOW_ALL)  # 2
        created = iam.create_access_key(UserName="admin")["AccessKey"]  # 3
        admin = {"id": created["AccessKeyId"], "secret": created["SecretAccessKey"]}
        iam.create_user(UserName=USER)  # 4
        iam.put_user_policy(UserName=USER, PolicyName="app", PolicyDocument=APP_POLICY)  # 5
        created = iam.create_access_key(UserName=USER)["AccessKey"]  # 6
        app = {"id": created["AccessKeyId"], "secret": created["SecretAccessKey"]}
        client("s3", endpoint, anyone).create_bucket(Bucket=BUCKET)  # 7
        client("s3", endpoint, anyone).put_object(Bucket=BUCKET, Key="logo.png", Body=b"png")  # 8
        with pytest.raises(ClientError):  # from here on, IAM is enforced
            client("s3", endpoint, anyone).list_objects_v2(Bucket=BUCKET)
        reset()
        text = env_text() + f"{ID_KEY}={app['id']}\n{SECRET_KEY}={app['secret']}\n"
        sh(HOST, f"cat > {ENV} && chmod 600 {ENV}", input=text.encode())
        sh(HOST, "cd /srv/shop && docker compose -p shop -f compose.yaml up -d --wait --force-recreate")
        try:
            yield {"endpoint": endpoint, "admin": admin, "app": app}
        finally:
            reset()


@pytest.fixture
def inventory(tmp_path: Path, iam_lab: dict[str, Any]) -> Path:
    return labkit.write_inventory(tmp_path / "inventory.yml", all_vars={
        "health_timeout": 15, "aws_endpoint_url": iam_lab["endpoint"], "aws_verify_bucket": BUCKET,
        "s3_endpoint_url": iam_lab["endpoint"], "aws_key_propagation_timeout": 10,
    })  # fmt: skip


def admin_env(iam_lab: dict[str, Any]) -> dict[str, str]:
    admin = iam_lab["admin"]
    return {"AWS_ACCESS_KEY_ID": admin["id"], "AWS_SECRET_ACCESS_KEY": admin["secret"]}


def run(iam_lab: dict[str, Any], audit: Path, inventory: Path, *args: str) -> labkit.Ran:
    return inv("rotate-aws-key", "--user", USER, "--env-host", HOST, *args, "--json", audit=audit,
               inventory=inventory, env=admin_env(iam_lab))  # fmt: skip


def keys(iam_lab: dict[str, Any]) -> dict[str, str]:
    iam = client("iam", iam_lab["endpoint"], iam_lab["admin"])
    return {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=USER)["AccessKeyMetadata"]}


def env_keys() -> tuple[str, str]:
    parsed = envfile.parse(env_text())
    return parsed[ID_KEY], parsed[SECRET_KEY]


def test_rotate_aws_key_quartet_deactivate_then_delete(iam_lab: dict[str, Any], audit: Path,
                                                       inventory: Path) -> None:  # fmt: skip
    old = iam_lab["app"]
    target = f"iam:{USER}"
    assert keys(iam_lab) == {old["id"]: "Active"} and env_keys() == (old["id"], old["secret"])

    def state() -> tuple[dict[str, str], tuple[str, str], str]:
        return keys(iam_lab), env_keys(), sh(HOST, f"cat {RECORDS} 2>/dev/null || true")

    watcher = Watcher()
    runs = quartet("rotate-aws-key", "--user", USER, "--env-host", HOST, hosts=[target], audit=audit,
                   state=state, inventory=inventory, env=admin_env(iam_lab))  # fmt: skip
    watch = watcher.stop()
    check, apply, again, recheck = runs.check, runs.apply, runs.again, runs.check_again
    assert check.code == 0, check.stdout + check.stderr
    assert f"then deactivate {old['id']}" in check.host(target)["message"]
    assert apply.code == 0, apply.stdout + apply.stderr
    new_id, new_secret = env_keys()
    assert new_id != old["id"] and keys(iam_lab) == {old["id"]: "Inactive", new_id: "Active"}
    assert running("api")[ID_KEY] == new_id and running("api")[SECRET_KEY] == new_secret
    assert sh(HOST, f"stat -c %a {ENV}").strip() == "600"
    # S3 answers through the new key; the test asks it itself, on the IAM-enforcing server.
    listed = client("s3", iam_lab["endpoint"], {"id": new_id, "secret": new_secret}).list_objects_v2(
        Bucket=BUCKET
    )
    assert [o["Key"] for o in listed["Contents"]] == ["logo.png"]
    assert f"S3 bucket {BUCKET} answers through it" in apply.stdout
    assert f"old key {old['id']} inactive" in apply.host(target)["message"]
    assert_nowhere(new_secret, apply.stdout, apply.stderr, audit.read_text(), watch.processes)
    assert_nowhere(old["secret"], apply.stdout, apply.stderr, audit.read_text(), watch.processes)
    record = json.loads(sh(HOST, f"cat {RECORDS}"))[-1]
    assert record["status"] == "done" and record["detail"]["old_key"] == old["id"]
    assert new_secret not in json.dumps(record)

    assert again.code == 0, again.stdout
    assert f"the old key {old['id']} is inactive and is deleted after the grace period" in again.stdout
    assert keys(iam_lab) == {old["id"]: "Inactive", new_id: "Active"}
    assert recheck.code == 0

    delete = run(iam_lab, audit, inventory, "--delete-old")
    assert delete.code == 0 and delete.host(target)["status"] == "changed", delete.stdout
    assert f"deleted the old key {old['id']}" in delete.stdout
    assert keys(iam_lab) == {new_id: "Active"} and env_keys() == (new_id, new_secret)
    with pytest.raises(ClientError) as refused:  # the old key is refused now
        client("s3", iam_lab["endpoint"], old).list_objects_v2(Bucket=BUCKET)
    assert refused.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "InvalidClientTokenId")
    final = run(iam_lab, audit, inventory)
    assert final.code == 0 and final.host(target)["status"] == "ok", final.stdout


def test_rotate_aws_key_two_keys_already_says_which_to_remove(iam_lab: dict[str, Any], audit: Path,
                                                              inventory: Path) -> None:  # fmt: skip
    iam = client("iam", iam_lab["endpoint"], iam_lab["admin"])
    extra = iam.create_access_key(UserName=USER)["AccessKey"]["AccessKeyId"]
    before = env_text()
    ran = run(iam_lab, audit, inventory)
    assert ran.code == 1 and ran.host(f"iam:{USER}")["status"] == "failed"
    assert f"{USER} already has two access keys" in ran.stdout
    assert (
        f"Remove {extra} first (aws iam delete-access-key --user-name {USER} --access-key-id {extra})"
        in ran.stdout
    )
    assert env_text() == before and len(keys(iam_lab)) == 2
    unknown = inv("rotate-aws-key", "--user", "nobody-here", "--env-host", HOST, "--json", audit=audit,
                  inventory=inventory, env={"AWS_ACCESS_KEY_ID": iam_lab["admin"]["id"],
                                            "AWS_SECRET_ACCESS_KEY": iam_lab["admin"]["secret"]})  # fmt: skip
    assert unknown.code == 1 and "IAM user 'nobody-here' does not exist; nothing changed" in unknown.stdout
    bad = inv(
        "rotate-aws-key", "--user", "no spaces allowed", "--env-host", HOST, audit=audit, inventory=inventory
    )
    assert bad.code == 2 and bad.stderr.startswith("error: --user 'no spaces allowed': give an IAM user name")
    assert env_text() == before


def test_rotate_aws_key_app_unhealthy_deletes_the_new_key(iam_lab: dict[str, Any], audit: Path,
                                                          inventory: Path) -> None:  # fmt: skip
    old = iam_lab["app"]
    import hashlib

    digest = hashlib.sha256(old["secret"].encode()).hexdigest()
    sh(HOST, f"echo {digest} > /srv/shop/pins/{SECRET_KEY}")  # the app accepts only the old secret
    try:
        ran = run(iam_lab, audit, inventory)
    finally:
        sh(HOST, f"rm -f /srv/shop/pins/{SECRET_KEY}")
    assert ran.code == 1, ran.stdout
    assert (
        "rolled back: env files restored, the new key" in ran.stdout
        and f"{old['id']} still active" in ran.stdout
    )
    assert keys(iam_lab) == {old["id"]: "Active"} and env_keys() == (old["id"], old["secret"])
    assert labkit.health(HOST) == "healthy"


def test_rotate_aws_key_interrupted_after_the_write_is_finished_by_a_rerun(
    iam_lab: dict[str, Any], audit: Path, inventory: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    old = iam_lab["app"]
    admin = iam_lab["admin"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "rotate-aws-key", "--user", USER, "--env-host", HOST, "--inventory",
         str(inventory)],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "AWS_ACCESS_KEY_ID": admin["id"],
             "AWS_SECRET_ACCESS_KEY": admin["secret"]},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while env_keys()[0] == old["id"]:  # the new key reached the env file: the controller dies now
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it wrote"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    new_id, new_secret = env_keys()
    assert keys(iam_lab) == {old["id"]: "Active", new_id: "Active"}  # nothing retired yet
    rerun = run(iam_lab, audit, inventory)
    assert rerun.code == 0, rerun.stdout + rerun.stderr
    assert f"was interrupted after writing {new_id} to the env file: finishing it" in rerun.stdout
    assert keys(iam_lab) == {old["id"]: "Inactive", new_id: "Active"}
    assert env_keys() == (new_id, new_secret) and running("api")[ID_KEY] == new_id
    assert_nowhere(new_secret, rerun.stdout, audit.read_text())
    assert json.loads(sh(HOST, f"cat {RECORDS}"))[-1]["status"] == "done"
