"""The decisions of the S3 restore tasks: pure functions of the facts (`facts.s3`), no S3 call.

decide_object   what restoring one key to a version, a time or undeleted means (restore-s3-object)
plan_key        what a prefix restore does to one key (restore-s3-prefix)
short_noncurrent_rules  the lifecycle rules that expire noncurrent versions too soon (s3-bucket-check)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from remediations.core.errors import UsageError
from remediations.facts.s3 import Content, Head, Version, archive_state, at_time, iso, same_content


@dataclass(frozen=True)
class ObjectTarget:
    """Which state of the key to restore: exactly one of a version id, a time, or undelete."""

    version_id: str | None = None
    at: dt.datetime | None = None
    undelete: bool = False

    def __post_init__(self) -> None:
        given = [n for n, v in (("--version-id", self.version_id), ("--at", self.at),
                                ("--undelete", self.undelete)) if v]
        if len(given) != 1:
            raise UsageError(
                "give exactly one of --version-id, --at or --undelete"
                + (f" (got {' and '.join(given)})" if given else "")
            )


@dataclass(frozen=True)
class ObjectPlan:
    """ok / skip: nothing to do, and why; copy / retrieve / wait / unmark: what to do."""

    action: str
    reason: str
    version: Version | None = None
    markers: tuple[Version, ...] = ()


def decide_object(target: ObjectTarget, hist: Sequence[Version], chosen: Head | None,
                  current: Head | None) -> ObjectPlan:
    """Pure: what restoring `target` means for a key with history `hist` (newest first).

    `chosen` is the HEAD of the version to restore, `current` that of the current data version
    (None when the key's current entry is a delete marker or there is none).
    """
    latest = hist[0] if hist else None
    if target.undelete:
        markers = tuple(v for v in _leading_markers(hist))
        if not markers:
            return ObjectPlan("ok", "the current version is not a delete marker: nothing to undelete")
        revealed = next((v for v in hist if not v.is_delete_marker), None)
        if revealed is None:
            return ObjectPlan("skip", "the key has only delete markers: no version to show again")
        return ObjectPlan(
            "unmark",
            f"remove {len(markers)} delete marker(s) so {revealed.describe()} shows again",
            revealed, markers,
        )
    if target.version_id is not None:
        version = next((v for v in hist if v.version_id == target.version_id), None)
        if version is None or version.is_delete_marker:
            return ObjectPlan("skip", f"version {target.version_id} is not a data version of the key")
    else:
        assert target.at is not None
        version = at_time(hist, target.at)
        if version is None:
            first = f" (its first version is from {iso(hist[-1].last_modified)})" if hist else ""
            return ObjectPlan("skip", f"the key did not exist at {iso(target.at)}{first}; nothing changed")
        if version.is_delete_marker:
            return ObjectPlan("skip", f"the key did not exist at {iso(target.at)} (deleted by "
                                      f"{version.describe()}); nothing changed")
    if latest is not None and latest.version_id == version.version_id:
        return ObjectPlan("ok", f"{version.describe()} is already the current version", version)
    content = chosen.content if chosen else version.content
    if current is not None:
        same = same_content(content, current.content)
        if same:
            return ObjectPlan("ok", f"the current version {current.version_id} already holds the content "
                                    f"of {version.describe()} (ETag {content.etag.strip(chr(34))})", version)
        why = ("its content differs" if same is False else
               "its content cannot be proven equal (ETags of different part layouts, no common checksum)")
        why = f"the current version {current.version_id}: {why}"
    else:
        why = "the key is deleted (its current version is a delete marker)"
    state = chosen.state if chosen else archive_state(version.storage_class, "")
    if state == "archived":
        return ObjectPlan("retrieve", f"{version.describe()} is in {version.storage_class}: its retrieval "
                                      "must finish before it can be copied", version)
    if state == "retrieving":
        return ObjectPlan("wait", f"pending: retrieval of {version.describe()} from "
                                  f"{version.storage_class} is still in progress", version)
    return ObjectPlan("copy", f"copy {version.describe()} over the key ({why})", version)


def _leading_markers(hist: Sequence[Version]) -> Iterator[Version]:
    for entry in hist:
        if not entry.is_delete_marker:
            return
        yield entry


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """What a prefix restore does to one key.

    unchanged | restore | retrieve | wait | new (left alone) | hide (delete marker, --delete-new).
    """

    key: str
    dest_key: str
    action: str
    reason: str
    version: Version | None = None


def dest_key(key: str, prefix: str, to_prefix: str | None) -> str:
    return key if to_prefix is None else to_prefix + key[len(prefix):]


def plan_key(key: str, target_key: str, hist: Sequence[Version], at: dt.datetime,
             dest: Content | None, dest_version_id: str | None, delete_new: bool,
             in_place: bool = True) -> KeyPlan:
    """Pure: bring `target_key` to the state `key` (history `hist`, newest first) had at `at`.

    `dest` is the target key's current content (None: missing or deleted); `dest_version_id` is its
    current version id in an in-place restore (the target is the key itself), else None.
    """
    wanted = at_time(hist, at)
    if wanted is not None and wanted.is_delete_marker:
        wanted = None
    if wanted is None:
        if dest is None:
            return KeyPlan(key, target_key, "unchanged", f"absent at {iso(at)} and now")
        if delete_new:
            return KeyPlan(key, target_key, "hide", f"created after {iso(at)}: a delete marker hides it")
        return KeyPlan(key, target_key, "new", f"created after {iso(at)}: left alone (--delete-new hides it)")
    if dest is None:
        why = "deleted after" if in_place else "missing in the destination at"
        return KeyPlan(key, target_key, "restore", f"{why} {iso(at)}: restore {wanted.describe()}", wanted)
    if dest_version_id == wanted.version_id or same_content(wanted.content, dest) is True:
        return KeyPlan(key, target_key, "unchanged", f"already holds {wanted.describe()}", wanted)
    why = "overwritten after" if in_place else "differs from the source at"
    return KeyPlan(key, target_key, "restore", f"{why} {iso(at)}: restore {wanted.describe()}", wanted)


def refine_archived(plan: KeyPlan, head: Head) -> KeyPlan:
    """An archived version must be retrieved before it can be copied."""
    state = head.state
    if plan.action != "restore" or state in ("readable", "retrieved"):
        return plan
    if state == "retrieving":
        return KeyPlan(plan.key, plan.dest_key, "wait", "pending: retrieval still in progress", plan.version)
    return KeyPlan(plan.key, plan.dest_key, "retrieve",
                   f"archived in {head.storage_class}: retrieval needed before the copy", plan.version)


ACTION_WORDS = {
    "unchanged": "ok", "restore": "restore", "retrieve": "retrieve", "wait": "pending",
    "new": "keep new", "hide": "hide new",
}


def plan_lines(plans: Iterable[KeyPlan]) -> str:
    """One line per key: what happens to it and why (the --check listing)."""
    return "\n".join(f"{ACTION_WORDS[p.action]:<9} {p.dest_key}  {p.reason}" for p in plans)


def count_actions(plans: Iterable[KeyPlan]) -> dict[str, int]:
    counts = dict.fromkeys(ACTION_WORDS, 0)
    for plan in plans:
        counts[plan.action] += 1
    return counts



@dataclass(frozen=True)
class LifecycleFinding:
    rule: str
    scope: str
    days: int
    keeps_newer: int


def short_noncurrent_rules(rules: Iterable[Mapping[str, Any]], retention_days: int) -> list[LifecycleFinding]:
    """Enabled lifecycle rules that expire noncurrent versions sooner than `retention_days`."""
    found = []
    for rule in rules:
        expiry = rule.get("NoncurrentVersionExpiration") or {}
        days = expiry.get("NoncurrentDays")
        if rule.get("Status") != "Enabled" or days is None or int(days) >= retention_days:
            continue
        found.append(LifecycleFinding(str(rule.get("ID") or "(no id)"), _rule_scope(rule), int(days),
                                      int(expiry.get("NewerNoncurrentVersions") or 0)))
    return found


def _rule_scope(rule: Mapping[str, Any]) -> str:
    flt = rule.get("Filter") or {}
    prefix = rule.get("Prefix", flt.get("Prefix", (flt.get("And") or {}).get("Prefix")))
    tags = ([flt["Tag"]] if "Tag" in flt else []) + list((flt.get("And") or {}).get("Tags") or [])
    parts = [f"prefix {prefix!r}"] if prefix else []
    parts += [f"tag {t.get('Key')}={t.get('Value')}" for t in tags]
    return ", ".join(parts) or "the whole bucket"


