"""Inventory variables: YAML as Ansible reads it, `group_vars/` and `host_vars/` beside the inventory,
Ansible Vault values opened (core/vault.py), and the values this project refuses to use as plain
text (Jinja, `!vault` without a password) or to run differently from what they mean
(`ansible_connection` other than ssh/local, `ansible_become_method` other than sudo).

A refused value stays in the host's vars as a `Refused` marker; reading it (`host.get`, `host.vars[..]`,
the var checks run before any host is touched) raises one UsageError line naming the var and the way
out. A var nothing reads never stops a run: real group_vars are full of role templates.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from remediations.core import vault
from remediations.core.errors import UsageError

VARS_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # Ansible's YAML_FILENAME_EXTENSIONS, no extension first
CONNECTIONS = ("ssh", "smart", "paramiko", "local")
BECOME_METHODS = ("sudo",)
_JINJA = ("{{", "{%", "{#")


def var_name(key: Any) -> str:
    """A var's name as text, as Ansible shows it (YAML `off:` is the boolean false: "false")."""
    if isinstance(key, bool) or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    return str(key)


class VaultText(str):
    """A `!vault` scalar: Ansible Vault ciphertext, never used as the value."""


class UnsafeText(str):
    """A `!unsafe` scalar: Ansible never templates it, so it is plain text here too."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader plus Ansible's two inventory tags; on libyaml's parser where PyYAML has
    it, as Ansible's own loader is (the same constructors and resolver; about ten times quicker than
    the pure-Python parser, half a second of a 1,000-host inventory)."""


def _scalar(kind: type[str]) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag} applies to a scalar", node.start_mark
            )
        return kind(loader.construct_scalar(node))

    return construct


_Loader.add_constructor("!vault", _scalar(VaultText))
_Loader.add_constructor("!unsafe", _scalar(UnsafeText))


def load_yaml(text: str, source: str) -> Any:
    """YAML as Ansible reads an inventory or a vars file; malformed YAML is one line with its line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"{source}:{where}: malformed YAML: {problem}") from None


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}") from None


# ------------------------------------------------------------------ group_vars/ and host_vars/


def _dir_files(folder: Path) -> list[Path]:
    """Every vars file under a folder, sorted, recursing: hidden files and `~` backups skipped."""
    found: list[Path] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise UsageError(f"{folder}: cannot read the vars folder: {exc.strerror}") from None
    for name in names:
        if name.startswith(".") or name.endswith("~"):
            continue
        path = folder / name
        ext = os.path.splitext(name)[1]
        if os.path.isdir(path) and not ext:
            found.extend(_dir_files(path))
        elif os.path.isfile(path) and ext in VARS_EXTENSIONS:
            found.append(path)
    return found


def vars_files(folder: Path, name: str) -> list[Path]:
    """The files that hold one group's or host's vars: `NAME` (a file, or a folder of them), else
    `NAME.yml`, `NAME.yaml`, `NAME.json`; the first that exists is the only one read, as in Ansible.
    A folder's files are read in name order, sub-folders included, hidden files and `~` backups not."""
    if not os.path.isdir(folder) or name.startswith(os.sep) or ".." in name.split(os.sep):
        return []  # a name that would climb out of the folder reads nothing there
    for ext in VARS_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if os.path.isdir(path):
            return _dir_files(path)
        if os.path.exists(path):
            return [path]
    return []


class VarsDirs:
    """`group_vars/` and `host_vars/` beside an inventory file, each file read once."""

    def __init__(self, inventory_file: Path | None) -> None:
        self.base = Path(os.path.realpath(inventory_file)).parent if inventory_file else None
        self._cache: dict[Path, dict[str, Any]] = {}
        self._merged: dict[tuple[str, str], dict[str, Any]] = {}

    def vars_of(self, kind: str, name: str) -> Mapping[str, Any]:
        """The merged vars of one group (`kind` "group_vars") or host ("host_vars"), files in order."""
        if self.base is None:
            return {}
        if (kind, name) not in self._merged:
            merged: dict[str, Any] = {}
            for path in vars_files(self.base / kind, name):
                merged.update(self._load(path))
            self._merged[(kind, name)] = merged
        return self._merged[(kind, name)]

    def _load(self, path: Path) -> dict[str, Any]:
        if path not in self._cache:
            text = read_text(path, "vars file")
            vaulted = text.lstrip().startswith(vault.HEADER)
            if vaulted:
                if vault.password_file() is None:
                    raise UsageError(f"{path}: encrypted with Ansible Vault and no password is given; "
                                     f"set {vault.PASSWORD_ENV} to the file holding it (as for ansible)")
                text = vault.decrypt(text, vault.read_password(str(path)), str(path))
            data = load_yaml(text, str(path))
            if data is None:
                data = {}
            if not isinstance(data, Mapping):
                raise UsageError(f"{path}: a vars file must be a mapping of names to values, "
                                 f"got {type(data).__name__}")  # fmt: skip
            values = {var_name(k): v for k, v in data.items()}
            self._cache[path] = vault.secrets_in(values) if vaulted else values
        return self._cache[path]


