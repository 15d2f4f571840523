"""Ansible YAML inventories, read unchanged, and host selection.

Variable precedence follows Ansible's: `all` vars, then group vars from the outermost group to the
innermost (siblings in name order), then host vars. This project's own settings are ordinary host
and group vars (see README: "Inventory variables").
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remediations.core import patterns
from remediations.core.errors import UsageError

INVENTORY_ENV = "REMEDIATIONS_INVENTORY"
DEFAULT_INVENTORY = Path("inventories/hosts.yml")
GROUP_KEYS = {"hosts", "vars", "children"}


@dataclass(frozen=True)
class SSHOptions:
    """What `ansible_ssh_common_args` may say that this project honours."""

    known_hosts_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    host_key_policy: str = "yes"  # "yes" (strict) or "accept-new"


@dataclass(frozen=True)
class Host:
    """One inventory host with its merged variables."""

    name: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...] = ()
    source: str = ""

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host", self.name))

    @property
    def port(self) -> int | None:
        port = self.vars.get("ansible_port")
        return int(port) if port is not None else None

    @property
    def user(self) -> str | None:
        user = self.vars.get("ansible_user")
        return str(user) if user is not None else None

    @property
    def key_file(self) -> str | None:
        key = self.vars.get("ansible_ssh_private_key_file")
        return os.path.expanduser(str(key)) if key else None

    @property
    def is_local(self) -> bool:
        return self.vars.get("ansible_connection") == "local"

    @property
    def become(self) -> bool:
        return truthy(self.vars.get("ansible_become", False))

    @property
    def become_user(self) -> str:
        return str(self.vars.get("ansible_become_user", "root"))

    @property
    def ssh_options(self) -> SSHOptions:
        return parse_ssh_common_args(
            str(self.vars.get("ansible_ssh_common_args", "")), f"{self.source}: host {self.name}"
        )

    def get(self, name: str, default: Any = None) -> Any:
        return self.vars.get(name, default)

    def require(self, name: str) -> Any:
        value = self.vars.get(name)
        if value is None or value == "":
            raise UsageError(
                f"{self.source}: host {self.name}: missing required var {name!r} "
                "(set it in the host's vars or a group's vars)"
            )
        return value


@dataclass
class Inventory:
    """Every host (in file order) and every group's member hosts."""

    source: str
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def select(self, pattern: str, flag: str = "--host") -> list[Host]:
        """The hosts an Ansible host pattern selects (see core/patterns.py and README: "Choosing
        hosts (--host)"). Raises UsageError naming the term when a term matches nothing."""
        names = patterns.select(pattern, list(self.hosts), self.groups, self.source, flag)
        return [self.hosts[n] if n in self.hosts else controller_host(self, n) for n in names]


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "yes", "true", "on"}
    return bool(value)


