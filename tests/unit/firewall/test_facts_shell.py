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
def test_the_facts_start_three_processes_where_they_started_twenty(tmp_path: Path) -> None:
    """awk (the clock and every file), iptables -S, conntrack: a process costs about a millisecond
    of the host's CPU, and the host pays it once per run per host. The old command started date,
    a cat per file (sixteen with Ubuntu's app profiles), four iptables, conntrack and wc."""
    state = fwfacts.StatePath(str(tmp_path))
    Path(state.file).write_text(fwfacts.render_state([RECORD]))
    trace = tmp_path / "trace"
    script = fwfacts.facts_command(state, RECORD.target)
    ssh = {**os.environ, "SSH_CONNECTION": "198.18.0.1 50000 198.18.0.11 22"}  # as sshd sets it
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "sh", "-c", script],
                   capture_output=True, check=True, env=ssh)  # fmt: skip
    started = [line for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    programs = sorted(os.path.basename(line.split('"')[1]) for line in started)
    expected = ["awk", "iptables", "sh"] + (["conntrack"] if shutil.which("conntrack") else [])
    assert programs == sorted(expected), programs
