"""Every remediation, by task name: the CLI, install-cron and the docs read it.

A remediation registers itself by subclassing `Remediation` with a `task` name; `discover()` imports
every module of the domain packages (every sub-package of `remediations` but the layers below them:
core, facts, actions, reporting) so that a new remediation is one new file, or a new domain folder,
listed nowhere else.
Those modules stay import-light (paramiko, boto3, docker and psycopg are imported when a task runs),
so that `inv --list` is quick.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remediations.core.remediation import Remediation

LAYERS = frozenset({"core", "facts", "actions", "reporting"})  # below the domains: no remediations

_REGISTRY: dict[str, type[Remediation]] = {}


def register(cls: type[Remediation]) -> type[Remediation]:
    known = _REGISTRY.get(cls.task)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"task {cls.task!r} is declared twice: {known.__module__} and {cls.__module__}")
    _REGISTRY[cls.task] = cls
    return cls


def unregister(task: str) -> None:
    """Forget a task (for tests that register a toy remediation)."""
    _REGISTRY.pop(task, None)


def domains() -> list[str]:
    """The domain packages: every sub-package of `remediations` that is not a layer below them."""
    import remediations

    found = pkgutil.iter_modules(remediations.__path__)
    return sorted(m.name for m in found if m.ispkg and m.name not in LAYERS)


def discover() -> dict[str, type[Remediation]]:
    """Import every remediation module of the domain packages; every registered task, sorted by name."""
    for domain in domains():
        package = importlib.import_module(f"remediations.{domain}")
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"remediations.{domain}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def get(task: str) -> type[Remediation]:
    if task not in _REGISTRY:
        discover()
    return _REGISTRY[task]
