"""rollback after the deploys teams really make, on the lab (host api1: real dockerd and compose).

A deploy here is what a team's CI or on-call does without this tool: build a new image under the name
compose uses (no registry in the lab: `docker build` FROM the current one, legacy builder) and
`docker compose up -d`. api and worker share the image name local/busybox:1, so every retag would
move worker too: the shared-name refusal is part of every scenario.
"""

from __future__ import annotations

import json
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
NAME = "local/busybox:1"
RECORD = "/var/lib/remediations/images.json"
TAGS = ("local/busybox:sha-a", "local/busybox:sha-b")  # CI-style extra tags some tests make
SAVED = "lab-rollback-saved/busybox"


def sh(script: str, check: bool = True) -> str:
    return lab_mod.exec_on(HOST, ["sh", "-c", script], check=check, timeout=180).stdout.decode()


def image_of(name: str) -> str:
    return sh(f"docker image inspect --format '{{{{.Id}}}}' {name}").strip()


def running(service: str) -> str:
    ids = sh(f"cd /srv/shop && {' '.join(COMPOSE)} ps -a -q {service}").split()
    assert len(ids) == 1, ids
    return str(json.loads(sh(f"docker inspect {ids[0]}"))[0]["Image"])


def build(label: str, *extra_tags: str) -> str:
    """A new image under NAME (and `extra_tags`), made from what NAME is now: a CI build."""
    tags = " ".join(f"-t {t}" for t in (NAME, *extra_tags))
    dockerfile = f"FROM {NAME}\\nLABEL lab.deploy={label}\\n"
    sh(f"printf '{dockerfile}' | DOCKER_BUILDKIT=0 docker build -q {tags} - >/dev/null 2>&1")
    return image_of(NAME)


def deploy(label: str, *extra_tags: str) -> str:
    """A deploy made outside this tool: build, then `docker compose up -d` (every service)."""
    new = build(label, *extra_tags)
    sh(f"cd /srv/shop && {' '.join(COMPOSE)} up -d --wait >/dev/null 2>&1")
    assert running("api") == new and running("worker") == new
    return new


def record() -> list[dict[str, Any]]:
    text = sh(f"cat {RECORD} 2>/dev/null || true")
    return list(json.loads(text)["services"].get("shop/api", [])) if text.strip() else []


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def set_aside(tags: list[str], back: bool = False) -> None:
    """Other tags of local/busybox that other tests left (they would be candidates too) moved to
    SAVED and, with `back`, returned: retagged, never deleted."""
    for tag in tags:
        here, there = f"local/busybox:{tag}", f"{SAVED}:{tag}"
        if back:
            here, there = there, here
        sh(f"docker tag {here} {there} && docker rmi {here} >/dev/null")


@pytest.fixture
def base(lab: Any) -> Iterator[str]:
    """The shop at its baseline, no record, no dangling images, NAME the only tag of its repository;
    yields the baseline image id and puts everything back afterwards."""
    labkit.reset_shop(HOST)
    sh(f"docker rmi {' '.join(TAGS)} >/dev/null 2>&1; docker image prune -f >/dev/null", check=False)
    original = image_of(NAME)
    keep = {"1", *(t.rpartition(":")[2] for t in TAGS)}
    others = [t for t in sh("docker image ls local/busybox --format '{{.Tag}}'").split() if t not in keep]
    set_aside(others)
    try:
        yield original
    finally:
        sh(f"docker tag {original} {NAME}")
        labkit.reset_shop(HOST)  # every container back on the original, so the tags below can go
        sh(f"docker rmi {' '.join(TAGS)} >/dev/null 2>&1", check=False)
        set_aside(others, back=True)
        sh("docker image prune -f >/dev/null", check=False)


def test_outside_deploys_seen_by_health_runs_roll_back_exactly_one(base: str, audit: Path) -> None:
    """Deploys by hand, cron's health runs between them: rollback goes back one, to the deploy before."""
    inv("health", "--host", HOST, "--json", audit=audit)
    assert [(e["id"], e["by"]) for e in record()] == [(base, "observed")]
    second = deploy("b")
    inv("health", "--host", HOST, "--json", audit=audit)
    third = deploy("c")
    inv("health", "--host", HOST, "--json", audit=audit)
    assert [e["id"] for e in record()] == [base, second, third]

    runs = quartet("rollback", "--host", HOST, "--service", "api", "--also-move", hosts=[HOST], audit=audit,
                   state=lambda: (running("api"), image_of(NAME)))  # fmt: skip
    assert running("api") == second  # one deploy back, not two
    assert running("worker") == third  # named, not recreated: it moves at its next recreate
    assert image_of(NAME) == second
    assert "shop/worker" in runs.check.host(HOST)["message"]
    assert "already runs the previous image" in runs.again.host(HOST)["message"]
    assert record()[-1]["id"] == second and record()[-1]["by"] == "rollback"


