"""Real Alertmanager and Prometheus for the alert receiver's tests (issue 18): Debian's own binaries,
started with a temp config on free ports, stopped at the end. No stand-ins.

- `Sink`: a small HTTP server on loopback that records every POST (headers, JSON body, when): the
  webhook end for the kit's own tests, before a receiver is involved;
- `alertmanager(...)`: prometheus-alertmanager 0.25 with one route to a webhook URL (a bearer
  `credentials_file`, `send_resolved`), short group_wait / group_interval / repeat_interval, its own
  storage, no cluster (`--cluster.listen-address=`): two of them are HA peers whose gossip does not
  reach each other, and each sends; alerts pushed and resolved with `amtool alert add`;
- `prometheus_on(host, ...)`: prometheus 2.42 inside a lab host's namespaces (the api publishes its
  port on the host's loopback only), scraping the api's `/metrics` (lab/assets/metrics, served by
  the api's own httpd: it stops answering when the api is down) every second, evaluating `APIDown`
  (`up{job="api"} == 0` for 3 s) and sending to Alertmanagers on the lab bridge's address.

Addresses: loopback, and the controller's side of the lab bridge (198.18.0.1) for an Alertmanager
a Prometheus on a lab host sends to. Nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
LOOPBACK = "127.0.0.1"
BRIDGE = "198.18.0.1"  # the controller's address on the lab bridge (lab.base.BRIDGE_ADDRESS)
TOKEN = "am-bearer-token-for-tests-0123456789"  # noqa: S105 - a test value
TIMINGS = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "4s"}


def require_binaries(*paths: str) -> None:
    """Missing Debian packages: an error under CI (scripts/bootstrap installs them), else a skip
    that says how to get them."""
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        message = f"{', '.join(missing)} missing: run scripts/bootstrap (prometheus, prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port(address: str = LOOPBACK) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def wait_until(what: str, probe: Callable[[], Any], timeout: float, step: float = 0.2) -> Any:
    """Poll `probe` until it returns something true; that value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# The sink: what Alertmanager really posts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    at: float  # time.monotonic() when it arrived
    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    answered: int  # the status code the sink answered it with

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.body.get("alerts", []) if status is None or a.get("status") == status]


@dataclass
class Sink:
    """Records every POST; answers `status` (200 unless a test says otherwise)."""

    url: str
    posts: list[Post] = field(default_factory=list)
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, post: Post) -> None:
        with self.lock:
            self.posts.append(post)

    def seen(self, match: Callable[[Post], bool] = lambda p: True) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if match(p)]

    def wait(self, match: Callable[[Post], bool], count: int = 1, timeout: float = 30) -> list[Post]:
        """The first `count` posts that match, once there are that many."""

        def enough() -> list[Post]:
            hits = self.seen(match)
            return hits[:count] if len(hits) >= count else []

        try:
            found: list[Post] = wait_until(f"{count} matching POST(s) at {self.url}", enough, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; seen: {[p.body.get('status') for p in self.seen()]}") from None
        return found

    def clear(self) -> None:
        with self.lock:
            self.posts.clear()


def _handler(sink: Sink) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
            answer = sink.status
            sink.record(Post(time.monotonic(), self.path, dict(self.headers.items()), body, answer))
            self.send_response(answer)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


@contextlib.contextmanager
def sink(path: str = "/alertmanager") -> Iterator[Sink]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), http.server.BaseHTTPRequestHandler)
    receiving = Sink(f"http://{LOOPBACK}:{server.server_address[1]}{path}")
    server.RequestHandlerClass = _handler(receiving)
    thread = threading.Thread(target=server.serve_forever, name="am-sink", daemon=True)
    thread.start()
    try:
        yield receiving
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Alertmanager
# ---------------------------------------------------------------------------------------------


def alertmanager_config(webhook_url: str, token_file: Path, timings: Mapping[str, str]) -> dict[str, Any]:
    """One route to one webhook receiver, as the README's snippet has it."""
    return {
        "route": {"receiver": "remediations", "group_by": ["alertname", "instance"], **timings},
        "receivers": [{
            "name": "remediations",
            "webhook_configs": [{
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
            }],
        }],
    }  # fmt: skip


