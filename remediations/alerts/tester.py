"""`inv alerts.test --rules FILE PAYLOAD`: which rule fires for each alert of a notification, on which
host, with what action, and why the other rules did not. Offline: no host is touched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from remediations.alerts.payload import Notification, shown
from remediations.alerts.rules import Rule, decide
from remediations.core.inventory import Inventory


def action_text(rule: Rule, host: str) -> str:
    args = " ".join(f"--{str(k).replace('_', '-')} {v}" for k, v in rule.args.items())
    if rule.kind == "runbook":
        given = " ".join(f"--var {k}={v}" for k, v in rule.args.items())
        return f"inv runbook {rule.target} --host {host} {given}".rstrip()
    return f"inv {rule.target} --host {host} {args}".rstrip()


def mode_text(rule: Rule) -> str:
    if rule.mode == "dry-run":
        return "mode dry-run: posts the plan (its check mode), never runs"
    what = {"auto": "runs at once", "approve": "posts the plan, runs after `inv alerts.approve`",
            "dry-run": "posts the plan, never runs"}[rule.mode]  # fmt: skip
    c = rule.circuit
    return (f"mode {rule.mode}: {what}; cooldown {rule.cooldown:g} s; circuit opens after {c.attempts} "
            f"action(s) in {c.window:g} s or a refire within {c.refire:g} s of a fix")  # fmt: skip


def report(notification: Notification, rules: Sequence[Rule], inventory: Inventory) -> list[dict[str, Any]]:
    by_name = {r.name: r for r in rules}
    out = []
    for alert in notification.alerts:
        entries = []
        for d in decide(rules, alert, inventory):
            entry: dict[str, Any] = {"rule": d.rule, "fires": d.fires, "reason": d.reason, "host": d.host}
            if d.fires and d.host is not None:
                rule = by_name[d.rule]
                entry["action"] = action_text(rule, d.host) + (" --check" if rule.mode == "dry-run" else "")
                entry["mode"] = rule.mode
                entry["explained"] = mode_text(rule)
                if alert.status == "resolved":
                    entry["resolved"] = "resolved: nothing runs; a pending approval for it is cancelled"
            entries.append(entry)
        out.append({"alert": alert.name, "status": alert.status, "fingerprint": alert.fingerprint,
                    "key": alert.key, "labels": dict(alert.labels), "rules": entries})  # fmt: skip
    return out


def lines(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for alert in entries:
        labels = " ".join(f"{shown(k, 60)}={shown(v, 120)}" for k, v in sorted(alert["labels"].items())
                          if k != "alertname")  # fmt: skip
        name = shown(alert["alert"], 80) or "(no alertname)"
        out.append(f"alert {name} ({alert['status']}, {alert['key']}) {labels}")
        for rule in alert["rules"]:
            if not rule["fires"]:
                out.append(f"  rule {rule['rule']}: does not fire: {shown(rule['reason'], 400)}")
                continue
            out.append(f"  rule {rule['rule']}: fires on {rule['host']}: {rule['action']}")
            out.append(f"      {rule.get('resolved') or rule['explained']}")
        if not any(r["fires"] for r in alert["rules"]):
            out.append("  no rule fires: the receiver records it and runs nothing")
    return out


