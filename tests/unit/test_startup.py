"""Start-up of the real front end: `inv TASK` imports that task's remediation module and no other;
--list, --help and bad input still see every task."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from invoke.tasks import Task

from remediations.cli import PendingTask, collection, every_task, only_named
from remediations.core import registry
from tests import sshserver

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ("docker", "host", "firewall", "s3", "postgres", "secrets", "bots", "systemd")
HEAVY = ("boto3", "botocore", "psycopg", "docker", "fabric")  # none of them is restart-api's

# Runs Invoke's own `inv` program in this process and prints, once it is done, which remediation
# modules and heavy libraries it imported.
PROBE = f"""
import atexit, gc, json, sys
def frozen(module, name):  # an object gc.freeze moved out of the collector's sight is in no generation
    if module not in sys.modules:
        return None
    return id(getattr(sys.modules[module], name)) not in {{id(o) for o in gc.get_objects()}}
def seen():
    names = sorted(sys.modules)
    print(json.dumps({{
        "gc": {{"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                "paramiko_frozen": frozen("paramiko", "Transport"),
                "engine_frozen": frozen("remediations.core.engine", "Engine")}},
        "remediations": [m for m in names if m.count(".") == 2 and m.split(".")[1] in {DOMAINS!r}
                         and m.startswith("remediations.")],
        "heavy": [m for m in names if m.split(".")[0] in {HEAVY!r}],
        "paramiko": "paramiko" in sys.modules,
        "http": [m for m in ("http.client", "urllib.request") if m in sys.modules],
    }}), file=sys.stderr)
atexit.register(seen)
from invoke.main import program
program.run(["inv", *sys.argv[1:]])
"""


def probe(*argv: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATIONS_")}
    environ |= {"NO_COLOR": "1", "REMEDIATIONS_AUDIT_LOG": str(cwd / "audit.jsonl")}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environ, check=False)  # fmt: skip
    return done, json.loads(done.stderr.splitlines()[-1])


def assert_only(seen: dict[str, list[str]], *modules: str) -> None:
    """`modules` are the remediation modules imported, and nothing else of another domain was."""
    remediations = set(registry.index().values())
    assert sorted(m for m in seen["remediations"] if m in remediations) == sorted(modules)
    domains = {m.split(".")[1] for m in modules}
    assert [m for m in seen["remediations"] if m.split(".")[1] not in domains] == []


def test_task_help_imports_that_task_alone() -> None:
    done, seen = probe("restart-api", "--help")
    assert done.returncode == 0, done.stderr
    assert "Restart the api service" in done.stdout
    assert_only(seen, "remediations.docker.restart_api")
    assert seen["heavy"] == [] and not seen["paramiko"]


def test_the_collector_is_paused_during_start_up() -> None:
    """tasks.py pauses Python's cyclic garbage collector; `--help` runs nothing, so nothing ends it."""
    done, seen = probe("restart-api", "--help")
    assert done.returncode == 0, done.stderr
    assert seen["gc"]["enabled"] is False and seen["gc"]["frozen"] == 0


def test_a_run_over_ssh_freezes_the_start_up_with_the_ssh_client_and_collects_again(tmp_path: Path) -> None:
    """A real run over SSH (tests/sshserver.py on loopback: its commands print nothing, so the facts
    find no compose once connected): the engine ended the pause once the SSH client was imported, so
    paramiko's objects were frozen with the rest, and the run collected its own garbage."""
    key_file = tmp_path / "id_ed25519"
    key = sshserver.ed25519_key_file(key_file)
    with sshserver.serving(key) as server:
        known = tmp_path / "known_hosts"
        known.write_text(server.known_hosts_line())
        host = {"ansible_host": "127.0.0.1", "ansible_port": server.port, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key_file),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes",
                "compose_project_dir": "/srv/shop", "compose_project_name": "shop", "api_service": "api"}
        inventory = tmp_path / "hosts.yml"
        inventory.write_text(yaml.safe_dump({"all": {"hosts": {"ssh1": host}}}))
        argv = ("restart-api", "--check", "--host", "ssh1", "--inventory", str(inventory))
        done, seen = probe(*argv, cwd=tmp_path)
        assert server.accepted, done.stdout  # it connected (and authenticated) before the facts failed
    assert done.returncode == 1 and "neither 'docker compose'" in done.stdout, done.stdout + done.stderr
    assert seen["gc"]["enabled"] is True
    assert seen["gc"]["paramiko_frozen"] is True and seen["gc"]["engine_frozen"] is True
    assert seen["gc"]["frozen"] > 20_000  # start-up's objects, paramiko's and cryptography's among them


def test_help_of_a_task_named_after_help_imports_that_task_alone() -> None:
    done, seen = probe("--help", "block-ip")
    assert done.returncode == 0, done.stderr
    assert "--ip" in done.stdout
    assert_only(seen, "remediations.firewall.block_ip")


