"""Compose facts: the one-round-trip command, its pure parser, the verdict, and restart-api's decision.

The recorded outputs below are real output of `compose.facts_command` on the lab host api1 (Compose
v2, project /srv/shop), with `docker inspect` trimmed to the fields the parser reads. The unhealthy,
starting and exited inspect documents follow the same recorded document with Docker's own values.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from remediations.core.errors import CommandResult, UsageError
from remediations.core.inventory import Host
from remediations.docker.restart_api import Decision as Plan
from remediations.docker.restart_api import decide
from remediations.facts.compose import (
    Container,
    Project,
    ServiceFacts,
    facts_command,
    label_filters,
    parse_facts,
)
from tests import labkit

URL = "http://127.0.0.1:8080/health"
API_ID = "04fb962ee8f0e28224e7e70c3b7139cb2101d5553e692e2f551501d53d311c0f"
STARTED = "2026-11-23T16:12:41.987476058Z"

# `docker inspect` of the lab's api container, recorded on api1 (trimmed).
API_INSPECT: list[dict[str, Any]] = json.loads(
    r"""
[
    {
        "Id": "04fb962ee8f0e28224e7e70c3b7139cb2101d5553e692e2f551501d53d311c0f",
        "Created": "2026-11-23T16:11:46.19161996Z",
        "Name": "/shop-api-1",
        "Image": "sha256:a5cfc80cee344df74f1be764d3fe2b8cc12c55e1c65fe10657b070b5ac5c8f14",
        "State": {
            "Status": "running",
            "Running": true,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 9934,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2026-11-23T16:12:41.987476058Z",
            "FinishedAt": "2026-11-23T16:12:15.421094136Z",
            "Health": {
                "Status": "healthy",
                "FailingStreak": 0,
                "Log": [
                    {
                        "Start": "2026-11-23T16:13:32.624643375Z",
                        "End": "2026-11-23T16:13:32.681143323Z",
                        "ExitCode": 0,
                        "Output": "{\"status\":\"ok\"}"
                    },
                    {
                        "Start": "2026-11-23T16:13:33.688538804Z",
                        "End": "2026-11-23T16:13:33.787735108Z",
                        "ExitCode": 0,
                        "Output": "{\"status\":\"ok\"}"
                    }
                ]
            }
        }
    }
]
"""
)

# The lab's worker service: no healthcheck, so no State.Health at all (recorded on api1).
WORKER_INSPECT: list[dict[str, Any]] = json.loads(
    r"""
[
    {
        "Id": "65b06470a083b2d84c5f6007a94e3b8c110db2157d8515e9d34083cc16e9af4d",
        "Created": "2026-11-23T16:10:03.147678694Z",
        "Name": "/shop-worker-1",
        "Image": "sha256:a5cfc80cee344df74f1be764d3fe2b8cc12c55e1c65fe10657b070b5ac5c8f14",
        "State": {
            "Status": "running",
            "Running": true,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 10091,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2026-11-23T16:12:42.32397642Z",
            "FinishedAt": "2026-11-23T16:12:14.412950458Z"
        }
    }
]
"""
)


# `config --services` of the lab's project, and its (empty) stderr.
SERVICES = "@@services 0\napi\nworker\n@@cferr\n"


def recorded(compose: str, ps: str, inspect: list[dict[str, Any]] | None, http: str | None = None) -> str:
    """facts_command's output: the same sections in the same order, inspect as docker indents it."""
    text = f"@@compose {compose}\n{SERVICES}@@ps {ps}\n@@inspect\n"
    if inspect is not None:
        text += json.dumps(inspect, indent=4) + "\n"
    if http is not None:
        text += f"@@http {http}\n"
    return text


def parsed(stdout: str, service: str = "api", url: str | None = URL) -> ServiceFacts:
    return parse_facts(service, url, CommandResult("facts", 0, stdout, ""))


def with_state(**state: Any) -> list[dict[str, Any]]:
    doc = copy.deepcopy(API_INSPECT)
    doc[0]["State"].update(state)
    return doc


