"""restart-api's cost on a real host (api1): its round trips, and a health wait that sees a service
back soon after it is (not on a 1 s tick).

The wait test uses its own compose project, `rswait` in /srv/rswait (made here, removed after; the
shop project is left alone): one service `web`, busybox httpd whose health URL is a CGI script that
logs each request's time (the kernel's uptime, one clock for the host and its containers) and answers
503 until one second after the container started, 200 after.
"""

from __future__ import annotations

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
DIR = "/srv/rswait"
PORT = 8097
READY_AFTER = 1.0  # seconds after its start before the service says it is healthy
URL = f"http://127.0.0.1:{PORT}/cgi-bin/health"

HEALTH_CGI = f"""#!/bin/sh
now=$(cut -d' ' -f1 /proc/uptime)
echo "$now" >> /state/polls
start=$(cat /state/started)
if awk -v n="$now" -v s="$start" 'BEGIN {{ exit !(n - s >= {READY_AFTER}) }}'; then
  printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nok\\n'
else
  printf 'HTTP/1.0 503 Service Unavailable\\r\\nContent-Type: text/plain\\r\\n\\r\\nnot yet\\n'
fi
"""

COMPOSE = {
    "services": {
        "web": {
            "image": "local/busybox:1",
            "command": ["sh", "-c", "cut -d' ' -f1 /proc/uptime > /state/started; "
                        f"exec httpd -f -p {PORT} -h /www"],
            "volumes": ["./www:/www:ro", "./state:/state"],
            "ports": [f"127.0.0.1:{PORT}:{PORT}"],
            "stop_grace_period": "1s",
        }
    }
}  # fmt: skip


def sh(script: str, check: bool = True) -> str:
    return lab_mod.exec_on(HOST, ["sh", "-c", script], check=check, timeout=180).stdout.decode()


@pytest.fixture
def rswait(lab: Any, tmp_path: Path) -> Iterator[Path]:
    """The rswait project up on api1, and an inventory whose api is its `web` service."""
    sh(f"rm -rf {DIR} && mkdir -p {DIR}/www/cgi-bin {DIR}/state")
    lab_mod.exec_on(HOST, ["sh", "-c", f"cat > {DIR}/compose.yaml"], input=yaml.safe_dump(COMPOSE).encode())
    cgi = f"{DIR}/www/cgi-bin/health"
    lab_mod.exec_on(HOST, ["sh", "-c", f"cat > {cgi} && chmod 755 {cgi}"], input=HEALTH_CGI.encode())
    sh(f"cd {DIR} && docker compose -p rswait up -d --wait web", check=True)
    yield rswait_inventory(tmp_path / "inv.yml")
    sh(f"cd {DIR} && docker compose -p rswait down -t 1; rm -rf {DIR}", check=False)


def rswait_inventory(path: Path, **overrides: Any) -> Path:
    """The lab inventory with api1's api being rswait's `web`."""
    own = {"compose_project_dir": DIR, "compose_project_name": "rswait", "compose_files": ["compose.yaml"],
           "api_service": "web", "api_health_url": URL, "health_timeout": 20, "stop_timeout": 1,
           "state_dir": f"{DIR}/state/rm", **overrides}  # fmt: skip
    return labkit.write_inventory(path, host_vars={HOST: own})


def _uptimes(text: str) -> list[float]:
    return [float(line) for line in text.split() if line.strip()]


def test_a_service_back_after_a_second_is_seen_soon_after(rswait: Path, audit: Path) -> None:
    """Polls come on a short backoff: several before the service is ready (a 1 s tick allows at
    most one), and the first one after it sees it healthy well within a second."""
    sh(f": > {DIR}/state/polls")
    ran = inv("restart-api", "--host", HOST, "--json", audit=audit, inventory=rswait)
    assert ran.code == 0, ran.stdout + ran.stderr
    result = ran.host(HOST)
    assert result["status"] == "changed", result
    assert "restarted web; healthy after" in result["message"]
    started = float(sh(f"cat {DIR}/state/started"))
    ready = started + READY_AFTER
    polls = [t for t in _uptimes(sh(f"cat {DIR}/state/polls")) if t >= started]
    before_ready = [t for t in polls if t < ready]
    seen = [t for t in polls if t >= ready]
    assert len(before_ready) >= 3, f"polls at {[round(t - started, 2) for t in polls]} s after the start"
    assert seen, "no poll after the service was ready"
    assert seen[0] - ready < 0.9, f"seen healthy {seen[0] - ready:.2f} s after it was"
    assert len(seen) == 1  # the wait stopped at the first healthy answer


def test_a_service_that_never_answers_still_fails_clearly(rswait: Path, audit: Path, tmp_path: Path) -> None:
    """The deadline is health_timeout, as before; the reason is the URL's own answer."""
    inventory = rswait_inventory(tmp_path / "short.yml", health_timeout=2)
    sh(f"sed -i 's/>= {READY_AFTER}/>= 3600/' {DIR}/www/cgi-bin/health")
    ran = inv("restart-api", "--host", HOST, "--json", audit=audit, inventory=inventory)
    assert ran.code == 1, ran.stdout
    result = ran.host(HOST)
    assert result["status"] == "failed"
    assert "still unhealthy after restart and recreate" in result["message"]
    assert f"{URL} failed" in result["message"] and "503" in result["message"]
    assert [s["step"] for s in result["steps"]] == ["facts", "restart", "recreate"]


def test_round_trips_of_one_restart(rswait: Path) -> None:
    """One exec for the lock with the facts and the image record, one for the restart carrying the
    wait's first poll, then only the cheap polls (no compose in them); nothing else."""
    from remediations.core import connection, inventory
    from remediations.core.engine import Engine
    from remediations.core.options import RunOptions
    from remediations.docker.restart_api import RestartApi

    execs: list[str] = []

    def connect(host: Any, timeout: float) -> Any:
        remote: Any = connection.connect(host, timeout)
        run, open_process = remote.run, remote.open_process

        def counted_run(command: str, **kw: Any) -> Any:
            execs.append(command)
            return run(command, **kw)

        def counted_open(command: str) -> Any:
            execs.append(command)
            return open_process(command)

        remote.run, remote.open_process = counted_run, counted_open
        return remote

    inv_ = inventory.load(rswait)
    first = Engine(inv_, RunOptions()).run(RestartApi(), inv_.select(HOST))  # notes the image once
    assert not first.failed, first.failed[0].message
    run = Engine(inv_, RunOptions(), connect=connect).run(RestartApi(), inv_.select(HOST))
    assert not run.failed, run.failed[0].message
    lock, restart, *polls = execs
    assert "flock" in lock and "config --services" in lock and "images.json" in lock
    assert "compose -p rswait -f compose.yaml restart -t 1 web" in restart
    assert "docker ps" in restart and restart.count("compose -p") == 1  # the first poll, after it
    assert polls  # the service answers 503 for a second after its start: more polls follow
    for poll in polls:
        assert "docker ps" in poll and "compose" not in poll.replace("com.docker.compose", "")
