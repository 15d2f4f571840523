"""The firewall facts command in a real shell on this machine (`ansible_connection: local`): one awk
reads the clock and every file, each under its own section, whatever the state file's path looks
like; what it reports is checked against the files read here directly."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from remediations.core.inventory import Host
from remediations.core.remote import LocalRemote
from remediations.facts import firewall as fwfacts
from remediations.facts import ufw
from remediations.firewall.params import parse_network

RECORD = fwfacts.BlockRecord(ufw.Target(parse_network("203.0.113.9")[0]), "x", 1, None, None)


def local() -> LocalRemote:
    return LocalRemote(Host("local", {"ansible_connection": "local"}, (), "test"))


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@pytest.mark.parametrize("directory", ["a b=c", "-x", "rel=dir"])
def test_the_facts_match_the_files_and_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: str
) -> None:
    """A relative state directory with a space, a leading dash, or looking like an awk assignment
    (`rel=dir/...`) is still read as a file."""
    monkeypatch.chdir(tmp_path)
    state = fwfacts.StatePath(directory)
    Path(state.file).parent.mkdir(parents=True)
    Path(state.file).write_text(fwfacts.render_state([RECORD]))
    before = int(time.time())
    result = local().run(fwfacts.facts_command(state), timeout=60)
    after = int(time.time())
    facts = fwfacts.parse_facts(result.stdout, state)
    assert not facts.error, result.stdout[-500:]
    assert before - 1 <= facts.now <= after + 1
    assert facts.records == (RECORD,)
    assert facts.rules4 == ufw.parse_user_rules(read("/etc/ufw/user.rules"), v6=False)
    assert facts.rules6 == ufw.parse_user_rules(read("/etc/ufw/user6.rules"), v6=True)
    profiles = "\n".join(read(p) for p in sorted(glob.glob("/etc/ufw/applications.d/*")))
    assert facts.profiles == ufw.parse_app_profiles(profiles)
    assert facts.ufw_installed == (shutil.which("ufw") is not None)
    assert facts.conntrack == (shutil.which("conntrack") is not None)
    loaded = subprocess.run(["iptables", "-w", "10", "-S", "ufw-user-input"], capture_output=True)
    assert facts.ufw_active == (loaded.returncode == 0)


def test_a_missing_state_file_is_no_records_and_no_error(tmp_path: Path) -> None:
    state = fwfacts.StatePath(str(tmp_path / "none"))
    facts = fwfacts.parse_facts(local().run(fwfacts.facts_command(state), timeout=60).stdout, state)
    assert not facts.error and facts.records == ()


def test_an_ipv4_block_reads_only_the_ipv4_table(tmp_path: Path) -> None:
    state = fwfacts.StatePath(str(tmp_path))
    v4 = fwfacts.facts_command(state, RECORD.target)
    every = fwfacts.facts_command(state)
    v6 = fwfacts.facts_command(state, ufw.Target(parse_network("2001:db8::9")[0]))
    assert "ip6tables" not in v4 and "ip6tables" in every and "ip6tables" in v6
    assert v4.count("iptables -w 10 -S") == 1


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_facts_start_two_processes_where_they_started_twenty(tmp_path: Path) -> None:
    """awk (the clock, every file, and the flows counted from the kernel's table) and iptables -S
    (the conntrack tool, about ten times the CPU, only where that table is not readable): a process
    costs about a millisecond of the host's CPU, and the host pays it once per run per host. The
    old command started date, a cat per file (sixteen with Ubuntu's app profiles), four iptables,
    conntrack and wc; the last one a second awk for the flows."""
    state = fwfacts.StatePath(str(tmp_path))
    Path(state.file).write_text(fwfacts.render_state([RECORD]))
    trace = tmp_path / "trace"
    script = fwfacts.facts_command(state, RECORD.target)
    ssh = {**os.environ, "SSH_CONNECTION": "198.18.0.1 50000 198.18.0.11 22"}  # as sshd sets it
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "sh", "-c", script],
                   capture_output=True, check=True, env=ssh)  # fmt: skip
    started = [line for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    programs = sorted(os.path.basename(line.split('"')[1]) for line in started)
    counter = []  # the flows: counted by the same awk where the kernel's table is readable
    if shutil.which("conntrack") and not os.access(fwfacts.PROC_CONNTRACK, os.R_OK):
        counter = ["conntrack"]
    assert programs == sorted(["awk", "iptables", "sh", *counter]), programs


FLOWS_HELPER = r"""
import json, socket, subprocess, sys
from remediations.core.inventory import Host
from remediations.core.remote import LocalRemote
from remediations.facts import firewall as fwfacts, ufw
from remediations.firewall.params import parse_network
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["iptables", "-w", "10", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED",
                "-j", "ACCEPT"], check=True)  # netfilter tracks flows in this namespace from now on
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
kept = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
kept += [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.3", 0))
for target_port in (port, 9):
    udp.sendto(b"x", ("127.0.0.1", target_port))
remote = LocalRemote(Host("local", {"ansible_connection": "local"}, (), "test"))
state = fwfacts.StatePath("/nonexistent")
counts = []
for source, dport, proto in json.loads(sys.argv[1]):
    target = ufw.Target(parse_network(source)[0], port if dport == "listener" else dport, proto)
    facts = fwfacts.parse_facts(remote.run(fwfacts.facts_command(state, target)).stdout, state)
    tool = 0
    for args in target.conntrack_filters():
        done = subprocess.run(["conntrack", "-L", *args], capture_output=True, text=True)
        tool += int(done.stderr.split(" flow entries")[0].split()[-1])
    counts.append([source, dport, proto, facts.flows, tool])
print(json.dumps(counts))
"""


def test_the_flows_counted_from_the_kernels_table_are_conntracks(tmp_path: Path) -> None:
    """In a network namespace of its own with tracked TCP and UDP flows from three addresses: the
    count the facts read from /proc equals what `conntrack -L` lists for the same filters."""
    import json
    import sys

    if os.geteuid() != 0 or shutil.which("conntrack") is None or shutil.which("unshare") is None:
        pytest.skip("needs root, conntrack and unshare")
    targets = [["127.0.0.1", None, None], ["127.0.0.2", None, None], ["127.0.0.0/8", None, None],
               ["127.0.0.3", None, "udp"], ["127.0.0.3", None, "tcp"], ["127.0.0.0/30", "listener", None],
               ["127.0.0.0/30", "listener", "udp"], ["127.0.0.3", 9, None], ["10.0.0.0/8", None, None],
               ["127.0.0.1", 1, "tcp"]]  # fmt: skip
    env = {**os.environ, "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22",
           "PYTHONPATH": str(Path(__file__).resolve().parents[3])}  # fmt: skip
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", FLOWS_HELPER, json.dumps(targets)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout)
    assert [c[3] for c in counts] == [c[4] for c in counts], counts
    assert sum(c[4] for c in counts) >= 10, counts  # flows were there to count
