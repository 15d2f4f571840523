"""The registry's index (each domain's TASKS) against what the remediation modules declare.

`inv TASK` imports only the module TASKS names for TASK; a remediation missing from TASKS would
still run (the registry falls back to importing every module) but cost every other task its start-up.
"""

from __future__ import annotations

import importlib

from remediations.core import registry


def declared() -> dict[str, str]:
    """Task → module, from importing every remediation module (tests' own toys left out)."""
    return {task: cls.__module__ for task, cls in registry.discover().items()
            if cls.__module__.startswith("remediations.")}  # fmt: skip


def line_to_add(task: str, module: str) -> str:
    _, domain, name = module.split(".")
    return f'add "{task}": "{name}", to TASKS in remediations/{domain}/__init__.py'


def test_every_declared_task_is_in_its_domains_index() -> None:
    indexed = registry.index()
    wrong = [f"{module} declares {task!r}: {line_to_add(task, module)}"
             for task, module in declared().items() if indexed.get(task) != module]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_index_names_no_task_that_its_module_does_not_declare() -> None:
    found = declared()
    stale = [f"{task!r} → {module}: that module declares no such task; fix or remove the line in TASKS"
             for task, module in registry.index().items() if found.get(task) != module]  # fmt: skip
    assert not stale, "\n".join(stale)


def test_every_domain_has_an_index() -> None:
    for domain in registry.domains():
        tasks = getattr(importlib.import_module(f"remediations.{domain}"), "TASKS", None)
        assert isinstance(tasks, dict) and tasks, f"remediations/{domain}/__init__.py has no TASKS"
        assert list(tasks) == sorted(tasks), f"remediations/{domain}/__init__.py: keep TASKS sorted"

