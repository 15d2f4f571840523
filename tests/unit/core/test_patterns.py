"""Host patterns (core/patterns.py) beyond the Ansible table: hostile input, the implicit controller,
the flag named in messages. test_patterns_oracle.py holds the grammar to Ansible's own answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from remediations.core import patterns
from remediations.core.errors import UsageError
from remediations.core.inventory import Inventory, parse

SOURCE = "inv.yml"
ROOT = Path(__file__).resolve().parents[3]


def inventory(*extra_hosts: str) -> Inventory:
    hosts = {name: None for name in ("web1", "web2", "db1", *extra_hosts)}
    data = {"all": {"vars": {"compose_project_dir": "/srv/app"}, "hosts": hosts,
                    "children": {"web": {"hosts": {"web1": None, "web2": None}}}}}  # fmt: skip
    return parse(yaml.safe_dump(data, sort_keys=False), SOURCE)


def refused(pattern: str, inv: Inventory | None = None, **kwargs: str) -> str:
    with pytest.raises(UsageError) as info:
        (inv or inventory()).select(pattern, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: "), message
    assert "\n" not in message and "\x1b" not in message and "\x00" not in message
    assert len(message) < 400, message
    return message


def test_a_huge_pattern_is_one_line_at_once() -> None:
    started = time.monotonic()
    message = refused("web1," * 20_480)  # 100 kB
    assert time.monotonic() - started < 1
    assert "--host is 102400 characters long; at most 8192" in message


@pytest.mark.parametrize(
    ("pattern", "shown"),
    [("web1\x00", r"'\x00' at position 4"), ("\x1b[31mweb1", r"'\x1b' at position 0"),
     ("web1\nweb2", r"'\n' at position 4"), ("web\u200b1", r"'\u200b' at position 3")],
)  # fmt: skip
def test_control_characters_are_refused_by_position(pattern: str, shown: str) -> None:
    assert f"--host has a control character {shown}" in refused(pattern)


def test_a_catastrophic_regex_is_stopped() -> None:
    inv = inventory("a" * 40 + "!")
    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    message = refused(r"~(a+)+$", inv)
    assert time.monotonic() - started < patterns.REGEX_SECONDS + 2
    assert "the regular expression took more than 2s" in message
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_regex_works_outside_the_main_thread() -> None:
    got: list[list[str]] = []
    worker = threading.Thread(target=lambda: got.append([h.name for h in inventory().select("~web")]))
    worker.start()
    worker.join(10)
    assert got == [["web1", "web2"]]


def test_many_terms_stay_fast() -> None:
    inv = inventory(*(f"h{i}" for i in range(500)))
    pattern = ",".join(f"h{i}" for i in range(500)) + ",!h1*,web*"
    assert len(pattern) <= patterns.MAX_PATTERN_CHARS
    started = time.monotonic()
    names = [h.name for h in inv.select(pattern)]
    assert time.monotonic() - started < 2
    assert "h1" not in names and "h2" in names and names[-2:] == ["web1", "web2"]


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_localhost_is_the_controller_when_the_inventory_has_none(name: str) -> None:
    [host] = inventory().select(name)
    assert host.name == name and host.is_local
    assert host.get("compose_project_dir") == "/srv/app"  # the run-wide (`all`) vars


def test_the_inventory_localhost_answers_to_every_name_of_it() -> None:
    inv = inventory("localhost")
    assert [h.name for h in inv.select("127.0.0.1")] == ["localhost"]
    assert inv.select("127.0.0.1")[0] is inv.hosts["localhost"]


def test_all_never_includes_the_implicit_controller() -> None:
    assert [h.name for h in inventory().select("all")] == ["web1", "web2", "db1"]


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [("!", "'!' names nothing after '!'"), ("web,&", "names nothing after '&'"),
     ("web[", "unbalanced '['"), ("web]", "unbalanced ']'"), ("web1,we[b", "unbalanced"),
     ("@/etc/hosts", "limit files (@FILE) are not supported"),
     ("~[,web", "is not a regular expression"), ("~" + "(" * 200, "is not a regular expression")],
)  # fmt: skip
def test_bad_terms_are_one_line(pattern: str, needle: str) -> None:
    assert needle in refused(pattern)


def test_the_flag_is_named() -> None:
    assert "check --env-host or the inventory" in refused("nope", flag="--env-host")
    assert "--env-host is empty" in refused(" , ", flag="--env-host")


def test_a_long_term_is_cut_in_the_message() -> None:
    message = refused("x" * 5000)
    assert "'" + "x" * 77 + "...'" in message


@pytest.mark.parametrize(
    ("pattern", "terms"),
    [("a:b", ["a", "b"]), ("a,b:c", ["a", "b:c"]), ("a b\tc", ["a", "b", "c"]),
     ("web[1:3]", ["web[1:3]"]), ("web[1:3]:db", ["web[1:3]", "db"]), ("host:22", ["host:22"]),
     ("::1", ["::1"]), ("[2001:db8::1]:22", ["[2001:db8::1]:22"]), ("prod:&eu:!x", ["prod", "&eu", "!x"]),
     ("~^a.*:b", ["~^a.*", "b"])],
)  # fmt: skip
def test_split(pattern: str, terms: list[str]) -> None:
    assert patterns.split(pattern) == terms


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [("web1," * 20_480, "--host is 102400 characters long"),
     ("web1\x1b[2J", r"control character '\x1b' at position 4"),
     (r"~(a+)+$", "the regular expression took more than 2s"),
     ("web:&nope", "unknown host or group 'nope' in --host term '&nope'")],
)  # fmt: skip
def test_hostile_patterns_through_the_front_end(tmp_path: Path, pattern: str, needle: str) -> None:
    hosts = {name: {"target_dir": str(tmp_path / name)} for name in ("web1", "a" * 40 + "!")}
    path = tmp_path / "inv.yml"
    data = {"all": {"vars": {"ansible_connection": "local"}, "hosts": hosts,
                    "children": {"web": {"hosts": {"web1": None}}}}}  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "health", "--host", pattern, "--inventory", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "REMEDIATIONS_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "NO_COLOR": "1"},
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and needle in line and len(line) < 400, line
    assert not (tmp_path / "web1").exists()
