"""Metrics probes on the lab: `inv health` scrapes a real prometheus_client exporter that listens on
db1's own loopback (so only a fetch made ON the host reaches it, over SSH), and sees a series the
test pushes over its threshold turn the check red."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from tests import labkit

pytestmark = pytest.mark.lab

HOST = "db1"
PORT = 9108
# The exporter: prometheus_client's own HTTP server; inbound_queue_depth is read from a file at each
# scrape, so the test pushes a value by writing the file (in /var/tmp, which db1 shares).
EXPORTER = """
import sys, time
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
registry = CollectorRegistry()
path = sys.argv[1]
depth = Gauge("inbound_queue_depth", "Telegram updates waiting", ["queue"], registry=registry)
depth.labels("in").set_function(lambda: float(open(path).read()))
Counter("outbound_429", "429 answers from Telegram", registry=registry).inc(2)
start_http_server(int(sys.argv[2]), addr="127.0.0.1", registry=registry)
print("listening", flush=True)
while True:
    time.sleep(60)
"""


def lab_argv(argv: list[str]) -> list[str]:
    """`argv` inside db1's network and mount namespaces (as exec_on runs it), for a Popen."""
    from lab.base import _ns_argv
    from lab.state import _host

    return _ns_argv(_host(HOST), argv)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Path]:
    """The exporter running on db1; yields the file its inbound_queue_depth is read from."""
    with labkit.host_venv("rm-metrics") as bin_dir:
        value = bin_dir.parent / "queue_depth"
        value.write_text("12")
        proc = subprocess.Popen(lab_argv([str(bin_dir / "python"), "-c", EXPORTER, str(value), str(PORT)]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
            yield value
        finally:
            proc.terminate()
            proc.wait(10)


def run_health(tmp_path: Path, *probes: dict[str, Any]) -> tuple[labkit.Ran, dict[str, dict[str, Any]]]:
    own = {"compose_project_dir": "", "api_health_url": "", "health_pg_archiver": False,
           "health_disk_paths": [], "health_probes": list(probes)}  # fmt: skip
    inventory = labkit.write_inventory(tmp_path / "inv.yml", host_vars={HOST: own})
    ran = labkit.inv("health", "--host", HOST, "--json", audit=tmp_path / "audit.jsonl", inventory=inventory)
    assert ran.code in (0, 1), ran.stdout + ran.stderr
    checks = {s["data"]["check"]["name"]: s["data"]["check"] for s in ran.host(HOST)["steps"]
              if "check" in s.get("data", {})}  # fmt: skip
    return ran, checks


BACKEND = {"name": "backend", "metrics": f"http://127.0.0.1:{PORT}/metrics",
           "red": ['inbound_queue_depth{queue="in"} > 1000', "outbound_queue_depth > 1000"],
           "yellow": "outbound_429_total > 1"}  # fmt: skip
QUEUE = 'metrics backend: inbound_queue_depth{queue="in"} > 1000'


def test_health_scrapes_on_the_host_and_sees_a_series_pushed_over_its_threshold(
    tmp_path: Path, exporter: Path
) -> None:
    # the exporter answers on db1's loopback only: the controller cannot reach it
    from_here = subprocess.run(["curl", "-fsS", "-m", "2", f"http://127.0.0.1:{PORT}/metrics"],
                               capture_output=True, check=False)  # fmt: skip
    assert from_here.returncode != 0
    exporter.write_text("12")
    ran, checks = run_health(tmp_path, BACKEND)
    assert (checks[QUEUE]["colour"], checks[QUEUE]["value"]) == ("green", 12.0)
    assert checks["metrics backend: outbound_queue_depth > 1000"]["value"] == "missing"  # not exported
    assert checks["metrics backend: outbound_429_total > 1"]["colour"] == "yellow"
    exporter.write_text("1500")  # the backend falls behind
    ran, checks = run_health(tmp_path, BACKEND)
    assert (checks[QUEUE]["colour"], checks[QUEUE]["value"]) == ("red", 1500.0)
    assert 'inbound_queue_depth{queue="in"} = 1500' in checks[QUEUE]["detail"]
    assert ran.code == 1
    [last] = [s for s in ran.host(HOST)["steps"] if s["step"] == "health"]
    assert QUEUE in last["data"]["red"]
    exporter.write_text("nan")
    _, checks = run_health(tmp_path, BACKEND)
    assert (checks[QUEUE]["colour"], checks[QUEUE]["value"]) == ("red", "NaN")
    exporter.write_text("12")


def test_health_says_when_the_endpoint_on_the_host_is_down(tmp_path: Path, exporter: Path) -> None:
    lab.exec_on(HOST, ["true"])  # the lab is up
    started = time.monotonic()
    gone = {"name": "gone", "metrics": "http://127.0.0.1:9/metrics", "red": "inbound_queue_depth > 1000"}
    _, checks = run_health(tmp_path, gone, BACKEND)
    assert checks["metrics gone"]["colour"] == "red" and checks["metrics gone"]["value"] == "unreadable"
    assert "fetch failed" in checks["metrics gone"]["detail"]
    assert checks[QUEUE]["colour"] == "green"  # the other probe is still read
    assert time.monotonic() - started < 60