UNHEALTHY = with_state(
    Health={
        "Status": "unhealthy",
        "FailingStreak": 3,
        "Log": [
            {"ExitCode": 1, "Output": "wget: server returned error: HTTP/1.0 404 Not Found\n"},
            {"ExitCode": 1, "Output": "wget: server returned error: HTTP/1.0 404 Not Found\n"},
        ],
    }
)
STARTING = with_state(Health={"Status": "starting", "FailingStreak": 0, "Log": []})
EXITED = with_state(Status="exited", Running=False, ExitCode=137, Health=None)

# Real recordings of facts_command on api1.
HEALTHY_OUT = recorded("v2", f"0\n{API_ID}", API_INSPECT, '0\n{"status":"ok"}')
BAD_URL_OUT = recorded(
    "v2",
    f"0\n{API_ID}",
    API_INSPECT,
    "7\ncurl: (7) Failed to connect to 127.0.0.1 port 8099 after 0 ms: Couldn't connect to server",
)
NO_SUCH_SERVICE_OUT = f"@@compose v2\n{SERVICES}@@ps 0\n@@inspect\n"
NO_DIR_OUT = "@@error\nproject directory /srv/nosuch dir does not exist\n"
WORKER_OUT = recorded(
    "v2", "0\n65b06470a083b2d84c5f6007a94e3b8c110db2157d8515e9d34083cc16e9af4d", WORKER_INSPECT
)
# compose printed a deprecation warning (merged into the ids by 2>&1), then the real container id.
WARNING_OUT = (
    f"@@compose v2\n{SERVICES}@@ps 0\n"
    'time="2026-11-23T16:15:51Z" level=warning msg="/tmp/rmtest-facts/override.yaml: the attribute '
    '`version` is obsolete, it will be ignored, please remove it to avoid potential confusion"\n'
    f"{API_ID}\n@@inspect\n@@http 0\n" + '{"status":"ok"}\n'
)


def test_parse_recorded_healthy_api() -> None:
    facts = parsed(HEALTHY_OUT)
    assert facts.error == ""
    assert facts.variant == "v2"
    [api] = facts.containers
    assert (api.id, api.name, api.state, api.started_at, api.health, api.health_output, api.image_id) == (
        "04fb962ee8f0",
        "shop-api-1",
        "running",
        STARTED,
        "healthy",
        '{"status":"ok"}',
        "sha256:a5cfc80cee344df74f1be764d3fe2b8cc12c55e1c65fe10657b070b5ac5c8f14",
    )
    assert (facts.http_url, facts.http_exit, facts.http_output) == (URL, 0, '{"status":"ok"}')
    assert facts.verdict() == (True, f"running, docker health healthy, {URL} answers")
    assert facts.healthy


def test_parse_recorded_v1_host() -> None:
    facts = parsed(HEALTHY_OUT.replace("@@compose v2", "@@compose v1"))
    assert facts.variant == "v1"
    assert facts.healthy


# (recorded stdout, service, url, expected healthy, expected reason, expected error)
VERDICT_CASES = [
    pytest.param(
        BAD_URL_OUT,
        "api",
        "http://127.0.0.1:8099/health",
        False,
        "http://127.0.0.1:8099/health failed: curl: (7) Failed to connect to 127.0.0.1 port 8099 after "
        "0 ms: Couldn't connect to server",
        "",
        id="http-refused",
    ),
    pytest.param(WORKER_OUT, "worker", None, True, "running (no health check)", "", id="no-healthcheck"),
    pytest.param(
        recorded("v2", f"0\n{API_ID}", UNHEALTHY, '0\n{"status":"ok"}'),
        "api",
        URL,
        False,
        "container shop-api-1 is unhealthy: wget: server returned error: HTTP/1.0 404 Not Found",
        "",
        id="docker-unhealthy",
    ),
    pytest.param(
        recorded("v2", f"0\n{API_ID}", STARTING, '0\n{"status":"ok"}'),
        "api",
        URL,
        False,
        "container shop-api-1 health check is still starting",
        "",
        id="starting",
    ),
    pytest.param(
        recorded("v2", f"0\n{API_ID}", EXITED, "7\ncurl: (7) Failed to connect"),
        "api",
        URL,
        False,
        "container shop-api-1 is exited",
        "",
        id="exited",
    ),
    pytest.param(
        recorded("v2", "0\n", None),
        "api",
        None,
        False,
        "no api container exists",
        "",
        id="no-container",
    ),
    pytest.param(
        NO_SUCH_SERVICE_OUT,
        "nosuchservice",
        None,
        False,
        "unknown service 'nosuchservice': the project has api, worker",
        "unknown service 'nosuchservice': the project has api, worker",
        id="no-such-service",
    ),
    pytest.param(
        NO_DIR_OUT,
        "api",
        URL,
        False,
        "project directory /srv/nosuch dir does not exist",
        "project directory /srv/nosuch dir does not exist",
        id="no-project-dir",
    ),
    pytest.param(
        "@@compose none\n@@ps 0\n\n@@inspect\n",
        "api",
        None,
        False,
        "neither 'docker compose' nor 'docker-compose' works",
        "neither 'docker compose' nor 'docker-compose' works",
        id="no-compose",
    ),
    pytest.param(
        recorded("v2", f"0\n{API_ID}", None) + "Error: No such object\n",
        "api",
        None,
        False,
        "docker inspect printed something that is not JSON",
        "docker inspect printed something that is not JSON",
        id="inspect-not-json",
    ),
]


