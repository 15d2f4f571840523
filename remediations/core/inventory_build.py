"""From an inventory's groups (read from YAML or INI) to hosts, memberships and effective vars.

Ansible's rules, checked against `ansible-inventory --list` (tests/unit/core/test_inventory_oracle.py):
- a group's keys are read in file order; a host named in several places keeps one set of inventory
  vars, later definitions winning; `host:2201` sets `ansible_port` before the host's own vars;
- every group that is no other group's child is a child of `all`; a host in no group but `all` is in
  `ungrouped`; a group's depth is its longest distance from `all`;
- a host's vars, lowest first: `all`'s inventory vars; its other groups' inventory vars ordered by
  (depth, ansible_group_priority, name); `group_vars/all`; `group_vars/<group>` in the same order;
  the host's inventory vars; `host_vars/<host>`. Each level replaces whole values (no deep merge).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediations.core.errors import UsageError
from remediations.core.hostrange import expand, split_port
from remediations.core.inventory_vars import VarsDirs, refuse_unsupported, var_name

MAX_TOTAL_HOSTS = 100_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class GroupDef:
    """One group, merged over every place the inventory mentions it (as Ansible merges them)."""

    hosts: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    priority: int = 1
    listed: set[str] = field(default_factory=set)  # `hosts`, for a quick "already there"


@dataclass
class Built:
    """What the builder hands back: hosts in order with their vars and groups, and every group."""

    hosts: dict[str, tuple[dict[str, Any], tuple[str, ...]]]
    groups: dict[str, list[str]]


class Builder:
    """Reads every group definition, merges repeated ones, then resolves membership and vars.

    A group may be defined in one place and referenced elsewhere as an empty child
    (`prod: {children: {web: }}`): Ansible merges the two, and so does this.
    """

    def __init__(self, source: str, vars_dirs: VarsDirs | None = None) -> None:
        self.source = source
        self.vars_dirs = vars_dirs or VarsDirs(None)
        self.defs: dict[str, GroupDef] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}  # in order of first appearance

    def build(self, data: Mapping[str, Any]) -> Built:
        top = dict(data)
        all_group = top.pop("all", None) or {}
        # Top-level groups other than `all` are implicitly its children, as in Ansible.
        if top:
            all_group = dict(self._mapping(all_group, "all"))
            children = dict(self._mapping(all_group.get("children") or {}, "all.children"))
            for name, body in top.items():
                children[name] = body
            all_group["children"] = children
        self._collect("all", all_group, ("all",))
        depth: dict[str, int] = {}
        self._depths("all", 0, ("all",), depth)  # first: it finds the loops _members would follow
        self._ungrouped()
        depth.setdefault("ungrouped", 1)
        members: dict[str, list[str]] = {}
        groups = {group: self._members(group, members) for group in self.defs}
        of_host: dict[str, list[str]] = {host: [] for host in self.host_vars}
        for group, names in groups.items():
            if group != "all":
                for name in names:
                    of_host[name].append(group)
        hosts: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
        for host, own in self.host_vars.items():
            mine = of_host[host]
            mine.sort(key=lambda g: (depth.get(g, 0), self.defs[g].priority, g))
            merged = self._effective(host, own, mine)
            hosts[host] = (refuse_unsupported(merged, self.source), tuple(sorted(["all", *mine])))
        return Built(hosts, groups)

    def _effective(self, host: str, own: dict[str, Any], groups: list[str]) -> dict[str, Any]:
        merged: dict[str, Any] = dict(self.defs["all"].vars)
        for group in groups:
            merged.update(self.defs[group].vars)
        merged.update(self.vars_dirs.vars_of("group_vars", "all"))
        for group in groups:
            merged.update(self.vars_dirs.vars_of("group_vars", group))
        merged.update(own)
        merged.update(self.vars_dirs.vars_of("host_vars", host))
        return merged

    def _ungrouped(self) -> None:
        """`ungrouped` always exists; it holds the hosts that are in no group besides `all`."""
        ungrouped = self.defs.setdefault("ungrouped", GroupDef())
        if "ungrouped" not in self.defs["all"].children:
            self.defs["all"].children.insert(0, "ungrouped")
        memo: dict[str, list[str]] = {}
        grouped = {h for g in self.defs if g not in ("all", "ungrouped") for h in self._members(g, memo)}
        listed = dict.fromkeys(h for h in ungrouped.hosts if h not in grouped)
        listed.update(dict.fromkeys(h for h in self.defs["all"].hosts if h not in grouped))
        ungrouped.hosts = list(listed)
        ungrouped.listed = set(listed)

    def _mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{self.source}: {key}: expected a mapping, got {type(value).__name__}")
        return value

    def _name(self, value: Any, what: str, where: str) -> str:
        name = str(value)
        if not name.strip() or _CONTROL.search(name):
            raise UsageError(f"{self.source}: {where}: {what} name {name!r} is empty or has a control "
                             "character; rename it")  # fmt: skip
        return name

    def _group_vars(self, definition: GroupDef, body: Any, where: str) -> None:
        for key, value in self._mapping(body, where).items():
            if key == "ansible_group_priority":  # Ansible takes it as the group's order, not a var
                try:
                    definition.priority = int(value)
                except (TypeError, ValueError):
                    raise UsageError(f"{self.source}: {where}: ansible_group_priority {value!r} "
                                     "is not a whole number") from None  # fmt: skip
                continue
            definition.vars[var_name(key)] = value

    def _hosts(self, definition: GroupDef, body: Any, where: str) -> None:
        for pattern, host_body in self._mapping(body, where).items():
            if not isinstance(pattern, str):  # `1234:` is a number to YAML; Ansible refuses it too
                raise UsageError(f"{self.source}: {where}: host pattern {pattern!r} must be a string; "
                                 "put it in quotes")  # fmt: skip
            text = self._name(pattern, "host", where)
            name_pattern, port = split_port(text)
            own = dict(self._mapping(host_body, f"{where}.{text}"))
            for host in expand(name_pattern, f"{self.source}: {where}"):
                host = self._name(host, "host", where)
                known = self.host_vars.setdefault(host, {})
                if len(self.host_vars) > MAX_TOTAL_HOSTS:
                    raise UsageError(f"{self.source}: more than {MAX_TOTAL_HOSTS} hosts; "
                                     "split the inventory")  # fmt: skip
                if port is not None:
                    known["ansible_port"] = port
                known.update((var_name(k), v) for k, v in own.items())
                if host not in definition.listed:
                    definition.listed.add(host)
                    definition.hosts.append(host)

    def _collect(self, group: str, body: Any, path: tuple[str, ...]) -> None:
        where = ".".join(path)
        body = self._mapping(body, where)
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise UsageError(
                f"{self.source}: {where}: unknown key {sorted(map(str, unknown))[0]!r} "
                "(a group holds only hosts, vars and children)"
            )
        definition = self.defs.setdefault(group, GroupDef())
        for key, value in body.items():  # in file order, as Ansible reads them
            if key == "vars":
                self._group_vars(definition, value, f"{where}.vars")
            elif key == "hosts":
                self._hosts(definition, value, f"{where}.hosts")
            else:
                for child, child_body in self._mapping(value, f"{where}.children").items():
                    child = self._name(child, "group", f"{where}.children")
                    if child in path:
                        raise UsageError(f"{self.source}: {where}.children.{child}: group contains itself")
                    if child not in definition.children:
                        definition.children.append(child)
                    self._collect(child, child_body, (*path, child))

    def _depths(self, group: str, level: int, path: tuple[str, ...], depth: dict[str, int]) -> None:
        """A group's depth is its longest distance from `all`, as Ansible orders group vars."""
        if depth.get(group, -1) >= level:
            return
        depth[group] = level
        for child in self.defs[group].children:
            if child in path:
                raise UsageError(
                    f"{self.source}: group {child!r} contains itself (through {' -> '.join(path)})"
                )
            self._depths(child, level + 1, (*path, child), depth)

    def _members(self, group: str, memo: dict[str, list[str]]) -> list[str]:
        """The group's own hosts, then its children's, each once."""
        if group not in memo:
            found = dict.fromkeys(self.defs[group].hosts)
            for child in self.defs[group].children:
                found.update(dict.fromkeys(self._members(child, memo)))
            memo[group] = list(found)
        return memo[group]