def test_a_check_run_imports_no_other_remediation_and_no_boto_or_psycopg(tmp_path: Path) -> None:
    """A real run (a local host whose project directory is missing: the facts step fails)."""
    hosts = {"local1": {"compose_project_dir": str(tmp_path / "no such project")}}
    data = {"all": {"vars": {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock"),
                             "compose_project_name": "shop", "api_service": "api"},
                    "children": {"api": {"hosts": hosts}}}}  # fmt: skip
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(data))
    argv = ("restart-api", "--check", "--host", "local1", "--inventory", str(inventory))
    done, seen = probe(*argv, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the host failed: the run went through the engine
    assert "local1" in done.stdout
    assert_only(seen, "remediations.docker.restart_api")
    assert seen["heavy"] == []
    assert seen["http"] == []  # no notification channel configured: nothing imported to send one
    assert seen["gc"]["enabled"] is True and seen["gc"]["engine_frozen"] is True  # the pause ended
    assert seen["gc"]["paramiko_frozen"] is None  # a local host: no SSH client imported


def test_two_tasks_on_one_command_line_import_both() -> None:
    done, seen = probe("list-blocks", "--help", "restart-api")
    assert done.returncode == 0, done.stderr
    assert_only(seen, "remediations.firewall.list_blocks", "remediations.docker.restart_api")


@pytest.mark.parametrize("argv", [["--list"], ["restart-api", "--list"]], ids=["list", "list-after-a-task"])
def test_list_still_shows_every_task_with_its_help(argv: list[str]) -> None:
    done, _ = probe(*argv)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    listed = {line.split()[0]: line for line in lines if line[:2] == "  " and line[2:3].strip()}
    declared = {name: cls for name, cls in registry.discover().items()
                if cls.__module__.startswith("remediations.")}  # fmt: skip
    assert set(declared) <= set(listed)
    for name, cls in declared.items():
        first_words = " ".join((cls.__doc__ or "").split()[:3])
        assert first_words and first_words in " ".join(listed[name].split()), name


def test_an_unknown_task_still_gets_a_suggestion_from_every_task() -> None:
    done, _ = probe("rotate-secrt", "--host", "prod")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "error: no task 'rotate-secrt'; did you mean rotate-secret? (inv --list shows every task)")


def test_a_pending_task_is_the_declared_task_once_used() -> None:
    lazy, eager = collection(), collection(lazy=False)
    assert set(lazy.tasks) == set(eager.tasks)
    for name, made in eager.tasks.items():
        if name == "runbook":  # not a remediation: built whole at once, its module is import-light
            continue
        pending = lazy.tasks[name]
        assert isinstance(pending, PendingTask) and not pending.resolved
        assert pending.name == name
        assert [(a.names, a.kind, a.default, a.help) for a in pending.get_arguments()] == \
            [(a.names, a.kind, a.default, a.help) for a in made.get_arguments()]  # fmt: skip
        assert pending.resolved
        assert pending.__doc__ == made.__doc__ and pending.iterable == made.iterable


def test_inv_writes_the_bytecode_of_the_modules_it_imports(tmp_path: Path) -> None:
    """Invoke turns bytecode writing off: a checkout that only `inv` runs kept compiling from source."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "remediations", checkout / "remediations",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "tasks.py", checkout)
    unset = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run([sys.executable, "-m", "invoke", "restart-api", "--help"], cwd=checkout,
                          env=environ | {"PYTHONPATH": str(checkout)}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list((checkout / "remediations" / "docker" / "__pycache__").glob("restart_api.*.pyc"))
    assert not (checkout / "__pycache__").exists()  # tasks.py itself: Invoke's choice stands


def test_completion_still_sees_every_task_and_a_tasks_flags() -> None:
    done, _ = probe("--complete", "--", "inv")
    assert done.returncode == 0, done.stderr
    assert set(registry.index()) <= set(done.stdout.split())
    done, _ = probe("--complete", "--", "inv", "restart-api", "--")
    assert done.returncode == 0, done.stderr
    assert {"--service", "--if-unhealthy", "--host", "--check"} <= set(done.stdout.split())


def test_only_named_keeps_the_named_the_used_and_a_teams_own_tasks() -> None:
    def deploy(c: Any) -> None:
        """A team's own task."""

    ns = collection(Task(deploy))
    ns.tasks["health"].get_arguments()  # used already: kept
    only = only_named(ns, ["restart-api", "--host", "prod"])
    # runbook is no pending task (it runs remediations by name): always there, its module import-light
    assert only is not None and sorted(only.tasks) == ["deploy", "health", "restart-api", "runbook"]
    assert set(ns.tasks) == set(registry.names()) | {"deploy", "runbook"}  # the whole collection, whole
    assert only_named(only, ["restart-api"]) is None  # nothing more to leave out


def test_every_task_adds_a_declared_task_the_index_lacks() -> None:
    from remediations.core.remediation import Remediation

    ns = collection()

    class Unindexed(Remediation):
        """A remediation whose folder's TASKS does not name it."""

        task: ClassVar[str] = "toy-unindexed"

    try:
        assert "toy-unindexed" not in ns.tasks and "toy-unindexed" not in registry.index()
        every_task(ns)
        assert ns.tasks["toy-unindexed"].__doc__ == "A remediation whose folder's TASKS does not name it."
    finally:
        registry.unregister("toy-unindexed")
