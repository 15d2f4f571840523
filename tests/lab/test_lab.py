"""The lab itself: `up` is idempotent and repairs a half-broken lab; `down` leaves nothing behind.

Checked from the outside (/proc, `ip`, mountinfo, iptables), not through the lab's own bookkeeping.
These tests take the shared lab down and bring it back, so they leave it up and healthy.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab_mod
from tests import labkit

pytestmark = pytest.mark.lab

LAB_NAMES = ("api1", "api2", "db1", "dbrestore")


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def marked_processes() -> list[tuple[int, str]]:
    """Processes anywhere on the machine whose environment carries the lab's marker."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        if b"RMLAB_HOST=" in environ:
            found.append((int(entry.name), comm))
    return found


def host_pids(host: str, comm: str) -> set[int]:
    """PIDs of `comm` processes living in the host's network namespace."""
    want = os.stat(f"/run/netns/{host}").st_ino
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(f"/proc/{entry.name}/comm").read_text().strip() != comm:
                continue
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == want:
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def leftovers() -> list[str]:
    """Everything the lab could leave behind, described; empty when the machine is clean."""
    found = [f"process {pid} ({comm})" for pid, comm in marked_processes()]
    netns = sh("ip", "netns", "list")
    found += [f"netns {name}" for name in LAB_NAMES if name in netns.split()]
    links = sh("ip", "-o", "link", "show")
    if "rmlab0" in links:
        found.append("bridge rmlab0")
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if "master rmlab0" in line]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if "remediations-lab" in line]
    if "rmlab0" in sh("iptables", "-S", "FORWARD"):
        found.append("iptables FORWARD rule for rmlab0")
    return found


def test_up_twice_restarts_nothing(lab: Any) -> None:
    before = {h: (host_pids(h, "sshd"), host_pids(h, "dockerd")) for h in ("api1", "api2")}
    started = labkit.started_at("api1")
    status = lab_mod.up()
    assert status.up
    after = {h: (host_pids(h, "sshd"), host_pids(h, "dockerd")) for h in ("api1", "api2")}
    assert after == before
    assert all(sshd for sshd, _ in after.values()), after
    assert labkit.started_at("api1") == started


def test_up_repairs_what_a_crash_left_half_broken(lab: Any, tmp_path: Path) -> None:
    # A killed sshd and dockerd on api2, and db1's network link gone.
    for pid in host_pids("api2", "sshd") | host_pids("api2", "dockerd"):
        os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "-n", "db1", "link", "del", "eth0"], check=True)
    broken = lab_mod.status()
    assert not broken.up
    assert broken.hosts["api2"].sshd is False and broken.hosts["api2"].dockerd is False
    assert broken.hosts["db1"].sshd is False

    status = lab_mod.up()
    assert status.up, status.to_dict()
    assert labkit.health("api2") == "healthy"
    # And it is a real sshd again, with the host key the lab's known_hosts trusts.
    ran = labkit.inv("restart-api", "--host", "api2", "--check", "--json", audit=tmp_path / "audit.jsonl")
    assert ran.code == 0, ran.stderr + ran.stdout
    assert ran.host("api2")["status"] == "changed"


def host_mounts(host: str) -> dict[str, str]:
    """Mount point -> source of every mount in the host's mount namespace."""
    lines = sh(
        "nsenter", f"--mount=/run/remediations-lab/mnt/{host}", "--", "findmnt", "-rn", "-o", "TARGET,SOURCE"
    )
    return dict(line.split(" ", 1) for line in lines.splitlines() if " " in line)