@pytest.mark.parametrize(("stdout", "service", "url", "healthy", "reason", "error"), VERDICT_CASES)
def test_verdict_of_recorded_outputs(
    stdout: str, service: str, url: str | None, healthy: bool, reason: str, error: str
) -> None:
    facts = parsed(stdout, service, url)
    assert facts.verdict() == (healthy, reason)
    assert facts.healthy is healthy
    assert facts.error == error


def test_two_replicas_one_unhealthy_names_the_unhealthy_one() -> None:
    second = copy.deepcopy(UNHEALTHY[0])
    second["Name"] = "/shop-api-2"
    second["Id"] = "9" * 64
    facts = parsed(recorded("v2", f"0\n{API_ID}\n{'9' * 64}", [API_INSPECT[0], second], "0\nok"))
    assert [c.name for c in facts.containers] == ["shop-api-1", "shop-api-2"]
    healthy, why = facts.verdict()
    assert not healthy
    assert why.startswith("container shop-api-2 is unhealthy")


def test_http_section_ignored_when_no_url_is_configured() -> None:
    facts = parsed(BAD_URL_OUT, url=None)
    assert facts.http_exit is None
    assert facts.healthy


def test_compose_warning_does_not_hide_the_running_container() -> None:
    facts = parsed(WARNING_OUT)
    assert facts.error or facts.containers, "the service must not silently look absent"
    assert decide(facts, if_unhealthy=True).action != "recreate"


# ---- restarted_since ---------------------------------------------------------------------------


def facts_with(*containers: tuple[str, str]) -> ServiceFacts:
    return ServiceFacts(
        "api",
        "v2",
        tuple(
            Container(f"id-{name}", name, "running", started, "healthy", "", "img")
            for name, started in containers
        ),
    )


RESTART_CASES = [
    pytest.param(facts_with(("a", "t1")), facts_with(("a", "t1")), False, id="same-start"),
    pytest.param(facts_with(("a", "t1")), facts_with(("a", "t2")), True, id="restarted"),
    pytest.param(facts_with(("a", "t1")), facts_with(), False, id="gone"),
    pytest.param(facts_with(), facts_with(("a", "t1")), True, id="created"),
    pytest.param(facts_with(("a", "t1")), facts_with(("a-new", "t1")), True, id="recreated-new-name"),
    pytest.param(
        facts_with(("a", "t1"), ("b", "t1")), facts_with(("a", "t2"), ("b", "t1")), False, id="one-of-two"
    ),
    pytest.param(
        facts_with(("a", "t1"), ("b", "t1")), facts_with(("a", "t2"), ("b", "t3")), True, id="both-of-two"
    ),
]


@pytest.mark.parametrize(("before", "after", "expected"), RESTART_CASES)
def test_restarted_since(before: ServiceFacts, after: ServiceFacts, expected: bool) -> None:
    assert after.restarted_since(before) is expected


# ---- restart_api.decide ------------------------------------------------------------------------

HEALTHY_FACTS = parsed(HEALTHY_OUT)
UNHEALTHY_FACTS = parsed(recorded("v2", f"0\n{API_ID}", UNHEALTHY, "0\nok"), url=None)
ABSENT_FACTS = parsed(recorded("v2", "0\n", None), url=None)
ERROR_FACTS = parsed(NO_DIR_OUT)
EXITED_FACTS = parsed(recorded("v2", f"0\n{API_ID}", EXITED), url=None)

