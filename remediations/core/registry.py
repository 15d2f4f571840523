"""Every remediation, by task name: the CLI, install-cron and the docs read it.

A remediation registers itself by subclassing `Remediation` with a `task` name; `discover()` imports
every module of the domain packages (every sub-package of `remediations` but the layers below them:
core, facts, actions, reporting), for `inv --list`, `--help` and `--complete`.
`inv TASK` needs one remediation only: each domain package's `__init__` declares
`TASKS = {"task-name": "module"}`, read by `index()` without importing a remediation module, and
`get(task)` imports that one module (every module when the index does not name the task).
tests/unit/core/test_task_index.py compares the index with what the modules declare.
Remediation modules stay import-light (paramiko, boto3, docker and psycopg are imported when a task
runs).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remediations.core.remediation import Remediation

# Not domains: the layers below them, and the runbooks above them (which run tasks by name).
LAYERS = frozenset({"core", "facts", "actions", "reporting", "runbook", "alerts"})

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


def index() -> dict[str, str]:
    """Task name → the module that declares it, from each domain's `TASKS`, sorted by name."""
    found: dict[str, str] = {}
    for domain in domains():
        package = importlib.import_module(f"remediations.{domain}")
        for task, module in getattr(package, "TASKS", {}).items():
            found[task] = f"remediations.{domain}.{module}"
    return dict(sorted(found.items()))


def names() -> list[str]:
    """Every task name known without importing a remediation module: the index's and those
    registered already (a team's or a test's own), sorted."""
    return sorted(set(index()) | set(_REGISTRY))


def get(task: str) -> type[Remediation]:
    """The remediation of `task`: its module alone when the index names it, else every module."""
    if task not in _REGISTRY:
        module = index().get(task)
        if module is not None:
            importlib.import_module(module)
    if task not in _REGISTRY:
        discover()
    return _REGISTRY[task]