# ------------------------------------------------------------------ refused values


@dataclass(frozen=True)
class Refused:
    """A value this project does not use: `original` is what Ansible holds, the rest says why."""

    original: Any
    reason: str
    way_out: str

    def __str__(self) -> str:
        return "<refused value>"

    def error(self, where: str, host: str, name: str) -> UsageError:
        """`{host}` in the way out is the host that read it (the same value may be every host's)."""
        return UsageError(f"{where}: {name}: {self.reason}; {self.way_out.replace('{host}', host)}")


def _has(value: Any, kind: str) -> bool:
    """Whether a value (or anything inside it) is vault text ("vault"), decrypted from the vault
    ("secret") or a Jinja template ("jinja")."""
    if isinstance(value, Mapping):
        return any(_has(k, kind) or _has(v, kind) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has(v, kind) for v in value)
    if kind == "vault":
        return isinstance(value, VaultText)
    if kind == "secret":
        return isinstance(value, vault.VaultSecret)
    return isinstance(value, str) and not isinstance(value, UnsafeText | VaultText) \
        and any(mark in value for mark in _JINJA)  # fmt: skip


def refuse_unsupported(merged: dict[str, Any], source: str) -> dict[str, Any]:
    """The host's effective vars with every value this project must not use replaced by a Refused."""
    out: dict[str, Any] = {}
    for name, value in merged.items():
        shown = f"ansible -i {source} {{host}} -m ansible.builtin.debug -a var={name}"
        if isinstance(value, VaultText) and vault.password_file() is not None:
            value = _opened(value, f"{source}: {name}")
        if _has(value, "vault"):
            value = Refused(value, "is an Ansible Vault value inside a list or mapping, which is not "
                            "decrypted here" if vault.password_file() else "is an Ansible Vault value "
                            "and no vault password is given", f"set {vault.PASSWORD_ENV} to the file "
                            "holding it, as for ansible, and keep each secret a var of its own")  # fmt: skip
        if _has(value, "jinja"):
            value = Refused(value, f"{_short(value)} is a Jinja template, which this project does not "
                            f"render", f"write the value itself (Ansible shows it: {shown})")  # fmt: skip
        out[name] = value
    connection = out.get("ansible_connection")
    if connection is not None and not isinstance(connection, Refused) and str(connection) not in CONNECTIONS:
        out["ansible_connection"] = Refused(
            connection, f"{_short(connection)} is not supported (only ssh and local)",
            "run the fix for this host another way, or exclude it with --host '...,!HOST'")  # fmt: skip
    method = out.get("ansible_become_method")
    become = out.get("ansible_become")
    if (method is not None and not isinstance(method, Refused) and str(method) not in BECOME_METHODS
            and _truthy(become) and not isinstance(become, Refused)):  # fmt: skip
        out["ansible_become"] = Refused(
            become, f"ansible_become_method {_short(method)} is not supported (only sudo, run as sudo -n)",
            "set ansible_become_method: sudo for this host, or become through sudo another way")  # fmt: skip
    return out


def _opened(value: VaultText, where: str) -> vault.VaultSecret:
    plain = vault.VaultSecret(vault.decrypt(value, vault.read_password(where), where))
    plain.ciphertext = str(value)
    return plain


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "yes", "true", "on", "y", "t"}
    return bool(value)


def _short(value: Any) -> str:
    if _has(value, "secret"):
        return "(a value from the vault)"  # never shown: it is a secret
    text = repr(str(value)) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else f"{text[:56]}…{text[-3:]}"


class HostVars(dict[str, Any]):
    """A host's vars: reading a refused one raises its one-line UsageError."""

    def __init__(
        self, values: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), where: str = "", host: str = "HOST"
    ) -> None:
        super().__init__(values)
        self.where = where
        self.host = host

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, Refused):
            raise value.error(self.where, self.host, key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as stored, a Refused marker included (for listing, not for use)."""
        return super().get(key, default)
