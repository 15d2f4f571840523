"""Helpers for tests on the lab of real hosts: run the real front end, read real container state."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab import hosts as lab

ROOT = Path(__file__).resolve().parent.parent
LAB_INVENTORY = ROOT / "inventories" / "lab.yml"
COMPOSE = ["docker", "compose", "-p", "shop", "-f", "/srv/shop/compose.yaml"]


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]

    def host(self, name: str) -> dict[str, Any]:
        for host in self.json()["hosts"]:
            if host["host"] == name:
                return host  # type: ignore[no-any-return]
        raise AssertionError(f"no result for {name} in {self.stdout}")


def inv(
    *args: str,
    audit: Path,
    inventory: Path = LAB_INVENTORY,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> Ran:
    """Run `inv ARGS --inventory …` as the on-call engineer would, in a fresh process (`stdin`: what
    is piped into it; None: this process's stdin)."""
    environ = {**os.environ, "REMEDIATIONS_AUDIT_LOG": str(audit), "NO_COLOR": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *args, "--inventory", str(inventory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        check=False,
        input=stdin,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_local_inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]], **all_vars: Any) -> Path:
    """An inventory of local hosts (`ansible_connection: local`), each with its own target_dir and a
    lock_dir under tmp_path: for engine tests that need no lab."""
    body = {name: {"target_dir": str(tmp_path / "hosts" / name), **own} for name, own in hosts.items()}
    data = {
        "all": {
            "vars": {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock"), **all_vars},
            "hosts": body,
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_inventory(
    path: Path, *, all_vars: dict[str, Any] | None = None, host_vars: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A copy of the lab inventory with some vars changed."""
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    data["all"].setdefault("vars", {}).update(all_vars or {})
    for group in data["all"]["children"].values():
        for name, body in (group.get("hosts") or {}).items():
            if host_vars and name in host_vars:
                body.update(host_vars[name])
    path.write_text(yaml.safe_dump(data))
    return path


def api_container(host: str) -> dict[str, Any]:
    """`docker inspect` of the api container on a lab host, read inside the host."""
    ids = lab.exec_on(host, [*COMPOSE, "ps", "-a", "-q", "api"]).stdout.decode().split()
    assert len(ids) == 1, f"expected one api container on {host}, got {ids}"
    data = json.loads(lab.exec_on(host, ["docker", "inspect", ids[0]]).stdout)
    return data[0]  # type: ignore[no-any-return]


def started_at(host: str) -> str:
    return str(api_container(host)["State"]["StartedAt"])


def health(host: str) -> str:
    return str(api_container(host)["State"].get("Health", {}).get("Status"))


def break_until_restart(host: str) -> None:
    """Remove the health file inside the container: unhealthy until it restarts."""
    container = api_container(host)["Id"]
    lab.exec_on(host, ["docker", "exec", container, "rm", "-f", "/tmp/www/health"])


def break_persistently(host: str) -> None:
    """Remove the health file on the host: restart and recreate cannot help."""
    lab.exec_on(host, ["rm", "-f", "/srv/shop/www/health"])


def repair(host: str) -> None:
    lab.exec_on(host, ["sh", "-c", "printf '%s\\n' '{\"status\":\"ok\"}' > /srv/shop/www/health"])
    if health(host) != "healthy":  # `up --wait` alone leaves an unhealthy container as it is
        lab.exec_on(host, [*COMPOSE, "up", "-d", "--force-recreate", "--wait", "api"], timeout=120)


def wait_health(host: str, want: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(host) == want:
            return
        time.sleep(0.5)
    raise AssertionError(f"{host}: health never became {want} (now {health(host)})")


BASELINE_ENV = (lab.ASSETS / "env").read_text()
SHOP_ENV = "/srv/shop/.env"


def reset_shop(host: str, state_files: str = "/var/lib/remediations/images.json") -> None:
    """The shop project at its baseline: the lab's .env (0600), no env backups, no `state_files`,
    no pins, every service up and the api healthy."""
    lab.exec_on(host, ["sh", "-c", f"cat > {SHOP_ENV} && chmod 600 {SHOP_ENV}"], input=BASELINE_ENV.encode())
    lab.exec_on(host, ["sh", "-c", f"rm -f {SHOP_ENV}.*.bak /srv/shop/pins/* {state_files}"])
    repair(host)
    lab.exec_on(host, [*COMPOSE, "up", "-d", "--wait"], check=False, timeout=120)
    if health(host) != "healthy":
        lab.exec_on(host, [*COMPOSE, "up", "-d", "--force-recreate", "--wait", "api"], timeout=120)


@contextlib.contextmanager
def private_moto(setup_calls: int) -> Iterator[str]:
    """A moto server of the test's own on loopback that enforces IAM after `setup_calls` requests
    (the lab's shared one accepts any key). Yields its endpoint URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(setup_calls)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@contextlib.contextmanager
def host_venv(name: str) -> Iterator[Path]:
    """A venv lab hosts can run, for the cron entries installed on them: the interpreter of the
    controller's venv lives under the controller's /root, which every lab host has its own of. This
    one is Debian's python3 (also on each host) with this venv's packages on its path, under /var/tmp
    (shared), with an `inv` beside it. Yields its bin folder."""
    import sysconfig

    venv = Path(f"/var/tmp/{name}-{os.getpid()}")
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)  # fmt: skip
    Path(done.stdout.strip(), "controller-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inv_script = venv / "bin" / "inv"
    inv_script.write_text(f"#!{venv}/bin/python\nimport sys\n\nfrom invoke.main import program\n\n"
                          "sys.exit(program.run())\n")  # fmt: skip
    inv_script.chmod(0o755)
    try:
        yield venv / "bin"
    finally:
        subprocess.run(["rm", "-rf", str(venv)], check=False)