def ssh_root(host: str, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`command` over a real SSH session to the host, as the remediations reach it."""
    argv = ["ssh", "-i", str(lab_mod.SSH_KEY), "-o", f"UserKnownHostsFile={lab_mod.KNOWN_HOSTS}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            f"root@{lab_mod.status().hosts[host].address}", command]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)


def test_each_host_has_its_own_cron_spool_and_up_adds_it_to_a_live_lab(lab: Any) -> None:
    for host in LAB_NAMES:
        source = host_mounts(host).get("/var/spool/cron", "")
        assert source.endswith(f"[/var/lib/remediations-lab/hosts/{host}/spool-cron]"), (host, source)
    # A host of a lab built before the spool was private: `up` adds it, and restarts nothing.
    subprocess.run(["nsenter", "--mount=/run/remediations-lab/mnt/api2", "--", "umount", "/var/spool/cron"],
                   check=True)  # fmt: skip
    others = {h: host_mounts(h) for h in LAB_NAMES}
    sshd = {h: host_pids(h, "sshd") for h in LAB_NAMES}
    assert lab_mod.up().up
    assert {h: host_pids(h, "sshd") for h in LAB_NAMES} == sshd
    for host in LAB_NAMES:
        now = host_mounts(host)
        assert {k: v for k, v in now.items() if k != "/var/spool/cron"} == {
            k: v for k, v in others[host].items() if k != "/var/spool/cron"
        }, host
        assert now["/var/spool/cron"].endswith(f"hosts/{host}/spool-cron]"), (host, now)

    # crontab over SSH on db1 is db1's: neither the controller nor api1 sees it.
    def controller() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)

    before = controller()
    had = ssh_root("db1", "crontab -l")
    line = f"# lab spool probe {os.getpid()}\n"
    try:
        assert ssh_root("db1", "crontab -", stdin=line).returncode == 0
        assert ssh_root("db1", "crontab -l").stdout == line
        assert line not in ssh_root("api1", "crontab -l").stdout
        after = controller()
        assert (after.returncode, after.stdout) == (before.returncode, before.stdout)
    finally:
        if had.returncode == 0:
            ssh_root("db1", "crontab -", stdin=had.stdout)
        else:
            ssh_root("db1", "crontab -r")


def test_down_leaves_nothing_behind_and_up_comes_back(lab: Any) -> None:
    assert leftovers(), "the lab should be up before this test"
    try:
        lab_mod.down()
        assert leftovers() == []
        # A second down on a clean machine is fine too.
        lab_mod.down()
        assert leftovers() == []
    finally:
        status = lab_mod.up()
    assert status.up, status.to_dict()
    assert labkit.health("api1") == "healthy"


def test_a_new_hosts_mount_script_survives_a_uts_handle_not_yet_mounted(tmp_path: Path) -> None:
    """`up` builds hosts in parallel: a host's mount namespace may be made while another host's
    UTS handle exists as an empty file, not yet bound. The script must unmount what is mounted
    and go on (CI once failed here with "umount: …/uts/api2: not mounted")."""
    from lab.mounts import _MOUNT_SCRIPT

    sources = []
    for name in ("srv", "ufw", "default-ufw", "docker", "postgresql", "log"):
        path = tmp_path / name
        if name == "default-ufw":
            path.write_text("")
        else:
            path.mkdir()
        sources.append(str(path))
    # All in a private mount namespace over a scratch /run: nothing outside it changes.
    outer = (
        "set -eu\n"
        "mount -t tmpfs scratch /run\n"
        "mkdir -p /run/remediations-lab/uts /run/netns\n"
        "touch /run/remediations-lab/uts/bound /run/remediations-lab/uts/not-yet\n"
        "mount --bind /etc/hostname /run/remediations-lab/uts/bound\n"
        'sh -c "$0" sh "$@"\n'
        "test -e /run/.rmlab-ready\n"
        # (the real lab's own handles, hidden under the scratch /run, may be listed too: look for ours)
        "if grep -q ' /run/remediations-lab/uts/bound ' /proc/self/mountinfo; then\n"
        "  echo still-bound; exit 3\n"
        "fi\n"
    )
    touches = [p for p in ("/etc/ufw", "/etc/default/ufw") if not Path(p).exists()]
    assert not touches, f"ufw is not installed here ({touches}): run scripts/bootstrap"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer, _MOUNT_SCRIPT, *sources],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
