"""How the compose files are found, held to the real thing: `docker compose config` on this machine
(it needs no daemon) picks the files; our facts command, run in a real shell, reports what compose says."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from remediations.core.errors import CommandResult
from remediations.facts.compose import (
    DEFAULT_FILES,
    OVERRIDE_FILES,
    Project,
    config_error,
    facts_command,
    parse_facts,
    parse_project_facts,
    project_facts_command,
)


def compose_works() -> bool:
    if not shutil.which("docker"):
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=30)
    return done.returncode == 0


needs_compose = pytest.mark.skipif(not compose_works(), reason="needs the docker compose CLI")


def service_of(name: str) -> str:
    """Each file defines one service named after the file, so the merged services say which were read."""
    return name.replace(".", "-")


def write_file(directory: Path, name: str) -> None:
    (directory / name).write_text(f"services:\n  {service_of(name)}:\n    image: busybox\n")


def compose_says(directory: Path) -> set[str]:
    done = subprocess.run(["docker", "compose", "config", "--services"], cwd=directory, capture_output=True,
                          text=True, check=False, timeout=30)  # fmt: skip
    return set(done.stdout.split()) if done.returncode == 0 else set()


@needs_compose
def test_chosen_files_are_the_ones_compose_reads(tmp_path: Path) -> None:
    """Every combination of the default names (and one or two override names): compose's pick."""
    combos = [
        (*base, *over)
        for size in range(0, 4)
        for base in itertools.combinations(DEFAULT_FILES, size)
        for over in ((), OVERRIDE_FILES[:1], OVERRIDE_FILES[2:], (OVERRIDE_FILES[1], OVERRIDE_FILES[3]))
    ]
    for index, names in enumerate(combos):
        directory = tmp_path / f"p{index}"
        directory.mkdir()
        for name in names:
            write_file(directory, name)
        project = Project(str(directory), "p", (), explicit_name=False)
        existing = [str(directory / n) for n in names]
        chosen = project.chosen_files(existing)
        expected = compose_says(directory)
        assert {service_of(Path(p).name) for p in chosen} == expected, names


def test_compose_file_var_and_explicit_files() -> None:
    project = Project("/srv/app", "app", (), explicit_name=False)
    assert project.chosen_files([], "base.yml:ops/prod.yml") == ["/srv/app/base.yml", "/srv/app/ops/prod.yml"]
    explicit = Project("/srv/app", "app", ("a.yml", "b.yml"))
    assert explicit.chosen_files([]) == ["/srv/app/a.yml", "/srv/app/b.yml"]
    assert explicit.file_candidates() == ["/srv/app/a.yml", "/srv/app/b.yml"]


def test_config_error_is_compose_first_error_after_its_warnings() -> None:
    stderr = (
        'time="2026-12-01T15:42:33Z" level=warning msg="Found multiple config files with supported names"\n'
        "validating /srv/app/docker-compose.yml: services.api.bogus false schema\n"
        "second line\n"
    )
    assert config_error(stderr, "1") == (
        "compose configuration: validating /srv/app/docker-compose.yml: services.api.bogus false schema"
    )
    assert config_error("", "15") == "compose configuration: exit 15"
    assert config_error("no configuration file provided: not found\n", "14") == (
        "compose configuration: no configuration file provided: not found (compose looks in the project "
        "directory for compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml; "
        "or set compose_files)"
    )
    assert config_error("WARNING: v1 says\nERROR: Can't find a suitable configuration file\n", "1") == (
        "compose configuration: ERROR: Can't find a suitable configuration file"
    )


def run_facts(command: str, directory: Path) -> CommandResult:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(directory),
        "DOCKER_HOST": "unix:///nonexistent",
    }
    done = subprocess.run(
        ["sh", "-c", command], cwd=directory, capture_output=True, text=True, check=False, timeout=60, env=env
    )
    return CommandResult(command, done.returncode, done.stdout, done.stderr)


@needs_compose
@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "compose configuration: no configuration file provided: not found"),
        ({"docker-compose.yml": "services:\n  api:\n   image: [busybox\n"}, "compose configuration: "),
        (
            {"compose.yaml": "services:\n  api:\n    image: busybox\n    bogus: 1\n"},
            "compose configuration: validating ",
        ),
    ],
    ids=["no-file", "yaml-error", "schema-error"],
)
def test_configuration_problems_are_said_as_such(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """Real compose on a bad project: the facts say what is wrong with the configuration, in
    compose's own words, and never that a service is unhealthy."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    project = Project(str(tmp_path), "app", (), explicit_name=False)
    one = parse_facts("api", None, run_facts(facts_command(project, "api", None, 2), tmp_path))
    every = parse_project_facts({}, run_facts(project_facts_command(project, {}, 2), tmp_path))
    for error in (one.error, every.error):
        assert error.startswith(expected), error
        assert "unhealthy" not in error and "ps failed" not in error
    assert one.verdict() == (False, one.error)


@needs_compose
def test_docker_compose_yml_alone_is_read_and_a_missing_service_named(tmp_path: Path) -> None:
    """The seeds' name: docker-compose.yml (plus its override) is read with no compose_files; a
    service it does not define is an unknown service, as in every task."""
    (tmp_path / "docker-compose.yml").write_text("services:\n  api:\n    image: busybox\n")
    (tmp_path / "docker-compose.override.yml").write_text("services:\n  worker:\n    image: busybox\n")
    project = Project(str(tmp_path), "app", (), explicit_name=False)
    nosuch = parse_facts("nosuch", None, run_facts(facts_command(project, "nosuch", None, 2), tmp_path))
    assert nosuch.error == "unknown service 'nosuch': the project has api, worker"
    # No daemon here: compose ps fails, but the configuration was read (api and worker).
    every = parse_project_facts({}, run_facts(project_facts_command(project, {}, 2), tmp_path))
    assert not every.error.startswith("compose configuration"), every.error


@needs_compose
@pytest.mark.parametrize(
    ("names", "dotenv", "services"),
    [
        (
            ["docker-compose.yml", "docker-compose.override.yml"],
            "",
            {"docker-compose-yml", "docker-compose-override-yml"},
        ),
        (["compose.yaml", "docker-compose.yml"], "", {"compose-yaml"}),
        (
            ["compose.yaml", "base.yml", "ops.yml"],
            "SECRET=x\nCOMPOSE_FILE=base.yml:ops.yml\n",
            {"base-yml", "ops-yml"},
        ),
    ],
    ids=["override", "several", "compose-file-in-env"],
)
def test_compose_texts_are_the_files_compose_reads(
    tmp_path: Path, names: list[str], dotenv: str, services: set[str]
) -> None:
    """set-env and the rotations read env_file: from the files compose reads, COMPOSE_FILE in the
    project's .env included: held to `docker compose config` in a real shell."""
    from remediations.actions.env_files import compose_services, compose_texts
    from remediations.core.inventory import Host
    from remediations.core.remote import LocalRemote

    for name in names:
        write_file(tmp_path, name)
    (tmp_path / ".env").write_text(dotenv)
    assert compose_says(tmp_path) == services  # the oracle
    project = Project(str(tmp_path), "p", (), explicit_name=False)
    texts = compose_texts(LocalRemote(Host("ctl", {"ansible_connection": "local"}, (), "t.yml")), project)
    assert {name for found in compose_services(texts) for name in found} == services
