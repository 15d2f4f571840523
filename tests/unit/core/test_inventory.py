"""Ansible YAML inventories: parsing, variable precedence, host selection and ssh common args."""

from __future__ import annotations

import itertools
import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediations.core.errors import UsageError
from remediations.core.inventory import SSHOptions, parse, parse_ssh_common_args

SOURCE = "inventories/test.yml"


def inv(text: str):
    return parse(textwrap.dedent(text), SOURCE)


NESTED = """
all:
  vars:
    level: all
    only_all: a
    region: from-all
  hosts:
    bastion:
      level: host
  children:
    prod:
      vars:
        level: prod
        only_prod: p
      children:
        api:
          vars:
            level: api
            only_api: x
          hosts:
            api1:
              level: host-api1
              ansible_host: 10.0.0.1
              ansible_port: 2222
              ansible_user: deploy
            api2:
        db:
          vars:
            level: db
          hosts:
            db1:
    staging:
      hosts:
        api-stage:
"""


# ---------------------------------------------------------------- structure and precedence


@pytest.mark.parametrize(
    ("host", "var", "expected"),
    [
        ("api1", "level", "host-api1"),  # host beats every group
        ("api2", "level", "api"),  # inner group beats outer group
        ("db1", "level", "db"),
        ("api2", "only_prod", "p"),  # outer group vars reach inner groups' hosts
        ("api2", "only_all", "a"),  # all vars reach everyone
        ("api-stage", "level", "all"),
        ("api-stage", "only_prod", None),  # a sibling's vars do not leak
        ("db1", "only_api", None),
        ("bastion", "level", "host"),
        ("bastion", "region", "from-all"),
    ],
)
def test_var_precedence_all_outer_inner_host(host: str, var: str, expected: Any) -> None:
    assert inv(NESTED).hosts[host].get(var) == expected


def test_hosts_groups_and_connection_vars() -> None:
    inventory = inv(NESTED)
    assert list(inventory.hosts) == ["bastion", "api1", "api2", "db1", "api-stage"]
    assert inventory.groups["all"] == ["bastion", "api1", "api2", "db1", "api-stage"]
    assert inventory.groups["prod"] == ["api1", "api2", "db1"]
    assert inventory.groups["api"] == ["api1", "api2"]
    assert inventory.groups["staging"] == ["api-stage"]
    api1 = inventory.hosts["api1"]
    assert api1.groups == ("all", "api", "prod")
    assert (api1.address, api1.port, api1.user) == ("10.0.0.1", 2222, "deploy")
    api2 = inventory.hosts["api2"]
    assert (api2.address, api2.port, api2.user) == ("api2", None, None)
    assert api1.source == SOURCE


@pytest.mark.parametrize(
    ("groups_in_file", "expected"),
    [
        # siblings at the same depth merge in name order: the later name wins whatever the file order
        (("alpha", "beta"), "beta"),
        (("beta", "alpha"), "beta"),
        (("zeta", "eta"), "zeta"),
    ],
)
def test_sibling_groups_merge_by_name(groups_in_file: tuple[str, str], expected: str) -> None:
    first, second = groups_in_file
    text = f"""
    all:
      children:
        {first}:
          vars: {{color: {first}, only_{first}: 1}}
          hosts: {{shared: {{from_{first}: 1}}}}
        {second}:
          vars: {{color: {second}, only_{second}: 1}}
          hosts: {{shared: {{from_{second}: 1}}}}
    """
    host = inv(text).hosts["shared"]
    assert host.get("color") == expected
    # a host in two groups gets both groups' vars, both host-level blocks, and both memberships
    for name in groups_in_file:
        assert host.get(f"only_{name}") == 1
        assert host.get(f"from_{name}") == 1
    assert set(host.groups) == {"all", first, second}
    assert list(inv(text).hosts) == ["shared"]


def test_top_level_groups_besides_all_are_children_of_all() -> None:
    inventory = inv(
        """
        all:
          vars: {tier: base, from_all: yes}
          hosts: {h0: }
        web:
          vars: {tier: web}
          hosts: {w1: , w2: {tier: mine}}
        db:
          hosts: {d1: }
        """
    )
    assert set(inventory.hosts) == {"h0", "w1", "w2", "d1"}
    assert set(inventory.groups["all"]) == {"h0", "w1", "w2", "d1"}
    assert inventory.groups["web"] == ["w1", "w2"]
    assert inventory.hosts["w1"].get("tier") == "web"
    assert inventory.hosts["w2"].get("tier") == "mine"
    assert inventory.hosts["d1"].get("tier") == "base"
    assert inventory.hosts["d1"].get("from_all") is True


