"""block-ip / unblock-ip / unblock-expired / list-blocks on the lab: real ufw, real iptables, real
traffic from a second namespace. Every test restores the host's firewall as it found it, and no test
blocks the controller (198.18.0.1)."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import hosts as lab
from remediations.core import inventory
from remediations.core.connection import connect
from remediations.core.lock import HostLock
from remediations.facts import firewall as fwfacts
from remediations.facts import ufw
from tests import labkit
from tests.quartet import quartet

pytestmark = pytest.mark.lab

STATE_FILE = f"{fwfacts.DEFAULT_STATE_DIR}/{fwfacts.STATE_FILE_NAME}"
UFW_FILES = ("/etc/ufw/user.rules", "/etc/ufw/user6.rules", "/etc/ufw/ufw.conf")


def sh(host: str, script: str, check: bool = True) -> str:
    return lab.exec_on(host, ["sh", "-c", script], check=check).stdout.decode()


def read(host: str, path: str) -> str | None:
    done = lab.exec_on(host, ["cat", path], check=False)
    return done.stdout.decode() if done.returncode == 0 else None


def ufw_active(host: str) -> bool:
    return lab.exec_on(host, ["iptables", "-n", "-L", "ufw-user-input"], check=False).returncode == 0


def tuples(host: str, v6: bool = False) -> list[ufw.UfwRule]:
    return list(ufw.parse_user_rules(read(host, UFW_FILES[1 if v6 else 0]) or "", v6))


def docker_rules(host: str) -> str:
    return sh(host, "iptables -S DOCKER-USER; ip6tables -S DOCKER-USER 2>/dev/null || true")


def firewall_now(host: str) -> tuple[Any, ...]:
    """Everything block-ip may touch on the host, for 'nothing changed' assertions."""
    return (*(read(host, f) for f in UFW_FILES), docker_rules(host), read(host, STATE_FILE), ufw_active(host))


def records(host: str) -> list[dict[str, Any]]:
    text = read(host, STATE_FILE)
    return json.loads(text)["blocks"] if text else []  # type: ignore[no-any-return]


class Firewall:
    """Runs the tasks against one lab host and reports what they said."""

    def __init__(self, host: str, audit: Path, inventory_path: Path = labkit.LAB_INVENTORY) -> None:
        self.host = host
        self.audit = audit
        self.inventory = inventory_path

    def run(self, task: str, *args: str) -> labkit.Ran:
        return labkit.inv(
            task, "--host", self.host, "--json", *args, audit=self.audit, inventory=self.inventory
        )

    def status(self, task: str, *args: str) -> tuple[str, str]:
        ran = self.run(task, *args)
        host = ran.host(self.host)
        return host["status"], host["message"]


TOOLS = ("iptables", "ip6tables")
BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")


def netfilter_baseline(host: str) -> dict[str, tuple[list[list[str]], bool]]:
    """Per tool: the built-in chains' policies (`-P CHAIN POLICY`) and whether ufw's chains exist.
    `ufw disable` sets every policy to ACCEPT (Docker's FORWARD DROP included) and leaves ufw's
    empty chains behind, so restoring the files alone does not give the host back as it was."""
    baseline = {}
    for tool in TOOLS:
        lines = [shlex.split(line) for line in sh(host, f"{tool} -w 10 -S").splitlines() if line]
        policies = [words for words in lines if words[0] == "-P"]
        baseline[tool] = (policies, any(w[0] == "-N" and w[1].startswith("ufw") for w in lines))
    return baseline


def remove_ufw_chains(host: str, tool: str) -> None:
    lines = [shlex.split(line) for line in sh(host, f"{tool} -w 10 -S").splitlines() if line]
    for words in lines:
        if words[0] == "-A" and words[1] in BUILTIN_CHAINS and words[-2] == "-j" and words[-1][:3] == "ufw":
            lab.exec_on(host, [tool, "-w", "10", "-D", *words[1:]])
    chains = [w[1] for w in lines if w[0] == "-N" and w[1].startswith("ufw")]
    for chain in chains:  # flushed first: ufw's chains jump to each other
        lab.exec_on(host, [tool, "-w", "10", "-F", chain])
    for chain in chains:
        lab.exec_on(host, [tool, "-w", "10", "-X", chain])


def restore(
    host: str,
    saved: dict[str, str | None],
    was_active: bool,
    baseline: dict[str, tuple[list[list[str]], bool]] | None = None,
) -> None:
    """Put back the firewall files, ufw's on/off state, the state file, the chains' policies; drop
    our DOCKER-USER rules."""
    for tool, v6 in zip(TOOLS, (False, True), strict=True):
        listed = lab.exec_on(host, [tool, "-S", "DOCKER-USER"], check=False).stdout.decode()
        for rule in fwfacts.parse_docker_rules(listed, v6):
            lab.exec_on(host, [tool, "-w", "10", "-D", "DOCKER-USER", *rule.spec])
    if not was_active:
        lab.exec_on(host, ["ufw", "--force", "disable"], check=False)
    for path, content in saved.items():
        if content is None:
            lab.exec_on(host, ["rm", "-f", path])
        else:
            lab.exec_on(host, ["sh", "-c", 'cat > "$1"', "sh", path], input=content.encode())
    if was_active:
        lab.exec_on(host, ["ufw", "reload"])
    for tool, (policies, had_ufw_chains) in (baseline or {}).items():
        if not was_active and not had_ufw_chains:
            remove_ufw_chains(host, tool)
        for words in policies:
            lab.exec_on(host, [tool, "-w", "10", *words])


@pytest.fixture
def saved_firewall(lab: Any) -> Iterator[Any]:
    """Snapshot api1's and api2's firewall; restore both afterwards, whatever the test did."""
    snapshots = {}
    for host in ("api1", "api2"):
        saved = {path: read(host, path) for path in (*UFW_FILES, STATE_FILE)}
        snapshots[host] = (saved, ufw_active(host), netfilter_baseline(host))
    try:
        yield snapshots
    finally:
        for host, (saved, was_active, baseline) in snapshots.items():
            restore(host, saved, was_active, baseline)


@pytest.fixture
def api1(saved_firewall: Any, tmp_path: Path) -> Firewall:
    """api1 with ufw active (allow 22/tcp) and no recorded blocks."""
    sh("api1", "ufw allow 22/tcp >/dev/null && ufw --force enable >/dev/null")
    lab.exec_on("api1", ["rm", "-f", STATE_FILE])
    assert ufw_active("api1")
    return Firewall("api1", tmp_path / "audit.jsonl")


@pytest.fixture
def api2_inactive(saved_firewall: Any, tmp_path: Path) -> Firewall:
    """api2 with ufw inactive and no user rules: what --enable starts from."""
    sh("api2", "ufw --force disable >/dev/null; ufw --force reset >/dev/null; rm -f /etc/ufw/*.rules.*_*")
    lab.exec_on("api2", ["rm", "-f", STATE_FILE])
    assert not ufw_active("api2")
    return Firewall("api2", tmp_path / "audit.jsonl")


# ---------------------------------------------------------------------------------------------
# The quartets
# ---------------------------------------------------------------------------------------------


def test_block_and_unblock_quartets(api1: Firewall) -> None:
    args = (
        "--ip",
        "203.0.113.0/24",
        "--port",
        "443",
        "--proto",
        "tcp",
        "--ttl",
        "1h",
        "--comment",
        "ddos wave 3",
    )
    target = ufw.Target(ipaddress.ip_network("203.0.113.0/24"), 443, "tcp")
    blocking = quartet("block-ip", "--host", "api1", *args, hosts=["api1"], audit=api1.audit,
                       state=lambda: firewall_now("api1"), inventory=api1.inventory)  # fmt: skip
    message = blocking.check.host("api1")["message"]
    assert "would add a ufw deny for 203.0.113.0/24 port 443/tcp" in message
    assert blocking.apply.code == 0, blocking.apply.stderr
    host = blocking.apply.host("api1")
    assert "blocked in ufw and DOCKER-USER" in host["message"]
    assert host["steps"][-1]["data"]["layers"] == ["ufw", "DOCKER-USER"]
    rules = tuples("api1")
    assert rules[0].blocks(target), "the deny must be the first rule, above the allow rules"
    assert any(r.admits() for r in rules[1:])
    assert "--ctorigdstport 443" in docker_rules("api1")
    [record] = records("api1")
    assert (record["ip"], record["port"], record["proto"], record["comment"]) == (
        "203.0.113.0/24",
        443,
        "tcp",
        "ddos wave 3",
    )
    assert record["expires"] - record["created"] == 3600
    assert records("api1") == [record]  # the expiry is not pushed on by a re-run (the quartet's third)
    message = blocking.check_again.host("api1")["message"]
    assert message[: len("already blocked")] == "already blocked", message

    listed = api1.run("list-blocks")
    [block] = [s for s in listed.host("api1")["steps"] if s["step"] == "block"]
    assert block["data"]["layers"] == ["ufw", "DOCKER-USER"] and "ddos wave 3" in block["message"]
    assert "expires in" in block["message"]

    unblocking = quartet("unblock-ip", "--host", "api1", "--ip", "203.0.113.0/24", hosts=["api1"],
                         audit=api1.audit, state=lambda: firewall_now("api1"),
                         inventory=api1.inventory)  # fmt: skip
    assert "would delete the ufw deny" in unblocking.check.host("api1")["message"]
    assert not any(r.blocks(target) for r in tuples("api1"))
    assert "remediations block-ip" not in docker_rules("api1")
    assert records("api1") == []


def test_enable_quartet(api2_inactive: Firewall) -> None:
    api2 = api2_inactive
    before = firewall_now("api2")
    status, message = api2.status("block-ip", "--ip", "203.0.113.7")
    assert status == "failed" and "ufw is inactive" in message
    assert firewall_now("api2") == before

    args = ("--ip", "203.0.113.7", "--enable")
    enabling = quartet("block-ip", "--host", "api2", *args, hosts=["api2"], audit=api2.audit,
                       state=lambda: firewall_now("api2"), inventory=api2.inventory)  # fmt: skip
    message = enabling.check.host("api2")["message"]
    assert "allow SSH 22/tcp" in message and "enable ufw" in message
    assert ufw_active("api2")
    rules = tuples("api2")
    assert rules[0].blocks(ufw.Target(ipaddress.ip_network("203.0.113.7/32")))
    assert any(r.allows_tcp_port(22, ipaddress.ip_address("198.18.0.1")) for r in rules)
    # the controller still got in for the quartet's last two runs
    assert api2.status("unblock-ip", "--ip", "203.0.113.7")[0] == "changed"


def test_ipv6_block_is_ufw_only_without_a_docker_ipv6_chain(api1: Firewall) -> None:
    target = ufw.Target(ipaddress.ip_network("2001:db8::/32"))
    status, message = api1.status("block-ip", "--ip", "2001:db8::/32")
    assert status == "changed" and "blocked in ufw" in message and "no Docker layer" in message
    assert tuples("api1", v6=True)[0].blocks(target)
    assert api1.status("block-ip", "--ip", "2001:db8::/32")[0] == "ok"
    assert api1.status("unblock-ip", "--ip", "2001:DB8::/32")[0] == "changed"
    assert not any(r.blocks(target) for r in tuples("api1", v6=True))


def test_a_plain_ufw_deny_below_the_allow_rules_is_moved_up(api1: Firewall) -> None:
    target = ufw.Target(ipaddress.ip_network("203.0.113.9/32"))
    sh("api1", "ufw deny from 203.0.113.9 >/dev/null")  # what the runbook did: appended, never reached
    assert not tuples("api1")[0].blocks(target)
    status, message = api1.status("block-ip", "--ip", "203.0.113.9")
    assert status == "changed" and "move the ufw deny" in message
    assert tuples("api1")[0].blocks(target)
    assert sum(r.blocks(target) for r in tuples("api1")) == 1
    assert api1.status("unblock-ip", "--ip", "203.0.113.9")[0] == "changed"


# ---------------------------------------------------------------------------------------------
# Real traffic from a blocked address
# ---------------------------------------------------------------------------------------------


def wait_for(probe: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def test_blocked_address_loses_sshd_and_published_port_controller_keeps_access(api1: Firewall) -> None:
    address = "198.18.0.11"
    name = "fwtest-web"
    lab.exec_on("api1", ["docker", "rm", "-f", name], check=False)
    lab.exec_on("api1", ["docker", "run", "-d", "--name", name, "-p", f"{address}:18080:8080",
                         "local/busybox:1", "httpd", "-f", "-p", "8080"])  # fmt: skip
    try:
        with lab.client("198.18.0.200", name="fwtest") as outsider:
            assert outsider.can_connect(address, 22)
            assert wait_for(lambda: outsider.can_connect(address, 18080)), "test container never answered"

            status, message = api1.status("block-ip", "--ip", "198.18.0.200", "--comment", "traffic test")
            assert status == "changed" and "blocked in ufw and DOCKER-USER" in message
            assert not outsider.can_connect(address, 22)
            assert not outsider.can_connect(address, 18080)
            assert api1.status("list-blocks")[0] == "ok"  # the controller still connects

            # ufw alone does not protect the published port: take the DOCKER-USER rule away...
            sh("api1", "iptables -S DOCKER-USER | grep -F 198.18.0.200 | cut -d' ' -f3- | "
                       "while read -r rule; do eval \"iptables -D DOCKER-USER $rule\"; done")  # fmt: skip
            assert outsider.can_connect(address, 18080)
            assert not outsider.can_connect(address, 22)
            # ...and block-ip repairs that layer.
            status, message = api1.status("block-ip", "--ip", "198.18.0.200", "--comment", "traffic test")
            assert status == "changed" and "add a DROP for 198.18.0.200 to DOCKER-USER" in message
            assert not outsider.can_connect(address, 18080)

            assert api1.status("unblock-ip", "--ip", "198.18.0.200")[0] == "changed"
            assert outsider.can_connect(address, 22)
            assert outsider.can_connect(address, 18080)
    finally:
        lab.exec_on("api1", ["docker", "rm", "-f", name], check=False)


# ---------------------------------------------------------------------------------------------
# Expiry, the lockout guard, the lock, bad input
# ---------------------------------------------------------------------------------------------


def test_unblock_expired_lifts_only_expired_blocks(api1: Firewall) -> None:
    assert api1.status("block-ip", "--ip", "203.0.113.20", "--ttl", "2s")[0] == "changed"
    assert api1.status("block-ip", "--ip", "203.0.113.21", "--ttl", "1h", "--comment", "keep")[0] == "changed"

    def expired_listed() -> bool:
        steps = api1.run("list-blocks").host("api1")["steps"]
        return any(s["step"] == "block" and s["data"]["expired"] for s in steps)

    assert wait_for(expired_listed, 15), "the 2s block never showed as expired"
    status, message = api1.status("unblock-expired")
    assert status == "changed" and "203.0.113.20" in message and "203.0.113.21" not in message.split("; ")[0]
    assert [r["ip"] for r in records("api1")] == ["203.0.113.21"]
    assert not any(r.blocks(ufw.Target(ipaddress.ip_network("203.0.113.20/32"))) for r in tuples("api1"))
    assert api1.status("unblock-expired")[0] == "ok"
    assert api1.status("unblock-ip", "--ip", "203.0.113.21")[0] == "changed"


def test_lockout_guard_refuses_the_controllers_range(api1: Firewall) -> None:
    before = firewall_now("api1")
    for mode in (("--check",), ()):
        status, message = api1.status("block-ip", *mode, "--ip", "198.18.0.0/24")
        assert status == "failed" and "contains 198.18.0.1" in message and "nothing changed" in message
    assert firewall_now("api1") == before


def test_allowlist_refuses_before_connecting(api1: Firewall, tmp_path: Path) -> None:
    path = labkit.write_inventory(tmp_path / "inv.yml", all_vars={"firewall_allowlist": ["203.0.113.0/26"]})
    guarded = Firewall("api1", api1.audit, path)
    before = firewall_now("api1")
    ran = guarded.run("block-ip", "--ip", "203.0.113.0/24")
    assert ran.code == 2 and "overlaps 203.0.113.0/26 in firewall_allowlist" in ran.stderr
    assert firewall_now("api1") == before
    assert [r.get("host") for r in labkit.audit_lines(api1.audit)] == [None]  # nothing ran on a host


def test_block_ip_waits_for_the_host_lock(api1: Firewall) -> None:
    inv = inventory.load(labkit.LAB_INVENTORY)
    remote = connect(inv.hosts["api1"])
    before = firewall_now("api1")
    try:
        with HostLock(remote, "someone else's run", wait=5):
            status, message = api1.status("block-ip", "--ip", "203.0.113.30", "--lock-wait", "1")
    finally:
        remote.close()
    assert status == "failed" and "someone else's run" in message
    assert firewall_now("api1") == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--ip", "300.1.1.1"), "not an IPv4 or IPv6 address"),
        (("--ip", "1.2.3.4/33"), "prefix length"),
        (("--ip", "1.2.3.4; rm -rf /"), "not an IPv4 or IPv6 address or CIDR range"),
        (("--ip", ""), "--ip is required"),
        (("--ip", "1.2.3.5/24"), "host bits set: give 1.2.3.0/24"),
        (("--ip", "1.2.3.4", "--port", "70000"), "--port"),
        (("--ip", "1.2.3.4", "--proto", "icmp"), "--proto"),
        (("--ip", "1.2.3.4", "--ttl", "soon"), "--ttl"),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(
    lab: Any, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    audit = tmp_path / "audit.jsonl"
    ran = labkit.inv("block-ip", "--host", "api1", *args, audit=audit)
    assert ran.code == 2
    assert says in ran.stderr and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert [r.get("host") for r in labkit.audit_lines(audit)] == [None]
    assert shlex.split(ran.stderr)[0] == "error:"


# ---------------------------------------------------------------------------------------------
# Issue 12: what ufw actually matches (app profiles, interface rules), established connections,
# list-blocks' exit code
# ---------------------------------------------------------------------------------------------

OUTSIDER = "198.18.0.200"
API1 = "198.18.0.11"


def lab_iface(host: str, towards: str) -> str:
    """The interface `host` reaches `towards` on (where that source's traffic comes in)."""
    words = sh(host, f"ip -o route get {shlex.quote(towards)}").split()
    return words[words.index("dev") + 1]


def ufw_user_input(host: str) -> list[str]:
    """ufw's loaded chain, in the order iptables evaluates it."""
    listed = sh(host, "iptables -w 10 -S ufw-user-input")
    return [line for line in listed.splitlines() if line.startswith("-A")]


@pytest.fixture
def api1_ssh_by_profile_or_iface(saved_firewall: Any, tmp_path: Path, request: Any) -> Firewall:
    """api1 with ufw active and SSH allowed only by an app profile or an interface rule (no plain
    `allow 22/tcp`), as Ubuntu's usual setup does."""
    if request.param == "profile":
        # the lab host's own view of ufw's profiles: Debian's openssh-server ships this one
        assert "ports=22/tcp" in (read("api1", "/etc/ufw/applications.d/openssh-server") or "")
        allow = "ufw allow OpenSSH"
    else:
        allow = f"ufw allow in on {shlex.quote(lab_iface('api1', OUTSIDER))} to any port 22"
    sh("api1", f"{allow} >/dev/null && ufw --force enable >/dev/null")
    lab.exec_on("api1", ["rm", "-f", STATE_FILE])
    plain_allow = re.compile(r"^### tuple ### allow(_log)? \S+ \S+ \S+ \S+ \S+ in$", re.MULTILINE)
    assert ufw_active("api1") and not plain_allow.search(read("api1", UFW_FILES[0]) or "")
    return Firewall("api1", tmp_path / "audit.jsonl")


@pytest.mark.parametrize("api1_ssh_by_profile_or_iface", ["profile", "iface"], indirect=True)
def test_a_hand_deny_below_a_profile_or_interface_allow_is_moved_up_and_really_blocks(
    api1_ssh_by_profile_or_iface: Firewall,
) -> None:
    api1 = api1_ssh_by_profile_or_iface
    with lab.client(OUTSIDER, name="fwtest") as outsider:
        sh("api1", f"ufw deny from {OUTSIDER} >/dev/null")  # the runbook's deny, appended below the allow
        assert outsider.can_connect(API1, 22), "premise: the appended deny alone does not block"

        status, message = api1.status("block-ip", "--ip", OUTSIDER)
        assert status == "changed" and f"move the ufw deny for {OUTSIDER}" in message, message
        assert not outsider.can_connect(API1, 22)
        # ufw's own order: the source's DROP comes before every ACCEPT in ufw-user-input
        chain = ufw_user_input("api1")
        [drop] = [i for i, line in enumerate(chain) if f"-s {OUTSIDER}/32 " in line and "-j DROP" in line]
        assert all(i > drop for i, line in enumerate(chain) if line.endswith("-j ACCEPT")), chain

        status, message = api1.status("block-ip", "--ip", OUTSIDER)
        assert (status, message[: len("already blocked")]) == ("ok", "already blocked"), message
        listed = api1.run("list-blocks")
        assert listed.code == 0, listed.stdout
        assert api1.status("unblock-ip", "--ip", OUTSIDER)[0] == "changed"
        assert outsider.can_connect(API1, 22)


def test_list_blocks_and_block_ip_see_a_deny_that_never_matches(api1_ssh_by_iface: Firewall) -> None:
    """A recorded block whose deny someone re-added by hand, appended below the interface allow."""
    api1 = api1_ssh_by_iface
    assert api1.status("block-ip", "--ip", OUTSIDER)[0] == "changed"
    iface = lab_iface("api1", OUTSIDER)
    sh("api1", f"ufw delete deny from {OUTSIDER} >/dev/null && ufw deny from {OUTSIDER} >/dev/null")
    with lab.client(OUTSIDER, name="fwtest") as outsider:
        assert outsider.can_connect(API1, 22)
        listed = api1.run("list-blocks")
        assert listed.code == 1, listed.stdout
        [block] = [s for s in listed.host("api1")["steps"] if s["step"] == "block"]
        assert "ufw" not in block["data"]["layers"] and f"in on {iface}" in block["message"], block
        assert api1.status("block-ip", "--ip", OUTSIDER)[0] == "changed"
        assert not outsider.can_connect(API1, 22)
        assert api1.run("list-blocks").code == 0


@pytest.fixture
def api1_ssh_by_iface(saved_firewall: Any, tmp_path: Path) -> Firewall:
    iface = shlex.quote(lab_iface("api1", OUTSIDER))
    sh("api1", f"ufw allow in on {iface} to any port 22 >/dev/null && ufw --force enable >/dev/null")
    lab.exec_on("api1", ["rm", "-f", STATE_FILE])
    return Firewall("api1", tmp_path / "audit.jsonl")


# A connection held open from the client: `probe LINE` sends LINE and reports whether api1's sshd
# answered (any bytes, or the close of the connection) within 5 s, or stayed silent.
_HOLDER = r"""
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
conn.recv(256)
print("open", flush=True)
for line in sys.stdin:
    try:
        conn.sendall(line.strip().encode() + b"\r\n")
        conn.recv(4096)  # bytes, or b"" when sshd closes: either way it answered
        print("answered", flush=True)
    except TimeoutError:
        print("silent", flush=True)
    except OSError as exc:
        print(f"error {exc}", flush=True)
"""


class HeldConnection:
    def __init__(self, client: lab.Client, address: str, port: int) -> None:
        self.process = subprocess.Popen(
            ["nsenter", f"--net={client.netns}", "--", sys.executable, "-c", _HOLDER, address, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.read() == "open"

    def read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def probe(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


def test_established_connection_survives_a_block_unless_kill_established(api1: Firewall) -> None:
    with lab.client(OUTSIDER, name="fwtest") as outsider:
        held = HeldConnection(outsider, API1, 22)
        try:
            status, message = api1.status("block-ip", "--ip", OUTSIDER)
            assert status == "changed" and "established" in message and "left open" in message, message
            assert not outsider.can_connect(API1, 22)
            assert held.probe("SSH-2.0-probe") == "answered", "the open connection survives the block"

            ran = api1.run("block-ip", "--ip", OUTSIDER, "--kill-established")
            host = ran.host("api1")
            assert host["status"] == "changed" and "dropped" in host["message"], host["message"]
            assert host["steps"][-1]["data"]["established"]["dropped"] >= 1
            assert held.probe("junk") == "silent", "the open connection is cut"
            status, message = api1.status("block-ip", "--ip", OUTSIDER, "--kill-established")
            assert status == "ok" and "no tracked connections" in message, message
        finally:
            held.close()
        assert api1.status("unblock-ip", "--ip", OUTSIDER)[0] == "changed"
        assert outsider.can_connect(API1, 22)


def test_list_blocks_fails_when_a_layer_is_missing_and_shows_hand_made_denies(api1: Firewall) -> None:
    assert api1.status("block-ip", "--ip", "203.0.113.40", "--comment", "listed")[0] == "changed"
    assert api1.run("list-blocks").code == 0
    sh("api1", "iptables -S DOCKER-USER | grep -F 203.0.113.40 | cut -d' ' -f3- | "
               "while read -r rule; do eval \"iptables -D DOCKER-USER $rule\"; done")  # fmt: skip
    listed = api1.run("list-blocks")
    assert listed.code == 1, listed.stdout
    host = listed.host("api1")
    assert host["status"] == "failed" and "203.0.113.40" in host["message"]
    [block] = [s for s in host["steps"] if s["step"] == "block"]
    assert block["data"]["layers"] == ["ufw"] and "no DOCKER-USER rule" in block["message"]
    assert api1.status("block-ip", "--ip", "203.0.113.40", "--comment", "listed")[0] == "changed"
    assert api1.run("list-blocks").code == 0

    sh("api1", "ufw deny from 203.0.113.41 >/dev/null")  # by hand: not block-ip's, and below allow 22/tcp
    listed = api1.run("list-blocks")
    assert listed.code == 0, listed.stdout
    [hand] = [s for s in listed.host("api1")["steps"] if s["step"] == "unrecorded"]
    assert "203.0.113.41" in hand["message"] and "hand-made" in hand["message"]
    assert "below an allow rule" in hand["message"], "its tcp port 22 traffic meets allow 22/tcp first"
    text = labkit.inv("list-blocks", "--host", "api1", audit=api1.audit)
    assert text.code == 0 and "203.0.113.41 [ufw only: hand-made" in text.stdout, text.stdout
    sh("api1", "ufw delete deny from 203.0.113.41 >/dev/null")
    assert api1.status("unblock-ip", "--ip", "203.0.113.40")[0] == "changed"