def inventory_path(flag: str | None = None) -> Path:
    """The inventory file: the --inventory flag, else $REMEDIATIONS_INVENTORY, else the default."""
    return Path(flag or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


def load(path: str | Path) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: inventory not found; pass --inventory or set {INVENTORY_ENV}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read inventory: {exc.strerror}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<inventory>") -> Inventory:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"{source}:{where}: malformed YAML: {problem}") from None
    if data is None:
        raise UsageError(f"{source}: inventory is empty")
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping of groups (such as 'all:')")
    return _Builder(source).build(data)


@dataclass
class _GroupDef:
    """One group, merged over every place the file mentions it (as Ansible merges them)."""

    hosts: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


class _Builder:
    """Reads every group definition, merges repeated ones, then resolves membership and vars.

    A group may be defined in one place and referenced elsewhere as an empty child
    (`prod: {children: {web: }}`): Ansible merges the two, and so does this.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.defs: dict[str, _GroupDef] = {}
        self.host_vars: dict[str, dict[str, Any]] = {}  # in order of first appearance

    def build(self, data: Mapping[str, Any]) -> Inventory:
        top = dict(data)
        all_group = top.pop("all", None) or {}
        # Top-level groups other than `all` are implicitly its children, as in Ansible.
        if top:
            all_group = dict(self._mapping(all_group, "all"))
            children = dict(self._mapping(all_group.get("children") or {}, "all.children"))
            children.update(top)
            all_group["children"] = children
        self._collect("all", all_group, ("all",))
        depth: dict[str, int] = {}
        self._depths("all", 0, ("all",), depth)
        members: dict[str, list[str]] = {}
        inventory = Inventory(self.source)
        for group in self.defs:
            inventory.groups[group] = self._members(group, members)
        for host, own in self.host_vars.items():
            groups = sorted((g for g, hosts in inventory.groups.items() if host in hosts),
                            key=lambda g: (depth.get(g, 0), g))
            merged: dict[str, Any] = {}
            for group in groups:
                merged.update(self.defs[group].vars)
            merged.update(own)
            inventory.hosts[host] = Host(host, merged, tuple(sorted(groups)), self.source)
        return inventory

    def _mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{self.source}: {key}: expected a mapping, got {type(value).__name__}")
        return value

    def _collect(self, group: str, body: Any, path: tuple[str, ...]) -> None:
        where = ".".join(path)
        body = self._mapping(body, where)
        unknown = set(body) - GROUP_KEYS
        if unknown:
            raise UsageError(
                f"{self.source}: {where}: unknown key {sorted(unknown)[0]!r} "
                "(a group holds only hosts, vars and children)"
            )
        definition = self.defs.setdefault(group, _GroupDef())
        definition.vars.update(self._mapping(body.get("vars"), f"{where}.vars"))
        for host, host_body in self._mapping(body.get("hosts"), f"{where}.hosts").items():
            host = str(host)
            self.host_vars.setdefault(host, {}).update(self._mapping(host_body, f"{where}.hosts.{host}"))
            if host not in definition.hosts:
                definition.hosts.append(host)
        for child, child_body in self._mapping(body.get("children"), f"{where}.children").items():
            child = str(child)
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
        if group not in memo:
            found = list(self.defs[group].hosts)
            for child in self.defs[group].children:
                found.extend(h for h in self._members(child, memo) if h not in found)
            memo[group] = found
        return memo[group]


def parse_ssh_common_args(args: str, where: str) -> SSHOptions:
    """Read the ssh options this project honours from `ansible_ssh_common_args`.

    As in ssh, the first value given for an option wins, and ProxyJump (`-J`) and ProxyCommand
    compete: whichever comes first is used. Other flags are ignored, with their arguments.
    """
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise UsageError(f"{where}: ansible_ssh_common_args: {exc}") from None
    options: dict[str, str] = {}
    for flag, value in _ssh_flags(words, where):
        if flag == "-J":
            options.setdefault("proxy", f"jump {value}")
            continue
        match = re.match(r"\s*([A-Za-z]+)\s*(?:=|\s)\s*(.*)\Z", value, re.DOTALL)
        if match is None or not match.group(2).strip():
            raise UsageError(
                f"{where}: ansible_ssh_common_args: option {value!r} has no value "
                "(write -o Name=value)"
            )
        name, setting = match.group(1).lower(), match.group(2).strip()
        if name in ("proxyjump", "proxycommand"):
            options.setdefault("proxy", f"{'jump' if name == 'proxyjump' else 'command'} {setting}")
        else:
            options.setdefault(name, setting)
    policy = options.get("stricthostkeychecking", "yes").lower()
    if policy not in ("yes", "accept-new"):
        raise UsageError(
            f"{where}: StrictHostKeyChecking={policy} is not honoured: host keys are always "
            "checked; use 'yes' or 'accept-new'"
        )
    files = tuple(os.path.expanduser(f) for f in options.get("userknownhostsfile", "").split())
    return SSHOptions(known_hosts_files=files, proxy_jump=_proxy(options.get("proxy"), where),
                      host_key_policy=policy)


# ssh's flags that take an argument: their argument is skipped, never read as an option.
_SSH_FLAGS_WITH_ARG = set("BbcDEeFIiLlmOopQRSWw")


def _ssh_flags(words: list[str], where: str) -> Iterator[tuple[str, str]]:
    """(`-o` or `-J`, value) for each option in an ssh command line, in order."""
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or len(word) < 2:
            continue
        letter = word[1]
        if letter not in _SSH_FLAGS_WITH_ARG and letter != "J":
            continue
        if len(word) > 2:
            value = word[2:]
        elif i < len(words) and not (letter in "oJ" and words[i].startswith("-")):
            value = words[i]
            i += 1
        elif letter in "oJ":
            raise UsageError(f"{where}: ansible_ssh_common_args: {word} has no value (write {word} VALUE)")
        else:
            continue
        if letter in "oJ":
            yield f"-{letter}", value


def _proxy(proxy: str | None, where: str) -> str | None:
    """The jump host named by the first ProxyJump / -J / ProxyCommand, or None."""
    if proxy is None:
        return None
    kind, _, value = proxy.partition(" ")
    if value.lower() == "none":
        return None
    if kind == "command":
        return _jump_from_proxy_command(value, where)
    if "," in value:
        raise UsageError(
            f"{where}: ProxyJump {value!r} names several jump hosts; one jump host is supported"
        )
    jump_host_parts(value, where)  # refuse a malformed one now, before any host is connected to
    return value


def jump_host_parts(spec: str, where: str = "ProxyJump") -> tuple[str | None, str, int | None]:
    """(user, address, port) of a ProxyJump value: `[ssh://][user@]host[:port]`, `[v6addr]:port`."""
    rest = spec[len("ssh://"):] if spec.startswith("ssh://") else spec
    user, _, hostport = rest.rpartition("@")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^\s:@/\[\]]+)(?::(\d+))?", hostport)
    if match is None:
        raise UsageError(f"{where}: ProxyJump {spec!r} is not [user@]host[:port]")
    address = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    return user or None, address, int(port) if port else None


def _jump_from_proxy_command(command: str, where: str) -> str:
    """`ssh -W %h:%p [-p PORT] [-l USER] [user@]jump` is the one ProxyCommand form turned into a
    jump host; any other command is refused."""
    unsupported = f"{where}: ProxyCommand {command!r} is not supported; use ProxyJump (or -J)"
    try:
        words = shlex.split(command)
    except ValueError:
        raise UsageError(unsupported) from None
    if not words or os.path.basename(words[0]) != "ssh" or "-W" not in words:
        raise UsageError(unsupported)
    found: dict[str, str] = {}
    target: str | None = None
    rest = iter(words[1:])
    for word in rest:
        if word.startswith("-") and len(word) > 1:
            letter = word[1]
            if letter in _SSH_FLAGS_WITH_ARG:
                value = word[2:] if len(word) > 2 else next(rest, "")
                found.setdefault(letter, value)
        elif target is None:
            target = word
        else:  # `ssh -W %h:%p jump some command`: not a plain jump
            raise UsageError(unsupported)
    if target is None:
        raise UsageError(f"{where}: ProxyCommand {command!r} names no jump host")
    if "l" in found and "@" not in target:
        target = f"{found['l']}@{target}"
    return f"{target}:{found['p']}" if found.get("p") else target


def run_wide_vars(inventory: Inventory) -> dict[str, Any]:
    """Vars every host shares (in practice, `all` vars): where run-wide settings live."""
    hosts = list(inventory.hosts.values())
    if not hosts:
        return {}
    first = dict(hosts[0].vars)
    return {k: v for k, v in first.items() if all(h.vars.get(k) == v for h in hosts[1:])}


def controller_host(inventory: Inventory, name: str) -> Host:
    """The controller itself as a target (`ansible_connection: local`), with the run-wide vars:
    for tasks whose work is done from the controller (S3, backup checks, cron)."""
    return Host(name, {**run_wide_vars(inventory), "ansible_connection": "local"}, (), inventory.source)
