"""A team's compose project as compose finds it (api1, real dockerd and compose): `docker-compose.yml`
and its override file read without `compose_files`, a broken file said in compose's words, and each
service judged by its own health.

The project is `teamapp` in /srv/teamapp, made here and removed after (the shop project is left
alone): `web` (the api: httpd on 8090 with a Docker healthcheck and api_health_url) and `worker`
(httpd on 8091, its own healthcheck and its own URL in health_urls).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import hosts as lab_mod
from tests import labkit
from tests.labkit import inv

pytestmark = pytest.mark.lab

HOST = "api1"
DIR = "/srv/teamapp"
BY_HAND = f"cd {DIR} && docker compose"  # compose as an engineer runs it: no -f, no -p


def httpd(port: int, root: str) -> dict[str, Any]:
    return {
        "image": "local/busybox:1",
        "command": ["httpd", "-f", "-p", str(port), "-h", root],
        "volumes": [f"./{root.strip('/')}:{root}:ro"],
        "ports": [f"127.0.0.1:{port}:{port}"],
        "env_file": "app.env",
        "healthcheck": {"test": ["CMD", "wget", "-qO-", f"http://127.0.0.1:{port}/health"],
                        "interval": "1s", "timeout": "1s", "retries": 2, "start_period": "1s"},
        "stop_grace_period": "1s",
    }  # fmt: skip


BASE = {"services": {"web": httpd(8090, "/www"), "worker": httpd(8091, "/wwork")}}
OVERRIDE = {"services": {"extra": {"image": "local/busybox:1", "command": ["sleep", "100000"],
                                   "env_file": "app.env", "stop_grace_period": "1s"}}}  # fmt: skip


def sh(script: str, check: bool = True) -> str:
    return lab_mod.exec_on(HOST, ["sh", "-c", script], check=check, timeout=180).stdout.decode()


def write(name: str, text: str) -> None:
    lab_mod.exec_on(HOST, ["sh", "-c", f"cat > {DIR}/{name}"], input=text.encode())


def container(service: str) -> dict[str, Any]:
    ids = sh(f"{BY_HAND} ps -a -q {service}").split()
    assert len(ids) == 1, (service, ids)
    return json.loads(sh(f"docker inspect {ids[0]}"))[0]  # type: ignore[no-any-return]


def inventory(tmp_path: Path, **extra: Any) -> Path:
    """The lab's inventory for api1 alone, pointed at teamapp with neither compose_files nor
    compose_project_name (compose is to find them itself), plus `extra` vars."""
    data = yaml.safe_load(labkit.LAB_INVENTORY.read_text())
    common = data["all"]["vars"]
    for key in ("compose_files", "compose_project_name"):
        common.pop(key)
    common.update(extra)
    common.update(compose_project_dir=DIR, api_service="web", api_health_url="http://127.0.0.1:8090/health",
                  health_urls={"worker": "http://127.0.0.1:8091/health"}, health_timeout=8,
                  stop_timeout=1)  # fmt: skip
    host = data["all"]["children"]["api"]["hosts"][HOST]
    data["all"] = {"vars": common, "hosts": {HOST: host}}
    path = tmp_path / "teamapp.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def down() -> None:
    sh(f"[ -d {DIR} ] && cd {DIR} && docker compose -p teamapp down -t 1 --remove-orphans >/dev/null 2>&1; "
       f"rm -rf {DIR}", check=False)  # fmt: skip


@pytest.fixture
def teamapp(lab: Any, tmp_path: Path) -> Iterator[Path]:
    """/srv/teamapp with docker-compose.yml only (the name most teams use), up and healthy."""
    down()
    sh(f"mkdir -p {DIR}/www {DIR}/wwork && echo ok > {DIR}/www/health && echo ok > {DIR}/wwork/health "
       f"&& printf 'FLAG=0\\n' > {DIR}/app.env")  # fmt: skip
    write("docker-compose.yml", yaml.safe_dump(BASE))
    sh(f"{BY_HAND} up -d --wait", check=True)
    yield inventory(tmp_path)
    down()


def steps(ran: labkit.Ran) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in ran.host(HOST)["steps"]}


def test_docker_compose_yml_alone_is_the_project(teamapp: Path, audit: Path) -> None:
    """No compose_files: restart-api, ensure-healthy and health read docker-compose.yml as compose
    does by hand (they read "unhealthy (compose ps failed …)" when -f compose.yaml was passed)."""
    check = inv("restart-api", "--host", HOST, "--check", "--json", audit=audit, inventory=teamapp)
    assert check.code == 0, check.stdout + check.stderr
    facts = steps(check)["facts"]
    assert facts["status"] == "ok" and facts["message"].startswith("web: healthy"), facts
    assert "would restart web" in check.host(HOST)["message"]

    before = container("web")["State"]["StartedAt"]
    ran = inv("restart-api", "--host", HOST, "--json", audit=audit, inventory=teamapp)
    assert ran.code == 0, ran.stdout
    assert "restarted web; healthy after" in ran.host(HOST)["message"]
    assert container("web")["State"]["StartedAt"] != before  # the very container compose shows by hand

    ensure = inv("ensure-healthy", "--host", HOST, "--json", audit=audit, inventory=teamapp)
    assert ensure.code == 0 and ensure.host(HOST)["status"] == "ok", ensure.stdout
    health = inv("health", "--host", HOST, "--service", "web,worker", "--json", audit=audit,
                 inventory=teamapp)  # fmt: skip
    services = {name: s["status"] for name, s in steps(health).items() if name.startswith("service ")}
    assert services == {"service web": "ok", "service worker": "ok"}, health.stdout
    assert steps(health)["http http://127.0.0.1:8091/health"]["status"] == "ok"  # the worker's own URL


def test_unknown_service_is_named_alike_by_every_task(teamapp: Path, audit: Path) -> None:
    for task in ("health", "restart-api", "ensure-healthy"):
        ran = inv(task, "--host", HOST, "--service", "nosuch", "--json", audit=audit, inventory=teamapp)
        assert ran.code == 1, (task, ran.stdout, ran.stderr)
        message = ran.host(HOST)["message"]
        assert "unknown service 'nosuch': the project has web, worker" in message, (task, message)


def test_override_file_is_read_too(teamapp: Path, audit: Path) -> None:
    """docker-compose.override.yml adds `extra`: ensure-healthy starts it, and set-env finds that
    extra reads app.env from the override file and says so when it is done."""
    write("docker-compose.override.yml", yaml.safe_dump(OVERRIDE))
    check = inv("ensure-healthy", "--host", HOST, "--check", "--json", audit=audit, inventory=teamapp)
    assert steps(check)["extra"]["status"] == "changed", check.stdout
    assert "would start extra" in steps(check)["extra"]["message"]
    ran = inv("ensure-healthy", "--host", HOST, "--json", audit=audit, inventory=teamapp)
    assert ran.code == 0, ran.stdout
    assert container("extra")["State"]["Status"] == "running"  # compose, by hand, sees it too

    web = container("web")["Id"]
    changed = inv("set-env", "--host", HOST, "--service", "extra", "--set", "FLAG=1", "--json", audit=audit,
                  inventory=teamapp)  # fmt: skip
    assert changed.code == 0, changed.stdout
    done = steps(changed)["verify"]["message"]
    assert "web, worker also read(s) this file and keep the old values until recreated" in done, done
    assert sh(f"cat {DIR}/app.env") == "FLAG=1\n"
    env = dict(item.split("=", 1) for item in container("extra")["Config"]["Env"])
    assert env["FLAG"] == "1" and container("web")["Id"] == web  # only extra recreated


@pytest.mark.parametrize(
    ("broken", "words"),
    [
        ("services:\n  web:\n   image: [busybox\n", "compose configuration: "),
        ("services:\n  web:\n    image: busybox\n    bogus: 1\n", "compose configuration: validating "),
    ],
    ids=["yaml", "schema"],
)
def test_broken_file_is_a_configuration_problem(teamapp: Path, audit: Path, broken: str, words: str) -> None:
    """Every task says what is wrong with the configuration, in compose's words, never "unhealthy",
    and changes nothing."""
    before = container("web")["Id"]
    write("docker-compose.yml", broken)
    said = sh(f"{BY_HAND} config --services 2>&1", check=False).strip().splitlines()[-1]
    for args in (["restart-api"], ["ensure-healthy"], ["health"],
                 ["set-env", "--service", "web", "--set", "FLAG=2"]):  # fmt: skip
        ran = inv(*args, "--host", HOST, "--json", audit=audit, inventory=teamapp)
        assert ran.code == 1, (args, ran.stdout, ran.stderr)
        message = ran.host(HOST)["message"]
        assert words in message and said in message, (args, message, said)
        assert "unhealthy" not in message, (args, message)
    assert sh(f"cat {DIR}/app.env") == "FLAG=0\n"
    sh(f"docker inspect {before} >/dev/null")  # the container is still there, untouched


def test_missing_file_is_a_configuration_problem(teamapp: Path, audit: Path) -> None:
    sh(f"mv {DIR}/docker-compose.yml {DIR}/old.yml")
    ran = inv("restart-api", "--host", HOST, "--json", audit=audit, inventory=teamapp)
    assert ran.code == 1
    message = ran.host(HOST)["message"]
    assert "compose configuration: no configuration file provided: not found" in message, message
    sh(f"mv {DIR}/old.yml {DIR}/docker-compose.yml")


@pytest.mark.parametrize("files", [None, ["docker-compose.yml"]], ids=["found", "compose_files"])
def test_worker_is_judged_by_its_own_health(teamapp: Path, audit: Path, tmp_path: Path,
                                            files: list[str] | None) -> None:  # fmt: skip
    """The api (web) is down for good; restart-api --service worker judges the worker by its own
    healthcheck and URL: healthy, so --if-unhealthy leaves it alone and a restart is not escalated
    to a recreate (before, the api's URL failed it and a healthy worker was recreated)."""
    if files:
        teamapp = inventory(tmp_path, compose_files=files)
    sh(f"rm {DIR}/www/health")
    worker = container("worker")["Id"]
    alone = inv("restart-api", "--host", HOST, "--service", "worker", "--if-unhealthy", "--json", audit=audit,
                inventory=teamapp)  # fmt: skip
    assert alone.code == 0 and alone.host(HOST)["status"] == "ok", alone.stdout
    assert "http://127.0.0.1:8091/health answers" in steps(alone)["facts"]["message"]

    ran = inv("restart-api", "--host", HOST, "--service", "worker", "--json", audit=audit, inventory=teamapp)
    assert ran.code == 0, ran.stdout
    assert "recreate" not in steps(ran) and steps(ran)["restart"]["status"] == "changed", ran.stdout
    assert "restarted worker; healthy after" in ran.host(HOST)["message"]
    assert container("worker")["Id"] == worker  # restarted, not recreated
    # and the worker's own URL failing is what makes it unhealthy, not the api's
    sh(f"rm {DIR}/wwork/health")
    bad = inv("restart-api", "--host", HOST, "--service", "worker", "--if-unhealthy", "--check", "--json",
              audit=audit, inventory=teamapp)  # fmt: skip
    assert "8091" in steps(bad)["facts"]["message"] and "8090" not in steps(bad)["facts"]["message"]