@dataclass
class Alertmanager:
    name: str
    url: str
    folder: Path
    proc: subprocess.Popen[bytes]

    def amtool(self, *argv: str, timeout: float = 20) -> str:
        done = subprocess.run([AMTOOL, f"--alertmanager.url={self.url}", "--timeout=10s", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
        assert done.returncode == 0, f"amtool {' '.join(argv)} failed: {done.stderr.strip()}"
        return done.stdout

    def add(self, labels: Mapping[str, str], *, start: dt.datetime, end: dt.datetime | None = None,
            annotations: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """`amtool alert add`: firing from `start`, resolved once `end` is past (an end in the past
        resolves it, as Prometheus's resolved alert does)."""
        argv = ["alert", "add", *(f"{k}={v}" for k, v in labels.items()), f"--start={rfc3339(start)}"]
        argv += [f"--annotation={k}={v}" for k, v in (annotations or {}).items()]
        if end is not None:
            argv.append(f"--end={rfc3339(end)}")
        self.amtool(*argv)

    def resolve(self, labels: Mapping[str, str], *, start: dt.datetime) -> None:
        self.add(labels, start=start, end=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))

    def alerts(self) -> list[dict[str, Any]]:
        """Its v2 API's view (`GET /api/v2/alerts`)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as answer:
            data: list[dict[str, Any]] = json.loads(answer.read())
        return data

    def log(self) -> str:
        return (self.folder / "alertmanager.log").read_text(errors="replace")[-3000:]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def alertmanager(webhook_url: str, *, name: str = "am", token: str = TOKEN, address: str = LOOPBACK,
                 timings: Mapping[str, str] = TIMINGS) -> Iterator[Alertmanager]:  # fmt: skip
    """A real Alertmanager on a free port of `address`, alone (no cluster), its config and storage
    in a temp folder; stopped (SIGTERM) and removed at the end."""
    require_binaries(ALERTMANAGER, AMTOOL)
    folder = Path(tempfile.mkdtemp(prefix=f"rm-{name}-"))
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = folder / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url, token_file, timings)))
    port = free_port(address)
    argv = [ALERTMANAGER, f"--config.file={config}", f"--storage.path={folder / 'data'}",
            f"--web.listen-address={address}:{port}", f"--web.external-url=http://{address}:{port}",
            "--cluster.listen-address=", "--log.level=info"]  # fmt: skip
    with (folder / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    running = Alertmanager(name, f"http://{address}:{port}", folder, proc)
    try:
        wait_until(f"{name} ready on {running.url}",
                   lambda: proc.poll() is not None or answers(f"{running.url}/-/ready"), 20)  # fmt: skip
        assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{running.log()}"
        yield running
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def alertmanager_pair(webhook_url: str, **kwargs: Any) -> Iterator[tuple[Alertmanager, Alertmanager]]:
    """Two Alertmanagers sending to the same webhook, as an HA pair whose gossip is cut (or slower
    than its peer_timeout): each notifies on its own, the receiver gets every notification twice."""
    with alertmanager(webhook_url, name="am-a", **kwargs) as first, \
            alertmanager(webhook_url, name="am-b", **kwargs) as second:  # fmt: skip
        yield first, second


# ---------------------------------------------------------------------------------------------
# Prometheus on a lab host
# ---------------------------------------------------------------------------------------------

APIDOWN_FOR = "3s"


def prometheus_config(alertmanagers: Sequence[str], instance: str, target: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}],
                                        "timeout": "2s"}]},
        # `instance` is the host's name and the api's port, as a central Prometheus would label it
        "scrape_configs": [{"job_name": "api", "static_configs": [{"targets": [target],
                                                                   "labels": {"instance": instance}}]}],
    }  # fmt: skip


RULES = {
    "groups": [{
        "name": "api",
        "interval": "1s",
        "rules": [{
            "alert": "APIDown",
            "expr": 'up{job="api"} == 0',
            "for": APIDOWN_FOR,
            "labels": {"severity": "critical"},
            "annotations": {"summary": "the api on {{ $labels.instance }} does not answer"},
        }],
    }],
}  # fmt: skip


@dataclass
class Prometheus:
    host: str
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    def api(self, path: str) -> Any:
        """GET its HTTP API from inside the host (it listens on the host's own loopback)."""
        from lab import hosts as lab

        url = f"http://{LOOPBACK}:{self.port}{path}"
        done = lab.exec_on(self.host, ["curl", "-fsS", "-m", "5", url], check=False, timeout=15)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def alerts(self) -> list[dict[str, Any]]:
        """Its alerts (`/api/v1/alerts`): labels, state (pending | firing), activeAt."""
        data = self.api("/api/v1/alerts")
        return list(data["data"]["alerts"]) if data else []

    def firing(self, name: str = "APIDown") -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"]

    def up(self) -> float | None:
        data = self.api('/api/v1/query?query=up%7Bjob%3D%22api%22%7D')
        result = data["data"]["result"] if data else []
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]


def write_prometheus_files(folder: Path, alertmanagers: Sequence[str], instance: str, target: str) -> Path:
    """prometheus.yml and rules.yml in `folder`, checked by promtool (an error here is the kit's)."""
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(alertmanagers, instance, target), sort_keys=False))
    (folder / "rules.yml").write_text(yaml.safe_dump(RULES, sort_keys=False))
    checked = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True,
                             timeout=30, check=False)  # fmt: skip
    assert checked.returncode == 0, f"promtool check config: {checked.stdout}{checked.stderr}"
    return config


