"""deploy end to end on the lab: real sshd, dockerd and compose on api1 and api2, images built there.

No registry in the lab: the images to deploy are built on the hosts (`docker build` FROM the shop's
own image, legacy builder), once, and kept between runs: local/api:good (the same app, another
image) and local/api:bad (its httpd never answers: the healthcheck fails). The shop's compose file
names api `local/busybox:1`, a fixed name that worker shares: deploy points that name at the new
image, which moves worker at its next recreate too, so every retagging run says --also-move.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from tests import labkit
from tests.labkit import inv
from tests.quartet import quartet

pytestmark = pytest.mark.lab

NAME = "local/busybox:1"
GOOD, BAD, SLOW, BASE = "local/api:good", "local/api:bad", "local/api:slow", "local/api:base"
MARKER = "/var/lib/remediations/deploy-shop-api.json"
STATE = f"/var/lib/remediations/images.json {MARKER}"
HOSTS = ("api1", "api2")
DOCKERFILES = {
    GOOD: f"FROM {NAME}\nLABEL lab.deploy=good\n",
    # the shop's app starts unhealthy with LAB_BREAK_HEALTH=1 (lab/assets/compose.yaml): a broken build
    BAD: f"FROM {NAME}\nENV LAB_BREAK_HEALTH=1\nLABEL lab.deploy=bad\n",
    # healthy 3 s after it starts (its /bin/sh sleeps first): a window for the SIGTERM test. Busybox's
    # sh runs its own applets without looking at /bin, so it is sh itself that is wrapped.
    SLOW: f"FROM {NAME}\nRUN rm /bin/sh && printf '#!/bin/busybox sh\\nsleep 3\\nexec /bin/busybox sh"
    ' "$@"\\n\' > /bin/sh && /bin/busybox chmod 755 /bin/sh\nLABEL lab.deploy=slow\n',
}


def sh(host: str, script: str, check: bool = True, stdin: str | None = None) -> str:
    done = lab_mod.exec_on(host, ["sh", "-c", script], input=None if stdin is None else stdin.encode(),
                           check=check, timeout=180)  # fmt: skip
    return done.stdout.decode()


def image_of(host: str, name: str) -> str:
    return sh(host, f"docker image inspect --format '{{{{.Id}}}}' {name} 2>/dev/null", check=False).strip()


def api_containers(host: str) -> list[tuple[str, str]]:
    """(image id, state) of every api container: two while compose replaces one."""
    ids = sh(host, f"{' '.join(labkit.COMPOSE)} ps -a -q api").split()
    # one of them may be gone by the time it is inspected: docker prints the others (and exits 1)
    found = json.loads(sh(host, f"docker inspect {' '.join(ids)} 2>/dev/null", check=False) or "[]")
    return [(c["Image"], c["State"]["Status"]) for c in found]


def running(host: str) -> str:
    """The image the one api container runs (waiting a little for a replacement to settle)."""
    deadline = time.monotonic() + 15
    while len(found := api_containers(host)) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(found) == 1, f"{host}: api containers {found}"
    return found[0][0]


def built(host: str, name: str, dockerfile: str) -> str:
    """`name` built from `dockerfile` on `host`, unless an image of that name was built from it already."""
    digest = hashlib.sha256(dockerfile.encode()).hexdigest()[:16]
    label = sh(host, f"docker image inspect --format '{{{{index .Config.Labels \"lab.dockerfile\"}}}}' {name}"
               " 2>/dev/null", check=False).strip()  # fmt: skip
    if label != digest:
        sh(host, f"DOCKER_BUILDKIT=0 docker build -q -t {name} - >/dev/null",
           stdin=f"{dockerfile}LABEL lab.dockerfile={digest}\n")  # fmt: skip
    return image_of(host, name)


def record(host: str) -> list[str]:
    text = sh(host, "cat /var/lib/remediations/images.json 2>/dev/null || true")
    return [e["id"] for e in json.loads(text)["services"].get("shop/api", [])] if text.strip() else []


def marker(host: str) -> str:
    return sh(host, f"cat {MARKER} 2>/dev/null || true")


@pytest.fixture(scope="module")
def images(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shop at its baseline on api1 and api2, the deploy images built there, a copy of the lab
    inventory with a short health wait; afterwards the shop's name back on its own image, every
    service back on it, and the deploy images gone (rollback's tests read every image of the host as
    a candidate: images left here made them fail)."""
    ids: dict[str, dict[str, str]] = {}
    for host in HOSTS:
        original = image_of(host, NAME)
        sh(host, f"docker tag {original} {BASE}")
        made = {name: built(host, name, dockerfile) for name, dockerfile in DOCKERFILES.items()}
        ids[host] = {"original": original, BASE: original, **made}
        labkit.reset_shop(host, STATE)
    path = tmp_path_factory.mktemp("deploy") / "lab.yml"
    yield {"ids": ids, "inventory": labkit.write_inventory(path, all_vars={"health_timeout": 8})}
    for host in HOSTS:
        sh(host, f"docker tag {ids[host]['original']} {NAME}")
        labkit.reset_shop(host, STATE)
        names = " ".join([BASE, *DOCKERFILES])
        sh(host, f"docker rmi {names} >/dev/null 2>&1; docker image prune -f >/dev/null", check=False)