def test_the_tools_change_then_an_outside_deploy_goes_back_one_not_two(base: str, audit: Path) -> None:
    """The issue's case: set-env recreated api onto a new image (recorded), then a deploy by hand."""
    second = build("b")
    changed = inv("set-env", "--host", HOST, "--service", "api", "--set", "MAINTENANCE_MODE=1", "--json",
                  audit=audit)  # fmt: skip
    assert changed.code == 0, changed.stdout
    assert running("api") == second
    third = deploy("c")

    # worker runs the same image name: retagging it is refused, naming worker, and nothing changes.
    refused = inv("rollback", "--host", HOST, "--service", "api", "--json", audit=audit)
    assert refused.code == 1, refused.stdout
    message = refused.host(HOST)["message"]
    assert f"{NAME} is also the image name of shop/worker" in message and "--also-move" in message
    assert (running("api"), running("worker"), image_of(NAME)) == (third, third, third)

    ran = inv("rollback", "--host", HOST, "--service", "api", "--also-move", "--json", audit=audit)
    assert ran.code == 0, ran.stdout
    assert running("api") == second, f"went back to {short(running('api'))}, not one deploy back"
    assert running("api") != base
    assert labkit.health(HOST) == "healthy"


def test_without_a_record_refuses_with_candidates_lists_them_and_goes_to(base: str, audit: Path) -> None:
    """A first rollback after a deploy by hand, no record at all, the old image left untagged."""
    second = deploy("b")
    refused = inv("rollback", "--host", HOST, "--service", "api", "--json", audit=audit)
    assert refused.code == 1, refused.stdout
    message = refused.host(HOST)["message"]
    assert "no previous image known for api" in message and "choose one with --to IMAGE" in message
    assert f"{short(base)} (an untagged image created" in message
    assert running("api") == second

    # The refusing run noted what runs now; --list shows the candidates and writes nothing.
    assert [(e["id"], e["by"]) for e in record()] == [(second, "observed")]
    noted = sh(f"cat {RECORD}")
    listed = inv("rollback", "--host", HOST, "--service", "api", "--list", "--json", audit=audit)
    assert listed.code == 0, listed.stdout
    shown = listed.host(HOST)["message"]
    assert f"api runs {short(second)}; candidates, newest first: 1. " in shown and short(base) in shown
    assert "on the host" in shown
    assert sh(f"cat {RECORD}") == noted and running("api") == second

    missing = inv("rollback", "--host", HOST, "--service", "api", "--to", "local/busybox:nosuch", "--json",
                  audit=audit)  # fmt: skip
    assert missing.code == 1
    assert "--to local/busybox:nosuch: no such image on the host" in missing.host(HOST)["message"]
    assert running("api") == second

    quartet("rollback", "--host", HOST, "--service", "api", "--to", short(base), "--also-move", hosts=[HOST],
            audit=audit, state=lambda: running("api"))  # fmt: skip
    assert running("api") == base and labkit.health(HOST) == "healthy"


def test_without_a_record_the_only_other_tag_of_the_repository_is_the_previous_image(
    base: str, audit: Path
) -> None:
    """CI tags every build by commit (`:sha-…`) and moves `:1`: Docker alone knows the previous one."""
    sh(f"docker tag {base} {TAGS[0]}")
    second = deploy("b", TAGS[1])
    listed = inv("rollback", "--host", HOST, "--service", "api", "--list", "--json", audit=audit)
    assert f"{short(base)} (tagged {TAGS[0]}" in listed.host(HOST)["message"]
    ran = inv("rollback", "--host", HOST, "--service", "api", "--also-move", "--json", audit=audit)
    assert ran.code == 0, ran.stdout
    assert running("api") == base and running("worker") == second


def test_two_deploys_between_sightings_are_refused_not_rolled_back_two(base: str, audit: Path) -> None:
    """health saw the baseline, then two deploys by hand before the next sighting (ensure-healthy's
    gather): going back to the baseline would be two deploys back, so rollback refuses and names the
    image in between."""
    inv("health", "--host", HOST, "--json", audit=audit)
    second = deploy("b")
    checked = inv("ensure-healthy", "--host", HOST, "--check", "--json", audit=audit)
    assert checked.code == 0, checked.stdout
    assert [e["id"] for e in record()] == [base]  # check mode notes nothing
    third = deploy("c")
    noted = inv("ensure-healthy", "--host", HOST, "--json", audit=audit)
    assert noted.code == 0, noted.stdout
    assert [(e["id"], e["by"]) for e in record()] == [(base, "observed"), (third, "observed")]

    refused = inv("rollback", "--host", HOST, "--service", "api", "--also-move", "--json", audit=audit)
    assert refused.code == 1, refused.stdout
    message = refused.host(HOST)["message"]
    assert f"{short(second)} (an untagged image created" in message
    assert f"so {short(base)} may be two deploys back" in message and "choose one with --to IMAGE" in message
    assert (running("api"), image_of(NAME)) == (third, third)