def api_serves_metrics(host: str) -> None:
    """The host's api answers /metrics (lab/assets/metrics). A container started before the lab had
    that file copies its web root only when it starts, so it is recreated once."""
    from lab import hosts as lab

    probe = ["wget", "-qO-", "http://127.0.0.1:8080/metrics"]
    if lab.exec_on(host, probe, check=False).returncode != 0:
        compose = ["docker", "compose", "-p", "shop", "-f", "/srv/shop/compose.yaml"]
        lab.exec_on(host, [*compose, "up", "-d", "--force-recreate", "--wait", "api"], timeout=120)
    assert b"lab_api_up 1" in lab.exec_on(host, probe).stdout, f"{host}'s api serves no /metrics"


@contextlib.contextmanager
def prometheus_on(host: str, alertmanagers: Sequence[str], *, instance: str | None = None,
                  target: str = f"{LOOPBACK}:8080", port: int = 19090) -> Iterator[Prometheus]:  # fmt: skip
    """A real Prometheus inside lab host `host`, scraping `target` (the api, on the host's loopback)
    as job "api" with `instance` (default HOST:8080) and sending APIDown to `alertmanagers`
    (host:port, reachable from the host: the bridge address). Its files in /var/tmp (which lab
    hosts share with the controller); stopped and removed at the end."""
    from lab import hosts as lab

    require_binaries(PROMETHEUS, PROMTOOL)
    folder = Path(tempfile.mkdtemp(prefix=f"rm-prom-{host}-", dir="/var/tmp"))
    config = write_prometheus_files(folder, alertmanagers, instance or f"{host}:8080", target)
    argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}", "--rules.alert.resend-delay=2s",
            "--log.level=info"]  # fmt: skip
    with (folder / "prometheus.log").open("wb") as log:
        proc = lab.popen_on(host, argv, stdout=log)
    running = Prometheus(host, port, folder, proc)
    try:
        ready = lambda: proc.poll() is not None or running.api("/api/v1/status/runtimeinfo")  # noqa: E731
        wait_until(f"prometheus ready on {host}", ready, 30, 0.5)
        assert proc.poll() is None, f"prometheus on {host} exited {proc.returncode}:\n{running.log()}"
        yield running
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)