def test_top_level_groups_without_all() -> None:
    inventory = inv(
        """
        web:
          hosts: {w1: {ansible_connection: local}}
        """
    )
    assert inventory.groups["all"] == ["w1"]
    assert inventory.hosts["w1"].is_local
    assert inventory.hosts["w1"].groups == ("all", "web")


def test_group_of_groups_referencing_a_group_defined_elsewhere() -> None:
    inventory = inv(
        """
        all:
          children:
            web:
              vars: {http_port: 80}
              hosts: {w1: , w2: }
            prod:
              vars: {env: prod}
              children:
                web:
        """
    )
    assert inventory.groups["prod"] == ["w1", "w2"]
    assert inventory.hosts["w1"].get("env") == "prod"
    assert inventory.hosts["w1"].get("http_port") == 80
    assert [h.name for h in inventory.select("prod")] == ["w1", "w2"]


# ---------------------------------------------------------------- selection

SELECT = """
all:
  hosts:
    lb1:
  children:
    api:
      hosts: {api1: , api2: , api3: }
    db:
      hosts: {db1: , db2: }
    web:
      hosts: {web1: , api2: }
"""


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("api1", ["api1"]),
        ("api", ["api1", "api2", "api3"]),
        ("db", ["db1", "db2"]),
        ("all", ["lb1", "api1", "api2", "api3", "db1", "db2", "web1"]),
        ("api1,db2", ["api1", "db2"]),
        ("db2,api1", ["db2", "api1"]),  # a comma list keeps the order it was given
        (" api1 , db2 ,", ["api1", "db2"]),
        ("api*", ["api1", "api2", "api3"]),
        ("*1", ["lb1", "api1", "db1", "web1"]),  # glob: inventory order
        ("db?", ["db1", "db2"]),
        ("api[!2]", ["api1", "api3"]),  # a glob class (`api[13]` would be a subscript)
        ("api,!api2", ["api1", "api3"]),
        ("!api2,api", ["api1", "api3"]),  # exclusion wins wherever it is
        ("all,!api", ["lb1", "db1", "db2", "web1"]),
        ("all,!api*,!db1", ["lb1", "db2", "web1"]),
        ("api,web", ["api1", "api2", "api3", "web1"]),  # api2 is in both: once
        ("api2,api,api2", ["api2", "api1", "api3"]),
        ("w*", ["web1", "api2"]),  # a glob matching a group name brings its members
    ],
)
def test_select(pattern: str, expected: list[str]) -> None:
    assert [h.name for h in inv(SELECT).select(pattern)] == expected


