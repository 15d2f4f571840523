"""Ansible inventories (YAML or INI, with the `group_vars/` and `host_vars/` beside them), read
unchanged, and host selection.

Reading: `inventory_build` (groups -> hosts and effective vars, Ansible's precedence), `inventory_ini`
(the INI format), `inventory_vars` (vars folders, refused values), `hostrange` (`web[01:03]`, `host:2201`).
This project's own settings are ordinary host and group vars (see README: "Inventory variables").
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remediations.core.errors import UsageError
from remediations.core.inventory_build import Builder
from remediations.core.inventory_ini import parse_ini
from remediations.core.inventory_vars import HostVars, VarsDirs, load_yaml, read_text

INVENTORY_ENV = "REMEDIATIONS_INVENTORY"
DEFAULT_INVENTORY = Path("inventories/hosts.yml")
YAML_SUFFIXES = (".yml", ".yaml", ".json")
INI_SUFFIXES = (".ini", ".cfg")


@dataclass(frozen=True)
class SSHOptions:
    """What `ansible_ssh_common_args` may say that this project honours."""

    known_hosts_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    host_key_policy: str = "yes"  # "yes" (strict) or "accept-new"


@dataclass(frozen=True)
class Host:
    """One inventory host with its merged variables (a HostVars: reading a refused value raises)."""

    name: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.vars, HostVars):
            wrapped = HostVars(self.vars, f"{self.source}: host {self.name}", self.name)
            object.__setattr__(self, "vars", wrapped)

    def _last(self, *names: str) -> Any:
        """Ansible's rule for a connection setting named several ways: the last one set wins
        (`ansible_ssh_host` over `ansible_host`, `ansible_ssh_port` over `ansible_port`, ...)."""
        found = None
        for name in names:
            value = self.vars.get(name)
            if value is not None:
                found = value
        return found

    @property
    def address(self) -> str:
        address = self._last("ansible_host", "ansible_ssh_host")
        return str(address) if address is not None else self.name

    @property
    def port(self) -> int | None:
        port = self._last("ansible_port", "ansible_ssh_port")
        return int(port) if port is not None else None

    @property
    def user(self) -> str | None:
        user = self._last("ansible_user", "ansible_ssh_user")
        return str(user) if user is not None else None

    @property
    def key_file(self) -> str | None:
        key = self._last("ansible_private_key_file", "ansible_ssh_private_key_file")
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

    def select(self, pattern: str) -> list[Host]:
        """Hosts matching a host name, group name, comma list or glob; `!x` excludes x.

        Raises UsageError naming the pattern when a term matches nothing.
        """
        terms = [t.strip() for t in pattern.split(",") if t.strip()]
        if not terms:
            raise UsageError(f"{self.source}: --host is empty; give a host, a group, a list or a glob")
        chosen: list[str] = []
        excluded: set[str] = set()
        for term in terms:
            negate = term.startswith("!")
            names = self._match(term[1:] if negate else term)
            if negate:
                excluded.update(names)
            else:
                chosen.extend(n for n in names if n not in chosen)
        selected = [self.hosts[n] for n in chosen if n not in excluded]
        if not selected:
            raise UsageError(f"{self.source}: --host {pattern!r} selects no host after exclusions")
        return selected

    def _match(self, term: str) -> list[str]:
        if term in self.hosts:
            return [term]
        if term in self.groups:
            return list(self.groups[term])
        if any(ch in term for ch in "*?["):
            names: list[str] = [h for h in self.hosts if fnmatch.fnmatchcase(h, term)]
            for group in self.groups:
                if fnmatch.fnmatchcase(group, term):
                    names.extend(h for h in self.groups[group] if h not in names)
            if names:
                return names
        known = ", ".join(sorted(self.groups)) or "none"
        raise UsageError(
            f"{self.source}: unknown host or group {term!r} (groups: {known}); check --host or the inventory"
        )


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "yes", "true", "on"}
    return bool(value)


def inventory_path(flag: str | None = None) -> Path:
    """The inventory file: the --inventory flag, else $REMEDIATIONS_INVENTORY, else the default."""
    return Path(flag or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


def load(path: str | Path) -> Inventory:
    """An inventory file, YAML or INI (by its suffix; without one, YAML if it reads as a mapping),
    with the `group_vars/` and `host_vars/` folders beside it."""
    path = Path(path)
    try:
        text = read_text(path, "inventory")
    except UsageError:
        if os.path.isdir(path):
            raise UsageError(f"{path}: is a folder; pass the inventory file in it "
                             f"(--inventory {path}/hosts.yml)") from None  # fmt: skip
        if not os.path.lexists(path):
            raise UsageError(
                f"{path}: inventory not found; pass --inventory or set {INVENTORY_ENV}"
            ) from None
        raise
    source = str(path)
    dirs = VarsDirs(path)
    suffix = path.suffix.lower()
    if suffix in INI_SUFFIXES:
        return _inventory(parse_ini(text, source), source, dirs)
    if suffix in YAML_SUFFIXES:
        return parse(text, source, dirs)
    try:
        return parse(text, source, dirs)
    except UsageError:
        if not re.search(r"^\s*\[", text, re.MULTILINE) and ":" in text:
            raise  # reads as meant for YAML: its error is the useful one
        return _inventory(parse_ini(text, source), source, dirs)


def parse(text: str, source: str = "<inventory>", vars_dirs: VarsDirs | None = None) -> Inventory:
    """A YAML inventory's text (`vars_dirs`: the group_vars/ and host_vars/ to read with it)."""
    data = load_yaml(text, source)
    if data is None:
        raise UsageError(f"{source}: inventory is empty")
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping of groups (such as 'all:')")
    if isinstance(data.get("plugin"), str):
        flatten = f"ansible-inventory -i {source} --list -y > flat.yml"
        raise UsageError(f"{source}: an inventory plugin's config (plugin: {data['plugin']}) is not "
                         f"read here; flatten it first: {flatten}")  # fmt: skip
    return _inventory(data, source, vars_dirs)


