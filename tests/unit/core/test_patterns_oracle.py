"""`--host` patterns against Ansible itself: the ansible-core of .venv-oracle (scripts/bootstrap makes
it) answers every pattern of the table over the same inventory files, in one process per run.

Rules of the comparison:
- Ansible selects hosts without a warning: we select the same hosts, in the same order where
  Ansible's order is defined and the same as ours ("same"), else the same set ("set": a pattern
  that takes a group with nested child groups, such as `all`, whose hosts Ansible lists level by
  level and we in file order; README: "Choosing hosts (--host)").
- Ansible warns that a term matched nothing, fails, or selects no host: we refuse in one line,
  naming the term (`refuse` says which text the message must hold).
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from remediations.core.errors import UsageError
from remediations.core.inventory import load

ROOT = Path(__file__).resolve().parents[3]
ORACLE = ROOT / ".venv-oracle" / "bin" / "python"
HERE = Path(__file__).resolve().parent
INVENTORIES = {
    "prod": ROOT / "inventories" / "prod.example.yml",
    "flat": HERE / "patterns" / "flat.yml",
    "geo": HERE / "patterns" / "geo.yml",
}
SAME, SET = "same", "set"

# (inventory, pattern, order) for patterns Ansible answers without a warning
SELECTS = [
    ("prod", "prod", SAME),
    ("prod", "api:db", SAME),
    ("prod", "prod:!api-2", SAME),
    ("prod", "!api-2:prod", SAME),  # exclusion after the unions, wherever it is written
    ("prod", "staging-1,localhost,api-1", SAME),
    ("prod", r"~api-\d", SAME),
    ("prod", "controller", SAME),
    ("prod", "prod[1:2]", SAME),  # both ends included
    ("prod", "all", SET),
    ("prod", "localhost", SAME),  # the inventory's own localhost
    ("prod", "127.0.0.1", SAME),  # ... also under Ansible's other names for it
    ("flat", "a*", SAME),  # a glob over group names, `all` included
    ("flat", "w*", SAME),
    ("flat", "*1", SAME),
    ("flat", "api[!2]", SAME),
    ("flat", "db?", SAME),
    ("flat", "all,!api*,!db1", SAME),
    ("flat", "api2,api,api2", SAME),
    ("flat", "api,web", SAME),
    ("flat", "!api2,api", SAME),
    ("flat", "ungrouped", SAME),
    ("flat", "api[-1]", SAME),
    ("flat", "api[0:0]", SAME),  # Ansible reads [i:0] as [i]
    ("flat", "api db", SAME),  # without a comma, whitespace separates too
    ("geo", "prod", SAME),
    ("geo", "prod:&web", SAME),
    ("geo", "prod,&web", SAME),
    ("geo", "prod:!eu", SAME),
    ("geo", "web:&prod:!web-us-1", SAME),
    ("geo", "prod,!web,&api", SAME),
    ("geo", "api:!api-us-*", SAME),
    ("geo", "!staging", SET),  # `all` minus staging
    ("geo", "&web", SET),  # `all` intersected with web
    ("geo", "all:!prod:!staging", SET),
    ("geo", "*", SET),
    ("geo", "web[0]", SAME),
    ("geo", "web[-1]", SAME),
    ("geo", "web[1:2]", SAME),
    ("geo", "web[1:]", SAME),
    ("geo", "~web-(eu|us)", SAME),
    ("geo", "~eu", SAME),  # re.match: from the start of the name; groups eu and eu_all
    ("geo", "~.*-1$", SAME),
    ("geo", "web-*", SAME),
    ("geo", "*-eu-*", SAME),
    ("geo", "e*", SAME),
    ("geo", "*.example.com", SAME),
    ("geo", "10.0.0.5", SAME),
    ("geo", "web-eu-1,api-us-2,web-eu-1", SAME),
    ("geo", "api-us-2:web-eu-1", SAME),  # a ':' list keeps its order too
    ("geo", "staging web", SAME),
    ("geo", "ungrouped", SAME),
    ("geo", "localhost", SAME),  # implicit: the controller
    ("geo", "127.0.0.1", SAME),
]

# (inventory, pattern, what our one-line refusal must say) where Ansible warns, fails or selects nothing
REFUSES = [
    ("prod", "db-1.example.com", "'db-1.example.com'"),  # an address, not an inventory name
    ("prod", "staging:&api", "selects no host"),
    ("prod", "prod[5]", "'prod[5]' selects no host"),
    ("flat", "api[13]", "'api[13]' selects no host"),  # a subscript, not a glob class
    ("flat", "api,!nope", "'!nope'"),
    ("flat", "api,!api", "selects no host"),
    ("flat", "!all", "selects no host"),
    ("geo", "nope", "unknown host or group 'nope'"),
    ("geo", "prod:&nope", "'&nope'"),
    ("geo", "prod:&eu,api", "'prod:&eu'"),  # in a comma list ':' is part of the term
    ("geo", "@hosts.txt", "limit files (@FILE) are not supported"),
    ("geo", "web[1-2]", "write [1:2]"),  # Ansible: a warning that [x-y] is gone
    ("geo", "api[5:7]", "'api[5:7]' selects no host"),
    ("geo", "prod[-1:2]", "'prod[-1:2]'"),  # a negative range is no subscript: a glob matching nothing
    ("geo", "~(", "not a regular expression"),
    ("geo", "~web-eu-1$x", "'~web-eu-1$x'"),
    ("geo", "web-eu-1:22", "a port is not part of a host pattern"),
]

# (inventory, pattern, our refusal) where Ansible selects hosts without a word but we refuse
STRICTER = [
    ("geo", "prod:web[", "unbalanced"),  # Ansible drops the lone '[' and selects prod and web
    ("geo", "staging:web]", "unbalanced"),
]


@cache
def ansible_answers() -> dict[tuple[str, str], dict[str, Any]]:
    """Ansible's answer for every case of both tables, from one run of the oracle."""
    if not ORACLE.exists():
        message = f"{ORACLE} is missing: run scripts/bootstrap (it installs the pinned ansible-core)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cases = [(inv, pattern) for inv, pattern, _ in SELECTS + REFUSES + STRICTER]
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"rm-ansible-oracle-{os.getuid()}"
    home.mkdir(exist_ok=True)
    (home / "ansible.cfg").write_text("[defaults]\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    request = {"inventories": {k: str(v) for k, v in INVENTORIES.items()}, "cases": cases}
    done = subprocess.run(
        [str(ORACLE), str(HERE / "ansible_oracle.py")], input=json.dumps(request), capture_output=True,
        text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(zip(cases, json.loads(done.stdout), strict=True))


def ours(inventory: str, pattern: str) -> list[str]:
    return [h.name for h in load(INVENTORIES[inventory]).select(pattern)]


@pytest.mark.parametrize(("inventory", "pattern", "order"), SELECTS)
def test_selects_what_ansible_selects(inventory: str, pattern: str, order: str) -> None:
    answer = ansible_answers()[(inventory, pattern)]
    assert "error" not in answer and not answer["warnings"] and answer["hosts"], answer
    got = ours(inventory, pattern)
    if order == SAME:
        assert got == answer["hosts"]
    else:
        assert sorted(got) == sorted(answer["hosts"]) and len(got) == len(answer["hosts"])


@pytest.mark.parametrize(("inventory", "pattern", "needle"), REFUSES)
def test_refuses_where_ansible_warns_or_selects_nothing(inventory: str, pattern: str, needle: str) -> None:
    answer = ansible_answers()[(inventory, pattern)]
    assert "error" in answer or answer["warnings"] or not answer["hosts"], answer
    with pytest.raises(UsageError) as info:
        ours(inventory, pattern)
    message = str(info.value)
    assert "\n" not in message
    assert needle in message


@pytest.mark.parametrize(("inventory", "pattern", "needle"), STRICTER)
def test_refuses_what_ansible_reads_loosely(inventory: str, pattern: str, needle: str) -> None:
    answer = ansible_answers()[(inventory, pattern)]
    assert answer.get("hosts") and not answer["warnings"], answer
    with pytest.raises(UsageError, match=needle):
        ours(inventory, pattern)


def test_table_size() -> None:
    assert len(SELECTS) + len(REFUSES) >= 30
    assert {inv for inv, _, _ in SELECTS} == set(INVENTORIES)