@pytest.mark.parametrize(
    ("pattern", "needles"),
    [
        ("nope", ["'nope'", "unknown host or group"]),
        ("api1,nope", ["'nope'"]),
        ("api,!nope", ["'nope'"]),
        ("zzz*", ["'zzz*'"]),
        ("api,!api", ["selects no host"]),
        ("", ["--host is empty"]),
        (" , ", ["--host is empty"]),
    ],
)
def test_select_errors_name_source_and_term(pattern: str, needles: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        inv(SELECT).select(pattern)
    message = str(info.value)
    assert message.startswith(SOURCE + ":")
    for needle in needles:
        assert needle in message
    assert "\n" not in message


def test_unknown_term_lists_known_groups() -> None:
    with pytest.raises(UsageError, match=r"groups: all, api, db, ungrouped, web"):
        inv(SELECT).select("apii")


# ---------------------------------------------------------------- malformed inventories


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("all:\n  hosts:\n    a: [1,\n", ["malformed YAML", "line "]),
        ("all:\n  hosts:\n    a: {b: 1}\n   c: 2\n", ["malformed YAML", "line 4"]),
        ("all:\n\thosts: {}\n", ["malformed YAML", "line 2"]),
        ("", ["inventory is empty"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
        ("all: [a, b]\n", ["all: expected a mapping, got list"]),
        ("all:\n  children:\n    web: just-a-string\n", ["all.web: expected a mapping, got str"]),
        ("all:\n  hosts: [a, b]\n", ["all.hosts: expected a mapping, got list"]),
        ("all:\n  hosts:\n    a: 5\n", ["all.hosts.a: expected a mapping, got int"]),
        ("all:\n  vars: [x]\n", ["all.vars: expected a mapping, got list"]),
        ("all:\n  children:\n    web:\n      host: {a: }\n", ["all.web: unknown key 'host'"]),
        ("all:\n  hostz: {}\n", ["all: unknown key 'hostz'"]),
        (
            "all:\n  children:\n    web:\n      children:\n        web:\n",
            ["all.web.children.web: group contains itself"],
        ),
        (
            "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n",
            ["group contains itself"],
        ),
        ("all:\n  children:\n    all:\n", ["group contains itself"]),
    ],
)
def test_malformed_inventory_is_one_usage_line(text: str, needles: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse(text, SOURCE)
    message = str(info.value)
    assert message.startswith(SOURCE + ":")
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message


def test_malformed_yaml_names_the_line() -> None:
    text = "all:\n  hosts:\n    a:\n      x: 1\n    b: : :\n"
    with pytest.raises(UsageError, match=r"^inventories/test\.yml: line 5: malformed YAML"):
        parse(text, SOURCE)


@pytest.mark.parametrize(
    ("host_vars", "var", "ok"),
    [
        ({"compose_project_dir": "/srv/app"}, "compose_project_dir", "/srv/app"),
        ({"n": 0}, "n", 0),
        ({}, "compose_project_dir", None),
        ({"compose_project_dir": ""}, "compose_project_dir", None),
        ({"compose_project_dir": None}, "compose_project_dir", None),
    ],
)
def test_require(host_vars: dict[str, Any], var: str, ok: Any) -> None:
    text = yaml.safe_dump({"all": {"hosts": {"api9": host_vars or None}}})
    host = parse(text, SOURCE).hosts["api9"]
    if ok is not None:
        assert host.require(var) == ok
        return
    with pytest.raises(UsageError) as info:
        host.require(var)
    message = str(info.value)
    assert SOURCE in message
    assert "host api9" in message
    assert repr(var) in message


# ---------------------------------------------------------------- ansible_ssh_common_args


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("", SSHOptions()),
        ("-o UserKnownHostsFile=/a", SSHOptions(known_hosts_files=("/a",))),
        ("-oUserKnownHostsFile=/a", SSHOptions(known_hosts_files=("/a",))),
        ("-o 'UserKnownHostsFile /a /b'", SSHOptions(known_hosts_files=("/a", "/b"))),
        ("-o ProxyJump=u@j:2222", SSHOptions(proxy_jump="u@j:2222")),
        ("-o proxyjump=j", SSHOptions(proxy_jump="j")),
        ("-J u@j:2222", SSHOptions(proxy_jump="u@j:2222")),
        ("-Ju@j", SSHOptions(proxy_jump="u@j")),
        ("-o 'ProxyCommand ssh -W %h:%p -p 2200 u@jump'", SSHOptions(proxy_jump="u@jump:2200")),
        ("-o 'ProxyCommand /usr/bin/ssh -q -W %h:%p jump'", SSHOptions(proxy_jump="jump")),
        # ProxyJump wins over ProxyCommand
        ("-o ProxyJump=j1 -o 'ProxyCommand ssh -W %h:%p j2'", SSHOptions(proxy_jump="j1")),
        ("-o StrictHostKeyChecking=accept-new", SSHOptions(host_key_policy="accept-new")),
        ("-o StrictHostKeyChecking=yes", SSHOptions(host_key_policy="yes")),
        ("-o StrictHostKeyChecking=Accept-New", SSHOptions(host_key_policy="accept-new")),
        (
            "-i ~/.ssh/k -o ControlMaster=auto -o StrictHostKeyChecking=accept-new -J bast",
            SSHOptions(proxy_jump="bast", host_key_policy="accept-new"),
        ),
    ],
)
def test_parse_ssh_common_args(args: str, expected: SSHOptions) -> None:
    assert parse_ssh_common_args(args, "inv.yml: host h") == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('-o "UserKnownHostsFile=/a /b"', SSHOptions(known_hosts_files=("/a", "/b"))),
        ('-o ProxyCommand="ssh -W %h:%p -p 2200 u@jump"', SSHOptions(proxy_jump="u@jump:2200")),
        ('-o "ProxyCommand=ssh -W %h:%p jump"', SSHOptions(proxy_jump="jump")),
    ],
)
def test_parse_ssh_common_args_key_equals_value_with_spaces(args: str, expected: SSHOptions) -> None:
    assert parse_ssh_common_args(args, "inv.yml: host h") == expected


