"""Ansible inventories (YAML or INI, with the `group_vars/` and `host_vars/` beside them), read
unchanged, and host selection.

Reading: `inventory_build` (groups -> hosts and effective vars, Ansible's precedence), `inventory_ini`
(the INI format), `inventory_vars` (vars folders, refused values), `hostrange` (`web[01:03]`, `host:2201`).
This project's own settings are ordinary host and group vars (see README: "Inventory variables").
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remediations.core import patterns
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
                "(set it in the host's vars or a group's vars, "
                f"or leave the host out: --host 'GROUP:!{self.name}')"
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