DECIDE_CASES = [
    pytest.param(HEALTHY_FACTS, False, Plan("restart", "api is healthy"), id="healthy-restart-anyway"),
    pytest.param(
        HEALTHY_FACTS,
        True,
        Plan("none", f"api is healthy (running, docker health healthy, {URL} answers); not restarted"),
        id="healthy-if-unhealthy",
    ),
    pytest.param(
        UNHEALTHY_FACTS,
        True,
        Plan(
            "restart",
            "api is unhealthy: container shop-api-1 is unhealthy: wget: server returned error: "
            "HTTP/1.0 404 Not Found",
        ),
        id="unhealthy-if-unhealthy",
    ),
    pytest.param(
        UNHEALTHY_FACTS,
        False,
        Plan(
            "restart",
            "api is unhealthy: container shop-api-1 is unhealthy: wget: server returned error: "
            "HTTP/1.0 404 Not Found",
        ),
        id="unhealthy",
    ),
    pytest.param(
        EXITED_FACTS, True, Plan("restart", "api is unhealthy: container shop-api-1 is exited"), id="exited"
    ),
    pytest.param(
        ABSENT_FACTS, False, Plan("recreate", "no api container exists; it will be created"), id="absent"
    ),
    pytest.param(
        ABSENT_FACTS,
        True,
        Plan("recreate", "no api container exists; it will be created"),
        id="absent-if-unhealthy",
    ),
    pytest.param(
        ERROR_FACTS,
        False,
        Plan("none", "cannot act: project directory /srv/nosuch dir does not exist"),
        id="error",
    ),
    pytest.param(
        ERROR_FACTS,
        True,
        Plan("none", "cannot act: project directory /srv/nosuch dir does not exist"),
        id="error-if-unhealthy",
    ),
]


@pytest.mark.parametrize(("facts", "if_unhealthy", "plan"), DECIDE_CASES)
def test_decide(facts: ServiceFacts, if_unhealthy: bool, plan: Plan) -> None:
    assert decide(facts, if_unhealthy) == plan


# ---- Project: argv and quoting -----------------------------------------------------------------


def host(**variables: Any) -> Host:
    return Host("api1", variables, ("api",), "inventories/test.yml")


def test_project_from_host_defaults() -> None:
    project = Project.from_host(host(compose_project_dir="/srv/shop/"))
    # No -f and no -p: compose finds its files and its name itself; "shop" only keys the records.
    assert project == Project("/srv/shop/", "shop", (), explicit_name=False)
    assert project.argv("v2", "ps") == ["docker", "compose", "ps"]


def test_project_from_host_explicit() -> None:
    project = Project.from_host(
        host(compose_project_dir="/srv/shop", compose_project_name="store", compose_files="prod.yml")
    )
    assert project == Project("/srv/shop", "store", ("prod.yml",))


def test_project_requires_its_directory() -> None:
    with pytest.raises(
        UsageError, match=r"inventories/test.yml: host api1: missing required var 'compose_project_dir'"
    ):
        Project.from_host(host(compose_project_name="shop"))


def test_argv_v2_and_v1() -> None:
    project = Project("/srv/shop", "shop", ("compose.yaml", "prod.yml"))
    files = ["-f", "compose.yaml", "-f", "prod.yml"]
    assert project.argv("v2", "restart", "-t", "2", "api") == [
        "docker",
        "compose",
        "-p",
        "shop",
        *files,
        "restart",
        "-t",
        "2",
        "api",
    ]
    assert project.argv("v1", "restart", "-t", "2", "api") == [
        "docker-compose",
        "-p",
        "shop",
        *files,
        "restart",
        "-t",
        "2",
        "api",
    ]


NASTY_DIR = '/srv/my shop/it\'s "here" $(touch CANARY) `touch CANARY`; rm -rf ~ #'
NASTY = Project(NASTY_DIR, "my 'shop' $HOME", ("base file.yaml", "over'ride\".yml"))
NASTY_SERVICE = "api; echo pwned"


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_command_quotes_every_value(variant: str) -> None:
    text = NASTY.command(variant, "restart", "-t", "2", NASTY_SERVICE)
    assert shlex.split(text) == [
        "cd",
        NASTY_DIR,
        "&&",
        *NASTY.argv(variant, "restart", "-t", "2", NASTY_SERVICE),
    ]