def test_proxy_command_login_name_is_kept() -> None:
    options = parse_ssh_common_args("-o 'ProxyCommand ssh -W %h:%p -l u -p 2200 jump'", "w")
    assert options.proxy_jump == "u@jump:2200"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ("-o StrictHostKeyChecking=no", ["StrictHostKeyChecking=no", "not honoured"]),
        ("-o StrictHostKeyChecking=off", ["StrictHostKeyChecking=off"]),
        ("-o 'ProxyCommand nc -X 5 -x proxy:1080 %h %p'", ["ProxyCommand", "not supported"]),
        ("-o 'ProxyCommand ssh jump nc %h %p'", ["not supported"]),
        ("-o 'ProxyCommand ssh -W %h:%p'", ["names no jump host"]),
        ("-o 'UserKnownHostsFile=/a", ["ansible_ssh_common_args"]),  # unbalanced quote
    ],
)
def test_parse_ssh_common_args_rejects(args: str, needles: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_ssh_common_args(args, "inv.yml: host h")
    message = str(info.value)
    assert message.startswith("inv.yml: host h:")
    for needle in needles:
        assert needle in message


def test_host_ssh_options_errors_name_file_and_host() -> None:
    text = yaml.safe_dump(
        {"all": {"hosts": {"api1": {"ansible_ssh_common_args": "-o StrictHostKeyChecking=no"}}}}
    )
    host = parse(text, SOURCE).hosts["api1"]
    with pytest.raises(UsageError, match=r"^inventories/test\.yml: host api1: StrictHostKeyChecking=no"):
        _ = host.ssh_options


# ---------------------------------------------------------------- property: every host is in `all`

HOST_NAMES = st.text(alphabet="abcdef0123456789-_.", min_size=1, max_size=5)


def _group_bodies() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.fixed_dictionaries(
        {"hosts": st.lists(HOST_NAMES, max_size=4), "children": st.just([])},
    )
    return st.recursive(
        leaf,
        lambda inner: st.fixed_dictionaries(
            {"hosts": st.lists(HOST_NAMES, max_size=3), "children": st.lists(inner, max_size=3)}
        ),
        max_leaves=8,
    )


def _to_yaml_group(
    node: dict[str, Any], counter: itertools.count[int], listed: set[str], members: dict[str, set[str]]
) -> tuple[str, dict[str, Any], set[str]]:
    """Give the generated tree unique group names; return (name, body, every host below)."""
    name = f"g{next(counter)}"
    body: dict[str, Any] = {}
    below: set[str] = set(node["hosts"])
    listed.update(node["hosts"])
    if node["hosts"]:
        body["hosts"] = {h: None for h in node["hosts"]}
    children = {}
    for child in node["children"]:
        child_name, child_body, child_hosts = _to_yaml_group(child, counter, listed, members)
        children[child_name] = child_body
        below |= child_hosts
    if children:
        body["children"] = children
    members[name] = below
    return name, body, below


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    all_hosts=st.lists(HOST_NAMES, max_size=3),
    tree=st.lists(_group_bodies(), max_size=3),
    top_level=st.lists(_group_bodies(), max_size=2),
)
def test_every_listed_host_is_in_all(
    all_hosts: list[str], tree: list[dict[str, Any]], top_level: list[dict[str, Any]]
) -> None:
    counter = itertools.count()
    listed: set[str] = set(all_hosts)
    members: dict[str, set[str]] = {}
    all_body: dict[str, Any] = {}
    if all_hosts:
        all_body["hosts"] = {h: None for h in all_hosts}
    children = {}
    for node in tree:
        name, body, _ = _to_yaml_group(node, counter, listed, members)
        children[name] = body
    if children:
        all_body["children"] = children
    document: dict[str, Any] = {"all": all_body or None}
    for node in top_level:
        name, body, _ = _to_yaml_group(node, counter, listed, members)
        document[name] = body or None

    inventory = parse(yaml.safe_dump(document), SOURCE)

    assert set(inventory.hosts) == listed
    assert set(inventory.groups.get("all", [])) == listed
    assert len(inventory.groups.get("all", [])) == len(listed)  # no duplicates
    for group, expected in members.items():
        assert set(inventory.groups.get(group, [])) == expected
        for host in expected:
            assert group in inventory.hosts[host].groups
    for host in inventory.hosts.values():
        assert "all" in host.groups


def test_inventories_are_parsed_by_libyaml_where_pyyaml_has_it() -> None:
    """As Ansible's own loader: the pure-Python parser took half a second of a 1,000-host
    inventory. The same tags and values either way (the oracle tests compare with ansible-inventory)."""
    import yaml

    from remediations.core import inventory_vars

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    assert issubclass(inventory_vars._Loader, yaml.CSafeLoader)
    text = "all:\n  hosts:\n    h1: {ansible_host: 10.0.0.1, note: !unsafe '{{ x }}', on_call: no}\n"
    host = inventory_vars.load_yaml(text, "inv.yml")["all"]["hosts"]["h1"]
    assert host == {"ansible_host": "10.0.0.1", "note": "{{ x }}", "on_call": False}
    assert isinstance(host["note"], inventory_vars.UnsafeText)
    with pytest.raises(UsageError, match=r"inv.yml: line 3: malformed YAML"):
        inventory_vars.load_yaml("all:\n  - [unclosed\n", "inv.yml")