def deploy(fixture: dict[str, Any], audit: Path, *args: str, host: str = "api1") -> labkit.Ran:
    return inv("deploy", "--host", host, "--service", "api", *args, "--json", audit=audit,
               inventory=fixture["inventory"])  # fmt: skip


def steps(ran: labkit.Ran, host: str = "api1") -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host(host)["steps"]}


def test_deploy_a_good_image_then_again_is_ok_and_check_changes_nothing(
    images: dict[str, Any], audit: Path
) -> None:
    ids = images["ids"]["api1"]
    runs = quartet("deploy", "--host", "api1", "--service", "api", "--image", GOOD, "--also-move",
                   hosts=["api1"], audit=audit, inventory=images["inventory"],
                   state=lambda: (running("api1"), image_of("api1", NAME), marker("api1")))  # fmt: skip
    assert running("api1") == ids[GOOD] and labkit.health("api1") == "healthy"
    assert image_of("api1", NAME) == ids[GOOD] and not marker("api1")
    facts = steps(runs.check)["facts"]["data"]
    assert facts["image_now"] == {"ref": NAME, "id": ids["original"]}, facts
    assert facts["image_to_be"] == {"ref": GOOD, "id": ids[GOOD]}, facts
    assert "would deploy local/api:good" in steps(runs.check)["decide"]["message"]
    done = steps(runs.apply)
    assert done["verify"]["status"] == "changed" and "runs it and is healthy" in done["verify"]["message"]
    assert "recorded local/busybox:1" in done["record"]["message"]
    assert "already runs local/api:good" in runs.again.host("api1")["message"]
    assert record("api1")[-2:] == [ids["original"], ids[GOOD]]


def test_check_over_two_hosts_shows_each_image_and_the_order(images: dict[str, Any], audit: Path) -> None:
    before = {h: (running(h), image_of(h, NAME)) for h in HOSTS}
    ran = inv("deploy", "--host", "api", "--image", BAD, "--also-move", "--serial", "1", "--check", "--json",
              audit=audit, inventory=images["inventory"])  # fmt: skip
    assert ran.code in (0, 3), ran.stdout + ran.stderr
    assert [h["host"] for h in ran.json()["hosts"]] == ["api1", "api2"]
    for n, host in enumerate(HOSTS, 1):
        decide = steps(ran, host)["decide"]
        assert decide["status"] == "changed" and f"host {n} of 2, batch {n} of 2" in decide["message"]
    assert {h: (running(h), image_of(h, NAME)) for h in HOSTS} == before


def test_a_bad_image_is_rolled_back_and_the_rollout_stops(images: dict[str, Any], audit: Path) -> None:
    """--serial 1 over api1 and api2: api1 goes back to what it ran, healthy; api2 is not started."""
    was = {h: running(h) for h in HOSTS}
    names = {h: image_of(h, NAME) for h in HOSTS}
    ran = inv("deploy", "--host", "api", "--image", BAD, "--also-move", "--serial", "1", "--json",
              audit=audit, inventory=images["inventory"])  # fmt: skip
    assert ran.code == 1, ran.stdout + ran.stderr
    first = ran.host("api1")
    assert first["status"] == "failed"
    verify = steps(ran)["verify"]["message"]
    assert (
        f"deploy of {BAD}" in verify
        and f"rolled back to {NAME}" in verify
        and "it runs and is healthy" in verify
    )
    assert running("api1") == was["api1"] and image_of("api1", NAME) == names["api1"]
    assert labkit.health("api1") == "healthy" and not marker("api1")
    assert images["ids"]["api1"][BAD] not in record("api1")  # a later rollback must not go back to it
    second = ran.host("api2")
    assert second["status"] == "skipped" and "the rollout stopped after a failure" in second["message"]
    assert running("api2") == was["api2"] and image_of("api2", NAME) == names["api2"]


@pytest.mark.deploy_faults  # the failed pull takes about 20 s here
def test_an_image_not_on_the_host_and_a_pull_without_registry_fail_changing_nothing(
    images: dict[str, Any], audit: Path
) -> None:
    was = (running("api1"), image_of("api1", NAME))
    absent = deploy(images, audit, "--image", "local/api:nosuch", "--also-move")
    assert absent.code == 1 and "local/api:nosuch is not on the host" in absent.host("api1")["message"]
    assert "give --pull" in absent.host("api1")["message"]
    pulled = deploy(images, audit, "--image", "local/api:nosuch", "--also-move", "--pull")
    pull = steps(pulled)["pull"]
    assert pulled.code == 1 and pull["status"] == "failed", pulled.stdout
    assert (
        "docker pull local/api:nosuch failed" in pull["message"] and "nothing was changed" in pull["message"]
    )
    assert (running("api1"), image_of("api1", NAME)) == was and not marker("api1")


