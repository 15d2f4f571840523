"""The folders say what depends on what: core and facts import no action or domain module, actions no
domain module, and a domain module (a remediation) no module of another domain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "remediations"
DOMAINS = {"docker", "host", "firewall", "s3", "postgres", "secrets", "bots", "systemd"}
BELOW = {
    "core": {"core", "reporting"},
    "reporting": {"core", "reporting"},
    "facts": {"core", "facts", "reporting"},
    "actions": {"core", "facts", "actions", "reporting"},
}
# Above the domains: runbooks reach remediations through the registry, never by importing a domain.
ABOVE = {"runbook": {"core", "reporting", "runbook", "cli", "invoke_errors"},
         "alerts": {"core", "reporting", "runbook", "alerts", "cli", "invoke_errors"}}


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("remediations."):
            found.append(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "remediations":
            found.extend(alias.name for alias in node.names)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE and p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    layer = path.parent.name
    used = set(imports(path))
    if layer in BELOW or layer in ABOVE:
        allowed = {**BELOW, **ABOVE}[layer]
        assert used <= allowed, f"{layer} imports {sorted(used - allowed)}"
    else:
        assert layer in DOMAINS
        other = used & (DOMAINS - {layer})
        assert not other, f"a {layer} remediation imports the {sorted(other)} domain"


def test_the_layers_were_found() -> None:
    assert {p.parent.name for p in MODULES} == set(BELOW) | set(ABOVE) | DOMAINS
