"""Docker: an engine per host, the busybox image, the compose project "shop"."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from lab.base import (
    _BUSYBOX,
    _BUSYBOX_LINKS,
    _BUSYBOX_TAR,
    _IMAGE_EPOCH,
    API_SERVICE,
    ASSETS,
    COMPOSE_FILE,
    COMPOSE_PROJECT,
    IMAGE,
    HostSpec,
    LabError,
    LabTimeoutError,
    _env,
    _file_tail,
    _in_host,
    _ns_argv,
    _run,
    _tail,
    _wait_for,
    _write_if_changed,
    log,
)
from lab.procs import _host_procs, _protected_pids, _scan, _stop_dockerd, _stop_pids, _with_descendants

# ---------------------------------------------------------------------------------------------
# Docker: engine per host, the busybox image, the compose project "shop"
# ---------------------------------------------------------------------------------------------


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _busybox_layer() -> bytes:
    """A deterministic root filesystem tar: /bin/busybox plus its applet links."""
    if not _BUSYBOX.exists():
        raise LabError(f"{_BUSYBOX} is missing: install busybox-static (scripts/bootstrap)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, 0, 0, link
            info.uname = info.gname = "root"
            if data:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder in ("bin", "dev", "etc", "proc", "sys", "usr", "usr/bin", "var", "root"):
            add(folder, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, _BUSYBOX.read_bytes())
        for applet in _BUSYBOX_LINKS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    return buf.getvalue()


def _build_busybox_image() -> str:
    """Write a ``docker save``-format tarball of local/busybox:1; returns its image id."""
    layer = _busybox_layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": _go_arch(),
        "os": "linux",
        "created": _IMAGE_EPOCH,
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _IMAGE_EPOCH, "created_by": "remediations.lab busybox-static"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = diff_id.removeprefix("sha256:")
    manifest = [
        {"Config": f"{config_hex}.json", "RepoTags": [IMAGE], "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            (f"{config_hex}.json", config_bytes),
            (f"{layer_dir}/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    _write_if_changed(_BUSYBOX_TAR, buf.getvalue())
    return f"sha256:{config_hex}"


def _docker_running(host: HostSpec) -> bool:
    procs = _host_procs(host, _scan(), net_only=True)
    return any(p.comm == "dockerd" for p in procs)


def _docker_answers(host: HostSpec) -> bool:
    probe = ["docker", "info", "--format", "{{.ServerVersion}}"]
    try:
        return _in_host(host, probe, check=False, timeout=10).returncode == 0
    except LabTimeoutError:  # a daemon still starting (or busy): not answering yet
        return False


def _dockerd_argv(host: HostSpec, driver: str) -> list[str]:
    return [
        "dockerd",
        "--config-file", str(host.dir / "daemon.json"),
        "--data-root", "/var/lib/docker",
        "--exec-root", "/run/docker",
        "-H", "unix:///run/docker.sock",
        "--pidfile", "/run/docker.pid",
        "--storage-driver", driver,
        "--cgroup-parent", f"/{host.cgroup_parent}",
    ]  # fmt: skip


def _launch_dockerd(host: HostSpec, driver: str) -> bool:
    """Start dockerd detached inside the host; True once ``docker info`` answers."""
    daemon_json = {"log-level": "warn", "log-driver": "json-file", "log-opts": {"max-size": "1m"}}
    _write_if_changed(host.dir / "daemon.json", json.dumps(daemon_json, indent=2).encode())
    logfile = host.dir / "dockerd.log"
    # A dockerd that was killed leaves its pid file behind, and a new one refuses to start.
    _in_host(host, ["rm", "-f", "/run/docker.pid"], check=False)
    with logfile.open("ab") as out:
        subprocess.run(
            ["setsid", "-f", *_ns_argv(host, _dockerd_argv(host, driver))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(host.name), cwd="/",
            check=True,
        )  # fmt: skip
    start = time.monotonic()
    while time.monotonic() - start < 40:
        if _docker_answers(host):
            return True
        # setsid -f returns before dockerd is exec'd: only trust "not running" after a while
        if time.monotonic() - start > 3 and not _docker_running(host):
            return False
        time.sleep(0.2)
    return False


def _storage_driver(host: HostSpec) -> str:
    """overlay2 unless this host's data root already uses vfs (the fallback)."""
    root = host.dir / "docker"
    if (root / "vfs").is_dir() and not (root / "overlay2").is_dir():
        return "vfs"
    return "overlay2"