def test_facts_command_quotes_compose_argv() -> None:
    text = facts_command(NASTY, NASTY_SERVICE, None, 5)
    line = next(line for line in text.splitlines() if "ids=$(case" in line)
    for variant in ("v1", "v2"):
        inner = line.split(f"({variant}) ", 1)[1].split(" ;;", 1)[0]
        assert shlex.split(inner) == NASTY.argv(variant, "ps", "-a", "-q", NASTY_SERVICE)


FAKE_TOOL = """#!/bin/sh
# Stands in for a tool on the host so the shell text can be run here: records its cwd and argv
# (one call per line, arguments separated by \\037; both lines in one write, as calls may run at
# once), then prints $FAKE_OUTPUT.
IFS=$(printf '\\037'); printf '%s\\n%s\\n' "$(pwd)" "$*" >> "$ARGV_LOG"
case "$*" in *--services*) printf '%s\\n' "$FAKE_SERVICES"; exit 0 ;; esac
[ -n "$FAKE_OUTPUT" ] && printf '%s\\n' "$FAKE_OUTPUT"
exit 0
"""


def fake_bin(tmp_path: Path, *tools: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        path = bin_dir / tool
        path.write_text(FAKE_TOOL)
        path.chmod(0o755)
    return bin_dir


def run_locally(
    command: str, tmp_path: Path, bin_dir: Path, **env: str
) -> tuple[CommandResult, list[list[str]]]:
    """Run the facts command in a real shell; the fake tools in `bin_dir` record how they were called."""
    log = tmp_path / "argv.log"
    log.write_text("")
    done = subprocess.run(
        ["sh", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "ARGV_LOG": str(log), **env},
    )
    lines = log.read_text().splitlines()
    calls = [[lines[i], *lines[i + 1].split("\037")] for i in range(0, len(lines), 2)]
    return CommandResult(command, done.returncode, done.stdout, done.stderr), calls


def test_facts_command_in_a_real_shell_keeps_hostile_values_inert(tmp_path: Path) -> None:
    """Directory, names, service and URL full of shell syntax: nothing runs, every value arrives whole."""
    directory = tmp_path / 'my shop it\'s "q" $(touch CANARY1) `touch CANARY2`; touch CANARY5'
    directory.mkdir()
    url = "http://127.0.0.1:9/health?x='$(touch CANARY3)'&y=`touch CANARY4`"
    project = Project(str(directory), "my 'shop' $HOME", ("base file.yaml", "over'ride\".yml"))
    bin_dir = fake_bin(tmp_path, "docker", "curl")
    result, calls = run_locally(
        facts_command(project, NASTY_SERVICE, url, 2), tmp_path, bin_dir, FAKE_OUTPUT="ok",
        FAKE_SERVICES=NASTY_SERVICE,
    )
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in tmp_path.rglob("CANARY*")] == []
    assert [p.name for p in Path.cwd().glob("CANARY*")] == []
    config = project.argv("v2", "config", "--services")
    assert [str(directory), *config[1:]] in calls  # run in the project directory, argv intact
    # The project's name is given: its containers are listed by compose's labels, each value whole.
    by_label = ["ps", "-a", "-q", "--no-trunc", *label_filters(project.name, NASTY_SERVICE)]
    assert [str(directory), *by_label] in calls
    assert f"label=com.docker.compose.project={project.name}" in by_label
    curl = next(call for call in calls if call[1] == "-fsS")
    assert curl[1:] == ["-fsS", "-m", "2", url]
    facts = parse_facts(NASTY_SERVICE, url, result)
    assert facts.error == ""
    assert (facts.http_exit, facts.http_output) == (0, "ok")


