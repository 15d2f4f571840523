"""Progress of a prefix restore on the lab's S3 endpoint: listing, copying (% and ETA), verifying on
stderr; a re-run that has nothing to do says what it lists; --check on a large prefix leads with a
summary and caps its per-key lines. `progress_interval` is made small so a short run shows several
lines (stderr here is not a terminal: the cron case)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from remediations.actions.s3task import controller_targets
from remediations.actions.s3versions import Tuning
from remediations.core import inventory
from remediations.core.engine import Engine
from remediations.core.options import RunOptions
from remediations.core.results import HostResult
from remediations.facts.s3 import iso
from remediations.s3 import restore_prefix
from remediations.s3.restore_prefix import RestorePrefix
from tests.lab.s3.test_s3_restore import ACCESS_KEY, SECRET_KEY, aws_env, bucket, client, next_second
from tests.labkit import inv

__all__ = ["aws_env"]  # the fixture: credentials for the lab endpoint
pytestmark = pytest.mark.lab

KEYS = 240
INVENTORY = f"""all:
  hosts:
    controller: {{ansible_connection: local}}
  vars:
    s3_endpoint_url: {lab.S3_ENDPOINT}
    progress_interval: 0.02
"""


@pytest.fixture(scope="module")
def overwritten(lab: Any) -> tuple[str, str]:
    """A bucket whose KEYS keys under data/ were all overwritten after `at`."""
    s3 = client()
    name = bucket(s3)
    for i in range(KEYS):
        s3.put_object(Bucket=name, Key=f"data/{i:04}.bin", Body=b"before-" + bytes(1000))
    at = next_second()
    for i in range(KEYS):
        s3.put_object(Bucket=name, Key=f"data/{i:04}.bin", Body=b"after")
    return name, iso(at)


def run(remediation: RestorePrefix, name: str, check: bool = False) -> HostResult:
    inv_ = inventory.parse(INVENTORY, "lab-s3")
    result = Engine(inv_, RunOptions(check=check, diff=True)).run(remediation, controller_targets(name)(inv_))
    [host] = result.hosts
    return host


def test_listing_copying_and_verifying_show_progress_and_a_rerun_says_what_it_lists(
    overwritten: tuple[str, str],
) -> None:
    name, at = overwritten
    stream = io.StringIO()
    tuning = Tuning(page_size=20, workers=4)
    done = run(RestorePrefix(name, "data/", at, tuning=tuning, progress=stream), name)
    assert done.status.value == "changed", done.message
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("restore-s3-prefix: ") for line in lines)
    lines = [line.removeprefix("restore-s3-prefix: ") for line in lines]
    where = f"s3://{name}/data/"
    assert lines[0] == f"listing versions under {where} …"
    listing = [line for line in lines if line.startswith(f"listing versions under {where}: ")]
    assert len(listing) >= 2, lines  # 24 pages of 20: several lines while it lists
    counts = [int(re.search(r": ([\d,]+) version", line)[1].replace(",", "")) for line in listing]  # type: ignore[index]
    assert counts == sorted(counts) and counts[-1] <= 2 * KEYS
    assert f"listed {2 * KEYS} version(s) of {KEYS} key(s) under {where} in 24 page(s)" in "\n".join(lines)
    copying = [line for line in lines if line.startswith("copying: ")]
    assert len(copying) >= 2, lines
    shape = r"copying: \d+/240 keys \(\d+%\), [\d.]+ k?B of 241\.7 kB, [\d.]+ [kM]?B/s, ETA \d+[smh]"
    assert re.fullmatch(shape, copying[0]), copying[0]
    assert [line for line in lines if line.startswith("copied: 240/240 keys (100%)")]
    assert lines.index(copying[0]) > lines.index("copying 240 key(s), 241.7 kB, 4 at a time …")
    verifying = [line for line in lines if line.startswith("verifying: ")]
    assert verifying[0] == f"verifying: listing current objects under {where} …"
    assert verifying[-1] == f"verifying: listed {KEYS} current object(s) under {where}"

    again = io.StringIO()
    rerun = run(RestorePrefix(name, "data/", at, tuning=tuning, progress=again), name)
    assert rerun.message.startswith(f"nothing to do: {where} is at its state of "), rerun.message
    said = again.getvalue().splitlines()
    assert said[0] == f"restore-s3-prefix: listing versions under {where} …"
    assert len(said) >= 3 and "so far" in said[1]
    assert said[-1].startswith(f"restore-s3-prefix: listed {3 * KEYS} version(s)")
    assert not [line for line in said if "copying" in line]


def test_check_on_a_large_prefix_leads_with_a_summary_and_caps_the_listing(
    overwritten: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, at = overwritten
    monkeypatch.setattr(restore_prefix, "LISTED_KEYS", 50)
    target = client()
    dest = bucket(target)
    checked = run(RestorePrefix(name, "data/", at, to_bucket=dest, progress=io.StringIO()), name, check=True)
    assert checked.message == (
        f"would restore {KEYS} key(s) (241.7 kB to copy) of {KEYS} key(s), 241.7 kB at {at}, under s3://{name}/data/"
    ), checked.message
    listing = checked.diff.splitlines()
    assert len(listing) == 51
    assert all(line.startswith("restore ") for line in listing[:50])
    assert listing[-1] == f"… and {KEYS - 50} more key(s): {KEYS - 50} to restore"
    assert target.list_objects_v2(Bucket=dest).get("KeyCount", 0) == 0  # check mode changed nothing


def test_front_end_progress_is_on_stderr_and_json_stays_clean(
    overwritten: tuple[str, str], tmp_path: Path
) -> None:
    name, at = overwritten
    path = tmp_path / "lab-s3.yml"
    path.write_text(INVENTORY)
    environ = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    ran = inv("restore-s3-prefix", "--bucket", name, "--prefix", "data/", "--at", at, "--check", "--json",
              audit=tmp_path / "audit.jsonl", inventory=path, env=environ, timeout=120)  # fmt: skip
    assert ran.code == 0, ran.stderr
    result = json.loads(ran.stdout)  # nothing but the JSON document on stdout
    assert result["hosts"][0]["status"] in ("changed", "ok")
    assert f"restore-s3-prefix: listing versions under s3://{name}/data/ …" in ran.stderr.splitlines()
    assert "restore-s3-prefix" not in ran.stdout.split('"task"')[0]