def _inventory(data: Mapping[str, Any], source: str, vars_dirs: VarsDirs | None) -> Inventory:
    built = Builder(source, vars_dirs).build(data)
    inventory = Inventory(source, groups=built.groups)
    for name, (variables, groups) in built.hosts.items():
        inventory.hosts[name] = Host(name, variables, groups, source)
    return inventory


def parse_ssh_common_args(args: str, where: str) -> SSHOptions:
    """Read the ssh options this project honours from `ansible_ssh_common_args`."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise UsageError(f"{where}: ansible_ssh_common_args: {exc}") from None
    options: dict[str, str] = {}
    jump: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-o", "-J") and i + 1 < len(words):
            value = words[i + 1]
            i += 2
        elif word.startswith(("-o", "-J")) and len(word) > 2:
            value = word[2:]
            i += 1
        else:
            i += 1
            continue
        if word.startswith("-J"):
            jump = value
            continue
        match = re.match(r"\s*([A-Za-z]+)\s*(?:=|\s)\s*(.*)\Z", value, re.DOTALL)
        if match is None:
            raise UsageError(f"{where}: ansible_ssh_common_args: option {value!r} has no value")
        options[match.group(1).lower()] = match.group(2)
    if "proxyjump" in options:
        jump = options["proxyjump"]
    if "proxycommand" in options and jump is None:
        jump = _jump_from_proxy_command(options["proxycommand"], where)
    policy = options.get("stricthostkeychecking", "yes").lower()
    if policy not in ("yes", "accept-new"):
        raise UsageError(
            f"{where}: StrictHostKeyChecking={policy} is not honoured: host keys are always "
            "checked; use 'yes' or 'accept-new'"
        )
    files = tuple(os.path.expanduser(f) for f in options.get("userknownhostsfile", "").split())
    return SSHOptions(known_hosts_files=files, proxy_jump=jump, host_key_policy=policy)


def _jump_from_proxy_command(command: str, where: str) -> str:
    """`ssh -W %h:%p [-p PORT] [user@]jump` is the one ProxyCommand form turned into a jump host."""
    words = shlex.split(command)
    if not words or os.path.basename(words[0]) != "ssh" or "-W" not in words:
        raise UsageError(f"{where}: ProxyCommand {command!r} is not supported; use ProxyJump (or -J)")
    port = None
    user = None
    target = None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-p", "-l"):
            value = next(rest, None)
            port, user = (value, user) if word == "-p" else (port, value)
        elif word.startswith(("-p", "-l")) and len(word) > 2:
            port, user = (word[2:], user) if word.startswith("-p") else (port, word[2:])
        elif word in ("-W", "-i", "-o", "-F", "-J"):
            next(rest, None)
        elif not word.startswith("-"):
            target = word
    if target is None:
        raise UsageError(f"{where}: ProxyCommand {command!r} names no jump host")
    if user and "@" not in target:
        target = f"{user}@{target}"
    return f"{target}:{port}" if port else target


def run_wide_vars(inventory: Inventory) -> dict[str, Any]:
    """Vars every host shares (in practice, `all` vars): where run-wide settings live."""
    hosts = list(inventory.hosts.values())
    if not hosts:
        return {}
    first = dict(hosts[0].vars.items())  # items(): a refused value is kept as such, not raised
    missing = object()
    return {k: v for k, v in first.items()
            if all(_raw(h, k, missing) == v for h in hosts[1:])}  # fmt: skip


def _raw(host: Host, name: str, default: Any) -> Any:
    return host.vars.raw(name, default) if isinstance(host.vars, HostVars) else host.vars.get(name, default)


def controller_host(inventory: Inventory, name: str) -> Host:
    """The controller itself as a target (`ansible_connection: local`), with the run-wide vars:
    for tasks whose work is done from the controller (S3, backup checks, cron)."""
    return Host(name, {**run_wide_vars(inventory), "ansible_connection": "local"}, (), inventory.source)