def test_missing_directory_is_named_exactly(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone $(touch CANARY) it's")
    project = Project(missing, "shop", ("compose.yaml",))
    result, calls = run_locally(
        facts_command(project, "api", None, 2), tmp_path, fake_bin(tmp_path, "docker")
    )
    facts = parse_facts("api", None, result)
    assert facts.error == f"project directory {missing} does not exist"
    assert calls == []  # nothing else ran
    assert not list(tmp_path.rglob("CANARY*"))


def test_http_probe_in_a_real_shell(tmp_path: Path) -> None:
    """A real curl against a closed port: its exit code and message arrive in the http section."""
    project = Project(str(tmp_path), "shop", ("compose.yaml",))
    url = "http://127.0.0.1:9/health"
    result, _ = run_locally(
        facts_command(project, "api", url, 2), tmp_path, fake_bin(tmp_path, "docker"), FAKE_SERVICES="api"
    )
    facts = parse_facts("api", url, result)
    assert facts.http_exit == 7
    assert facts.http_output.startswith("curl: (7)")
    assert facts.verdict() == (False, "no api container exists")


# ---- on the lab: the command against real compose ----------------------------------------------


@pytest.fixture(scope="module")
def api1(lab: Any) -> str:
    """api1 with the shop project at its baseline (the lab is brought up if it is not)."""
    labkit.reset_shop("api1")
    return "api1"


def run_on_lab(host: str, command: str) -> CommandResult:
    from lab import hosts as lab

    done = lab.exec_on(host, ["sh", "-c", command], check=False, timeout=60)
    return CommandResult(command, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.mark.lab
def test_facts_on_the_lab_parse_as_recorded(api1: str) -> None:
    """Real facts parse to what `docker inspect` says, read separately on the host."""
    project = Project("/srv/shop", "shop", ("compose.yaml",))
    # The lab is shared: another run may be recreating the api right now (two containers, one named
    # <id>_shop-api-1, for a moment). Read until two reads agree on one settled container.
    settled = threading.Event()
    facts = parse_facts("api", URL, run_on_lab(api1, facts_command(project, "api", URL, 5)))
    for _ in range(40):
        again = parse_facts("api", URL, run_on_lab(api1, facts_command(project, "api", URL, 5)))
        if len(again.containers) == 1 and again.containers == facts.containers:
            settled.set()
            break
        facts = again
        settled.wait(0.5)
    assert settled.is_set(), f"api1's api never settled: {facts}"
    assert facts.error == ""
    assert facts.variant in ("v1", "v2")
    [api] = facts.containers
    assert api.name == "shop-api-1"
    inspect = json.loads(run_on_lab(api1, shlex.join(["docker", "inspect", api.id])).stdout)[0]
    assert inspect["Id"].startswith(api.id) and len(api.id) == 12
    # (state and start time may change under another lab user between the two reads; the image won't)
    assert (api.image_id, inspect["Name"]) == (inspect["Image"], "/shop-api-1")
    assert api.started_at and api.state
    assert api.health in ("healthy", "starting", "unhealthy")  # which one depends on the other lab users
    assert facts.http_exit is not None


@pytest.mark.lab
def test_hostile_project_dir_on_the_lab(api1: str) -> None:
    missing = "/tmp/remediations test 'no' $(touch /tmp/rm-CANARY) dir"
    result = run_on_lab(api1, facts_command(Project(missing, "x", ("compose.yaml",)), "api", None, 2))
    assert parse_facts("api", None, result).error == f"project directory {missing} does not exist"
    assert run_on_lab(api1, "test -e /tmp/rm-CANARY").exit_code == 1


def test_a_host_without_an_image_record_yet_gathers_fine(tmp_path: Path) -> None:
    """The record is the last section: its absence must not make the facts command fail."""
    project = Project(str(tmp_path), "shop", ("compose.yaml",))
    record = str(tmp_path / "state" / "images.json")
    result, _ = run_locally(facts_command(project, "api", None, 2, record), tmp_path,
                            fake_bin(tmp_path, "docker"), FAKE_SERVICES="api")  # fmt: skip
    assert result.exit_code == 0, result.stdout
    assert parse_facts("api", None, result).record == ""
    Path(record).parent.mkdir()
    Path(record).write_text('{"version": 2, "services": {}}\n')
    result, _ = run_locally(facts_command(project, "api", None, 2, record), tmp_path,
                            fake_bin(tmp_path, "docker"), FAKE_SERVICES="api")  # fmt: skip
    assert parse_facts("api", None, result).record == '{"version": 2, "services": {}}'
