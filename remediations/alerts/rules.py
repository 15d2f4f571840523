"""Alert rules: which alert runs which remediation or runbook, on which hosts, in which mode.

    rules:
      - name: api-down
        matchers: ["alertname=APIDown", "severity=~crit.*"]   # Alertmanager's matcher syntax
        host_label: instance          # the label naming the host (default: instance); its port is
                                      # dropped, then the name or address is looked up in the inventory
        run: restart-api              # a task, or `runbook: api-down`
        args: {service: api}          # the task's arguments (or the runbook's vars), by name
        mode: auto                    # auto | approve (post the plan, wait for `inv alerts.approve`)
                                      # | dry-run (post the plan, never run)
        cooldown: 10m                 # after an action on a host, no other for this rule there
        circuit: {attempts: 3, window: 1h, refire: 15m}
            # stop automatic runs for (rule, host) after `attempts` actions within `window`, or when
            # the alert fires again within `refire` of a "successful" fix, or when a fix fails

Read with file:line errors; each task, runbook and argument is checked when the file is read.
Matching is pure (`decide`): the rule tester and the receiver share it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remediations.alerts.payload import Alert
from remediations.core import registry
from remediations.core.errors import UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.labels import Matcher
from remediations.core.located import FileError, Located, known_keys, line_of, read
from remediations.core.units import parse_seconds

RULE_KEYS = {"name", "matchers", "host_label", "run", "runbook", "args", "mode", "cooldown", "circuit",
             "description"}  # fmt: skip
CIRCUIT_KEYS = {"attempts", "window", "refire"}
MODES = ("auto", "approve", "dry-run")
NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
MATCHER = re.compile(r'\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>.*?)\s*')


class RulesError(FileError):
    """A rules file that does not read: `file:line: what is wrong`."""


@dataclass(frozen=True)
class Circuit:
    attempts: int = 3
    window: float = 3600.0
    refire: float = 900.0


@dataclass(frozen=True)
class Rule:
    name: str
    matchers: tuple[Matcher, ...]
    kind: str  # run | runbook
    target: str
    line: int
    args: Mapping[str, Any] = field(default_factory=dict)
    host_label: str = "instance"
    mode: str = "auto"
    cooldown: float = 600.0
    circuit: Circuit = field(default_factory=Circuit)
    description: str = ""

    def unmatched(self, labels: Mapping[str, str]) -> list[str]:
        """Why the rule does not fire for these labels ([] when it does)."""
        why = []
        for m in self.matchers:
            if not m.matches(labels):
                seen = labels.get(m.label)
                why.append(f"{m.label} is {seen!r}, wants {m.op}{m.value}" if seen is not None
                           else f"no label {m.label}, wants {m.op}{m.value}")  # fmt: skip
        return why


def parse(text: str, source: str) -> list[Rule]:
    data = read(text, source, "a rules file has `rules:`, a list", RulesError)
    if not isinstance(data, Located) or not isinstance(data.get("rules"), list):
        raise RulesError(f"{source}:1: a rules file is a mapping with `rules:`, a list of rules")
    known_keys(data, {"rules"}, source, "a rules file", RulesError)
    if not data["rules"]:
        where = f"{source}:{line_of(data, 'rules')}"
        raise RulesError(f"{where}: no rules: the receiver would take every alert and run nothing")
    rules: list[Rule] = []
    for raw in data["rules"]:
        rule = _rule(raw, source, line_of(data, "rules"))
        if any(r.name == rule.name for r in rules):
            raise RulesError(f"{source}:{rule.line}: rule {rule.name}: the name is used by an earlier rule")
        rules.append(rule)
    return rules


def _rule(raw: Any, source: str, line: int) -> Rule:
    if not isinstance(raw, Located):
        raise RulesError(f"{source}:{line}: each rule is a mapping with name, matchers and run or runbook")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RulesError(f"{source}:{line_of(raw, 'name')}: a rule's name is lowercase letters, digits and "
                         f"'-' (got {name!r})")  # fmt: skip
    at = f"{source}:{raw.line}: rule {name}"
    known_keys(raw, RULE_KEYS, source, f"rule {name}", RulesError)
    kinds = [k for k in ("run", "runbook") if k in raw]
    if len(kinds) != 1:
        raise RulesError(f"{at}: give exactly one of run (a task) or runbook")
    kind, target = kinds[0], raw[kinds[0]]
    if not isinstance(target, str):
        raise RulesError(f"{source}:{line_of(raw, kind)}: rule {name}: {kind} needs a name")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise RulesError(f"{source}:{line_of(raw, 'args')}: rule {name}: args must be a mapping")
    mode = raw.get("mode", "auto")
    if mode not in MODES:
        raise RulesError(f"{source}:{line_of(raw, 'mode')}: rule {name}: mode is {', '.join(MODES)}")
    label = raw.get("host_label", "instance")
    if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
        raise RulesError(f"{source}:{line_of(raw, 'host_label')}: rule {name}: host_label is a label name")
    rule = Rule(name, _matchers(raw, source, name), kind, target, raw.line, dict(args), label, str(mode),
                _seconds(raw, "cooldown", source, name, 600.0), _circuit(raw, source, name),
                str(raw.get("description", "")))  # fmt: skip
    _check_action(rule, source, line_of(raw, kind))
    return rule


def _matchers(raw: Located, source: str, name: str) -> tuple[Matcher, ...]:
    given = raw.get("matchers")
    at = f"{source}:{line_of(raw, 'matchers')}: rule {name}: matchers"
    if not isinstance(given, list) or not given or not all(isinstance(m, str) for m in given):
        raise RulesError(f"{at} is a non-empty list such as [\"alertname=APIDown\", \"severity=~crit.*\"]")
    out = []
    for text in given:
        found = MATCHER.fullmatch(text)
        if found is None:
            raise RulesError(f"{at}: {text!r} is not LABEL=VALUE, LABEL!=VALUE, LABEL=~REGEX or LABEL!~REGEX")
        value = found.group("value")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if found.group("op") in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise RulesError(f"{at}: {text!r}: not a regular expression ({exc})") from None
        out.append(Matcher(found.group("label"), found.group("op"), value))
    return tuple(out)


def _seconds(raw: Located, key: str, source: str, name: str, default: float) -> float:
    if key not in raw:
        return default
    try:
        return parse_seconds(raw[key], key, high=7 * 86400.0)
    except UsageError as exc:
        raise RulesError(f"{source}:{line_of(raw, key)}: rule {name}: {exc}") from None


def _circuit(raw: Located, source: str, name: str) -> Circuit:
    given = raw.get("circuit")
    if given is None:
        return Circuit()
    at = f"{source}:{line_of(raw, 'circuit')}: rule {name}: circuit"
    if not isinstance(given, Located):
        raise RulesError(f"{at} is a mapping of attempts, window, refire")
    known_keys(given, CIRCUIT_KEYS, source, f"rule {name}'s circuit", RulesError)
    attempts = given.get("attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise RulesError(f"{at}: attempts is a whole number from 1 to 100")
    return Circuit(attempts, _seconds(given, "window", source, name, 3600.0),
                   _seconds(given, "refire", source, name, 900.0))  # fmt: skip


def _check_action(rule: Rule, source: str, line: int) -> None:
    at = f"{source}:{line}: rule {rule.name}"
    if rule.kind == "runbook":
        from remediations.runbook import spec

        try:
            book = spec.find(rule.target, spec.search_path([]))
            book.values({k: str(v) for k, v in rule.args.items()})
        except UsageError as exc:
            raise RulesError(f"{at}: {exc}") from None
        return
    if rule.target not in registry.names():
        raise RulesError(f"{at}: no task {rule.target!r} (`inv --list` shows them)")
    cls = registry.get(rule.target)
    from remediations.runbook.spec import task_arguments

    try:
        cls.from_values(cls.params.parse(task_arguments(cls, rule.args)))
    except UsageError as exc:
        raise RulesError(f"{at} ({rule.target}): {exc}") from None


# ------------------------------------------------------------------------------------------ deciding


def host_name(value: str) -> str:
    """`api1:9100` → api1, `[2001:db8::1]:9100` → 2001:db8::1, `198.18.0.11:9100` → 198.18.0.11."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def find_host(inventory: Inventory, value: str) -> Host | None:
    """The inventory host a label names: by its name, else by its address (ansible_host)."""
    name = host_name(value)
    if name in inventory.hosts:
        return inventory.hosts[name]
    by_address = [h for h in inventory.hosts.values() if h.address == name]
    return by_address[0] if len(by_address) == 1 else None


@dataclass(frozen=True)
class Decision:
    rule: str
    fires: bool
    reason: str
    host: str | None = None


def decide(rules: Sequence[Rule], alert: Alert, inventory: Inventory) -> list[Decision]:
    """For each rule: does it fire for `alert`, on which host, and why (not)."""
    out = []
    for rule in rules:
        unmet = rule.unmatched(alert.labels)
        if unmet:
            out.append(Decision(rule.name, False, "; ".join(unmet)))
            continue
        label = alert.labels.get(rule.host_label)
        if not label:
            out.append(Decision(rule.name, False, f"matches, but the alert has no {rule.host_label} label"))
            continue
        host = find_host(inventory, label)
        if host is None:
            out.append(Decision(rule.name, False, f"matches, but {rule.host_label}={label!r} is no inventory "
                                                  f"host (refused)"))  # fmt: skip
            continue
        matched = ", ".join(str(m) for m in rule.matchers)
        out.append(Decision(rule.name, True, f"matches {matched}", host.name))
    return out