def _ensure_dockerd(host: HostSpec) -> None:
    if _docker_running(host):
        with contextlib.suppress(LabError):
            _wait_for(f"dockerd on {host.name}", lambda: _docker_answers(host), 30, 0.3)
            return
        _stop_dockerd(host)  # running but deaf: restart it
    # A dockerd that was killed leaves its containerd (and the shims under it) running; a new dockerd
    # cannot start its own containerd while they hold the socket. They belong to nobody now.
    procs = _scan()
    orphans = {p.pid for p in _host_procs(host, procs, net_only=True) if p.comm.startswith("containerd")}
    if orphans:
        log.info("%s: stopping containerd left behind by a dead dockerd", host.name)
        _stop_pids(_with_descendants(orphans, procs) - _protected_pids(), signal.SIGTERM, 5)
    driver = _storage_driver(host)
    if _launch_dockerd(host, driver):
        return
    logfile = host.dir / "dockerd.log"
    if driver == "overlay2" and "overlay" in _file_tail(logfile, 30):
        log.warning("%s: overlay2 failed, falling back to vfs", host.name)
        _stop_dockerd(host)
        if _launch_dockerd(host, "vfs"):
            return
    raise LabError(f"dockerd on {host.name} did not come up; log {logfile}:\n{_file_tail(logfile)}")


def _ensure_image(host: HostSpec, image_id: str) -> None:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE]
    current = _in_host(host, inspect, check=False).stdout.decode().strip()
    if current != image_id:
        _in_host(host, ["docker", "load", "-q", "-i", str(_BUSYBOX_TAR)], timeout=120)


_compose_cmd: list[str] | None = None


def _compose_argv() -> list[str]:
    """``docker compose`` (v2 plugin) when available, else a docker-compose binary."""
    global _compose_cmd
    if _compose_cmd is None:
        if _run(["docker", "compose", "version"], check=False).returncode == 0:
            _compose_cmd = ["docker", "compose"]
        else:
            beside = Path(sys.executable).parent / "docker-compose"
            found = str(beside) if beside.exists() else shutil.which("docker-compose")
            if not found:
                raise LabError("no docker compose: run scripts/bootstrap (installs the plugin)")
            _compose_cmd = [found]
    return [*_compose_cmd, "-p", COMPOSE_PROJECT, "-f", COMPOSE_FILE]


def _write_shop_files(host: HostSpec) -> None:
    """Restore /srv/shop to its baseline (extra files that tests left there stay)."""
    shop = host.dir / "srv" / "shop"
    (shop / "www").mkdir(parents=True, exist_ok=True)
    (shop / "pins").mkdir(exist_ok=True)
    _write_if_changed(shop / "compose.yaml", (ASSETS / "compose.yaml").read_bytes())
    _write_if_changed(shop / ".env", (ASSETS / "env").read_bytes(), mode=0o600)
    _write_if_changed(shop / "www" / "health", (ASSETS / "health").read_bytes())
    # /metrics: a valid Prometheus text body while the api answers (the alerting tests scrape it)
    _write_if_changed(shop / "www" / "metrics", (ASSETS / "metrics").read_bytes())
    # alembic for migrate / run-in-service (bind-mounted: the image stays as built), the baseline
    # migrations, and its database folder (left as it is: tests reset what they change)
    for folder in ("bin", "migrations", "appdb"):
        (shop / folder).mkdir(exist_ok=True)
    _write_if_changed(shop / "bin" / "alembic", (ASSETS / "alembic").read_bytes(), mode=0o755)
    for migration in sorted((ASSETS / "migrations").iterdir()):
        _write_if_changed(shop / "migrations" / migration.name, migration.read_bytes())


def _api_health(host: HostSpec) -> str:
    ids = _in_host(host, [*_compose_argv(), "ps", "-q", API_SERVICE], check=False)
    cid = ids.stdout.decode().split()
    if not cid:
        return "missing"
    fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    out = _in_host(host, ["docker", "inspect", "--format", fmt, cid[0]], check=False)
    return out.stdout.decode().strip() or "missing"


def _wait_api_healthy(host: HostSpec, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    health = _api_health(host)
    while health != "healthy" and health != "unhealthy" and time.monotonic() < deadline:
        time.sleep(0.3)
        health = _api_health(host)
    return health


def _ensure_shop(host: HostSpec) -> None:
    _write_shop_files(host)
    _in_host(host, [*_compose_argv(), "up", "-d"], timeout=120)
    if _api_health(host) == "healthy":
        return
    health = _wait_api_healthy(host, 20)
    if health != "healthy":  # e.g. /tmp/www/health deleted inside the container
        log.info("%s: api is %s, restarting it", host.name, health)
        _in_host(host, [*_compose_argv(), "restart", "-t", "2", API_SERVICE], timeout=60)
        health = _wait_api_healthy(host, 20)
        if health == "unhealthy":  # give the health check its retries after the restart
            time.sleep(3)
            health = _wait_api_healthy(host, 10)
    if health != "healthy":
        ps = _in_host(host, [*_compose_argv(), "ps", "-a"], check=False).stdout
        raise LabError(f"api on {host.name} is {health}, not healthy:\n{_tail(ps)}")