def test_bad_input_is_one_line_and_an_unknown_service_changes_nothing(
    images: dict[str, Any], audit: Path
) -> None:
    hostile = deploy(images, audit, "--image", "x;reboot")
    assert hostile.code == 2 and hostile.stderr.strip().count("\n") == 0, hostile.stderr
    assert "--image 'x;reboot': not an image name or tag" in hostile.stderr
    was = running("api1")
    unknown = inv("deploy", "--host", "api1", "--service", "nosuch", "--image", GOOD, "--json", audit=audit,
                  inventory=images["inventory"])  # fmt: skip
    assert unknown.code == 1 and "unknown service 'nosuch': the project has api, worker" in unknown.stdout
    assert running("api1") == was


def start_deploy(fixture: dict[str, Any], audit: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", "--host", "api1", "--service", "api", *args, "--json",
         "--inventory", str(fixture["inventory"])],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1"},
    )  # fmt: skip


def interrupt_once_running(fixture: dict[str, Any], audit: Path, target: str) -> dict[str, Any]:
    """Start a deploy of `target` on api1 and SIGTERM it once the new container runs: the run's result."""
    new = fixture["ids"]["api1"][target]
    proc = start_deploy(fixture, audit, "--image", target, "--also-move")
    try:
        deadline = time.monotonic() + 60
        while (new, "running") not in api_containers("api1") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert (new, "running") in api_containers("api1"), "the new container never started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:] + err[-3000:]
    stopped: dict[str, Any] = json.loads(out)["hosts"][0]
    assert stopped["status"] == "failed" and "is kept" in stopped["steps"][-1]["message"], stopped
    return stopped


@pytest.mark.parametrize(
    ("target", "outcome"),
    [(SLOW, "rolled forward"), (BAD, "rolled back")],
)
@pytest.mark.deploy_faults  # not yet seen passing on the lab (see the report); kept out of the default run
def test_sigterm_mid_deploy_leaves_the_marker_and_the_next_run_recovers(
    images: dict[str, Any], audit: Path, target: str, outcome: str
) -> None:
    """SIGTERM once the new container runs, before it is healthy (local/api:slow answers 3 s after it
    starts; local/api:bad never): the run stops, the marker stays. The same command again finds it:
    the new image running healthy is kept (rolled forward); one that is not goes back to the image
    the marker recorded, not to the broken one running (rolled back)."""
    ids = images["ids"]["api1"]
    before = running("api1")
    interrupt_once_running(images, audit, target)
    left = json.loads(marker("api1"))
    assert (left["from_id"], left["to_id"]) == (before, ids[target])
    if target == SLOW:
        labkit.wait_health("api1", "healthy")
    again = deploy(images, audit, "--image", target, "--also-move")
    assert outcome in again.stdout and not marker("api1"), again.stdout
    assert labkit.health("api1") == "healthy"
    if target == SLOW:
        assert again.code in (0, 3) and again.host("api1")["status"] == "changed", again.stdout
        assert running("api1") == ids[SLOW]
    else:
        assert again.code == 1 and "rolled back to" in again.host("api1")["message"], again.stdout
        assert running("api1") == before


@pytest.mark.deploy_faults
def test_an_image_named_by_a_variable_is_pinned_in_dot_env(images: dict[str, Any], audit: Path) -> None:
    """api2's compose file names api `${API_IMAGE:-local/busybox:1}` for this test: deploy sets
    API_IMAGE in the project's .env (worker, still on the fixed name, does not move: no --also-move)."""
    compose = sh("api2", "cat /srv/shop/compose.yaml")
    templated = compose.replace("image: local/busybox:1", "image: ${API_IMAGE:-local/busybox:1}", 1)
    assert templated != compose
    sh("api2", "cat > /srv/shop/compose.yaml", stdin=templated)
    ids, name_was = images["ids"]["api2"], image_of("api2", NAME)
    try:
        runs = quartet("deploy", "--host", "api2", "--service", "api", "--image", GOOD, hosts=["api2"],
                       audit=audit, inventory=images["inventory"],
                       state=lambda: (running("api2"), sh("api2", f"cat {labkit.SHOP_ENV}")))  # fmt: skip
        assert running("api2") == ids[GOOD] and labkit.health("api2") == "healthy"
        assert f"API_IMAGE={GOOD}" in sh("api2", f"cat {labkit.SHOP_ENV}").splitlines()
        assert image_of("api2", NAME) == name_was  # nothing retagged
        assert "set $API_IMAGE=local/api:good" in steps(runs.check, "api2")["decide"]["message"]
    finally:
        sh("api2", "cat > /srv/shop/compose.yaml", stdin=compose)
        labkit.reset_shop("api2", STATE)
